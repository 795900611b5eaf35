"""Cluster execution: SLURM settings for the Snakemake profiles, the multi-node torchrun launcher
(``lungseg launch``) and submitit training sweeps (``lungseg sweep``)."""
