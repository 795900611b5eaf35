"""Which slices each process trains on, in which order: a :class:`DistributedSampler` with optional
oversampling of slices with foreground and a resume offset, plus the federated client partitions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler

PARTITIONS = ("iid", "case")


class SliceSampler(DistributedSampler):
    """``DistributedSampler`` (same shuffling and rank sharding) with two additions.

    * ``weights``: per-item sampling weights. When given, each epoch draws ``len(dataset)`` items with
      replacement (seeded by ``seed + epoch``) instead of a permutation: oversampling.
    * :meth:`skip`: drop the first ``n`` indices of this rank's shard for the current epoch, to resume
      a run mid-epoch exactly where it stopped.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights is not None and (len(self.weights) != len(dataset) or not bool((self.weights > 0).any())):
            raise ValueError("sampling weights must be one positive number per item")
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own shuffle / draw); clears :meth:`skip`."""
        super().set_epoch(epoch)
        self._skip = 0

    def skip(self, n: int) -> None:
        """Leave out the first ``n`` indices of this rank's shard in the current epoch."""
        self._skip = max(0, int(n))

    def shard(self) -> list[int]:
        """This rank's indices of the current epoch, before :meth:`skip`."""
        if self.weights is None:
            return list(super().__iter__())
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, len(self.dataset), replacement=True, generator=g).tolist()
        indices += indices[: self.total_size - len(indices)]  # pad to split evenly, as DistributedSampler
        return indices[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self._skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self._skip)


def oversampling_weights(positive: np.ndarray, factor: float) -> np.ndarray | None:
    """Weights giving slices with foreground ``factor`` times the chance of the others (``None`` for 1)."""
    if factor == 1.0:
        return None
    if factor <= 0:
        raise ValueError(f"oversample factor must be > 0, got {factor}")
    return np.where(positive, float(factor), 1.0)


def partition_clients(case_of_item: np.ndarray, n_clients: int, mode: str, seed: int,
                      fractions: Sequence[float] | None = None) -> list[np.ndarray]:
    """Split item indices among ``n_clients`` federated clients; returns each client's sorted indices.

    ``iid``: items shuffled (seeded) and dealt by ``fractions`` (equal shares by default). ``case``
    (non-IID, like hospitals): whole cases (= patients / scans of one site) go to one client each, in
    case order, cut by ``fractions`` of the items. Uneven ``fractions`` give uneven client sizes.
    """
    if mode not in PARTITIONS:
        raise ValueError(f"federated partition must be one of {', '.join(PARTITIONS)}, got {mode!r}")
    n = len(case_of_item)
    if fractions is None or len(fractions) == 0:
        fractions = [1.0] * n_clients
    if len(fractions) != n_clients or any(f <= 0 for f in fractions):
        raise ValueError(f"need {n_clients} positive client fractions (one per client), got {list(fractions)}")
    cuts = np.cumsum(np.asarray(fractions, dtype=np.float64)) / float(np.sum(fractions))
    if mode == "iid":
        order = np.random.default_rng(seed).permutation(n)
        bounds = np.round(cuts * n).astype(int)
        parts = np.split(order, bounds[:-1])
    else:
        cases, sizes = np.unique(case_of_item, return_counts=True)
        ends = np.cumsum(sizes)
        # the client of each case: where the middle of the case falls on the cut line
        owner = np.searchsorted(cuts * n, ends - sizes / 2.0, side="right")
        parts = [np.flatnonzero(np.isin(case_of_item, cases[owner == k])) for k in range(n_clients)]
    return [np.sort(p).astype(np.int64) for p in parts]
