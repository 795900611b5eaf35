"""Federated learning across sites on Flower: one client per site, a server that never sees an image.

Modules: :mod:`~lungseg.federated.sites` (which case belongs to which site), :mod:`~lungseg.federated.security`
(throwaway CA, server certificate, per-site tokens; the challenge-response check of a joining client),
:mod:`~lungseg.federated.arrays` (state dict <-> Flower parameters, n_k-weighted averaging),
:mod:`~lungseg.federated.client` (``lungseg fl-client``), :mod:`~lungseg.federated.server` (``lungseg fl-server``),
:mod:`~lungseg.federated.local` (``lungseg fl-run``: the server + one client per site as a local process or,
with :mod:`~lungseg.federated.slurm_clients`, a SLURM GPU job).
"""
