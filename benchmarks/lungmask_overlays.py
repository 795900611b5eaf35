"""Overlays of lungseg's default lung mask on the real CT series in ``../shared/data`` (no lung labels there).

Per series one PNG of four axial slices (top to bottom of the series), right lung red, left lung
blue, lung window; and one enlarged view of the slice holding most lung, for looking at the pleura,
hilum and airways. Used by ``bench_lungmask.py``; run alone: ``.venv/bin/python benchmarks/lungmask_overlays.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungseg.ingest.scan import read_scan  # noqa: E402
from lungseg.lungmask.cli import compute_mask  # noqa: E402

COLOURS = {1: (1.0, 0.25, 0.25), 2: (0.25, 0.55, 1.0)}  # right red, left blue


def _rgb(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    grey = np.clip((hu.astype(np.float32) + 1000.0) / 1400.0, 0, 1)[..., None].repeat(3, axis=-1)
    for label, colour in COLOURS.items():
        sel = mask == label
        grey[sel] = 0.6 * grey[sel] + 0.4 * np.asarray(colour)
    return grey


def write_overlays(shared: Path, out_dir: Path) -> list[Path]:
    """Write the overlay PNGs of every series under ``shared`` (LIDC-IDRI, the JPEG 2000 series, the
    NSCLC-Radiomics planning CTs)."""
    series = [(f.name, f) for f in sorted((shared / "lidc-idri").glob("LIDC-IDRI-*"))]
    series.append(("example_ct_dicom", shared / "ct-jpeg2000" / "example_ct_dicom"))
    series += [(f.name, f / "image") for f in sorted((shared / "nsclc-radiomics").glob("*"))]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, folder in series:
        if not folder.is_dir():
            continue
        hu, geometry, _ = read_scan(folder)
        result = compute_mask(hu, geometry, "threshold_3d")
        mask = result.mask
        n = hu.shape[0]
        picks = sorted({0, n // 3, (2 * n) // 3, n - 1})
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4))
        for ax, z in zip(np.atleast_1d(axes), picks):
            ax.imshow(_rgb(hu[z], mask[z]), interpolation="nearest")
            ax.set_title(f"slice {z}", fontsize=9)
            ax.axis("off")
        note = "; ".join(result.notes) or f"right {int((mask == 1).sum())} / left {int((mask == 2).sum())} voxels"
        fig.suptitle(f"{name}: default lung mask (right red, left blue) - {note}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"lungmask_overlay_{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
        z = int(np.argmax((mask > 0).sum(axis=(1, 2))))
        fig, ax = plt.subplots(figsize=(8, 8))
        ax.imshow(_rgb(hu[z], mask[z]), interpolation="nearest")
        ax.set_title(f"{name} slice {z}", fontsize=10)
        ax.axis("off")
        fig.tight_layout()
        path = out_dir / f"lungmask_overlay_{name}_slice{z}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[1]
    for p in write_overlays(repo.parent / "shared" / "data", repo / "benchmarks" / "results"):
        print(p)
