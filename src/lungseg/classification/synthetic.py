"""Synthetic nodule patch files whose class is learnable, for tests, the benchmark and the demonstration.

Each nodule is a sphere of soft-tissue density (about +40 HU, with noise) in lung parenchyma (about
-850 HU): its three central planes are discs. Malignant nodules are larger (radius 0.14-0.28 of the patch
side against 0.08-0.22 for benign ones: the ranges overlap, so the task is not trivial) and have a
lobulated (spiculated-looking) rim; benign ones are smooth. Ratings are three simulated readers' (the
class's rating, one of them off by one now and then); ``pathology`` is given for a share of the
patients (``pathology_share``) and agrees with the class. Files follow the nodule-patch contract
(:mod:`lungseg.classification.patches`, :mod:`lungseg.classification.nodule_table`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungseg.classification.labels import LabelProtocol, median_rating
from lungseg.classification.nodule_table import write_nodule_table
from lungseg.classification.patches import write_patches


def synthetic_nodule(malignant: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """HU planes (3, size, size) of one synthetic nodule."""
    radius = size * (rng.uniform(0.14, 0.28) if malignant else rng.uniform(0.08, 0.22))
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    planes = []
    for _ in range(3):
        angle = np.arctan2(yy, xx)
        rim = radius * (1.0 + (0.15 * np.sin(rng.integers(5, 9) * angle + rng.uniform(0, 6.3)) if malignant else 0.0))
        inside = np.hypot(yy, xx) <= rim
        hu = np.where(inside, 40.0, -850.0) + rng.normal(0.0, 60.0, (size, size))
        planes.append(hu)
    return np.clip(np.stack(planes), -1024, 3000).astype(np.int16)


def write_synthetic_cases(folder: str | Path, n_cases: int, nodules_per_case: int = 4, size: int = 32, seed: int = 0,
                          malignant_share: float = 0.4, pathology_share: float = 0.5, unrated_share: float = 0.0,
                          prefix: str = "SYN") -> list[Path]:
    """Write ``<prefix>-NNN.patches.h5`` + ``.nodules.tsv`` for ``n_cases`` cases; returns the patch files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    protocol, files = LabelProtocol(), []
    for c in range(n_cases):
        case = f"{prefix}-{c:03d}"
        has_pathology = rng.random() < pathology_share
        patches, rows = [], []
        for k in range(nodules_per_case):
            malignant = bool(rng.random() < malignant_share)
            rating = int(rng.choice([4, 5]) if malignant else rng.choice([1, 2]))
            ratings: list[int | None] = [int(np.clip(rating + (rng.random() < 0.2) * rng.choice([-1, 1]), 1, 5))
                                         for _ in range(3)]
            if rng.random() < unrated_share:
                ratings = []
            median = median_rating(ratings)
            patches.append(synthetic_nodule(malignant, size, rng))
            rows.append({"case": case, "patient": case, "nodule": str(k + 1), "centre_x_mm": "0.00", "centre_y_mm": "0.00",
                         "centre_z_mm": f"{10.0 * k:.2f}", "diameter_mm": "10.00", "volume_mm3": "523.6",
                         "readers": "1,2,3" if ratings else "", "ratings": ",".join(map(str, ratings)),
                         "median_rating": "" if median is None else f"{median:g}", "label": protocol.label(median),
                         "pathology": ("malignant" if malignant else "benign") if has_pathology else "",
                         "at_edge": "false", "source": "label"})
        path = folder / f"{case}.patches.h5"
        write_patches(path, np.asarray(patches).reshape(-1, 3, size, size), patch_mm=float(size), size=size)
        write_nodule_table(folder / f"{case}.nodules.tsv", rows)
        files.append(path)
    return files
