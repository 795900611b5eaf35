"""Reading + normalising 2-D images (1024 x 1024 PNG) per second per core, against a bare PIL read in the same run.

On ``--images`` synthetic 8-bit grey PNGs (a smooth radiograph-like picture plus noise, so the PNG
does not compress to nothing; written once into a temporary folder), taking turns in each round
(:func:`timing.best_times`, best CPU and wall time of ``--repeats``), pinned to one core:

- ``pil_read``: ``np.asarray(PIL.Image.open(path))``: decode only, the floor;
- ``lungseg_read``: :func:`lungseg.images.read_image`: decode, checks, intensity normalised to 0..1000 (int16);
- ``lungseg_ingest``: :func:`lungseg.images.ingest_image` with one 0/255 mask: the case ``lungseg ingest`` writes
  (image + mask read and checked), without the HDF5 write.

Goal: ``throughput_ratio_read_vs_pil`` (images/s of ``lungseg_read`` over those of ``pil_read``, CPU) >= 0.5.
Writes ``benchmarks/results/images.json`` (or ``--out``).
Run: ``.venv/bin/python benchmarks/bench_images.py [--images 8 --size 1024 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_times  # noqa: E402

from lungseg.images import ingest_image, read_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.5


def write_images(folder: Path, n: int, size: int) -> list[tuple[Path, Path]]:
    """``n`` radiograph-like PNGs and their 0/255 masks."""
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(n):
        smooth = ndimage.gaussian_filter(rng.normal(0, 1, (size // 8, size // 8)), 2)
        picture = ndimage.zoom(smooth, 8, order=1)
        picture = (picture - picture.min()) / (np.ptp(picture) or 1) * 200 + rng.normal(0, 6, (size, size))
        image, mask = folder / f"img{k}.png", folder / f"img{k}_mask.png"
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(image)
        Image.fromarray(((picture > 100) * 255).astype(np.uint8)).save(mask)
        pairs.append((image, mask))
    return pairs


def benchmark(n: int, size: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_images(Path(tmp), n, size)

        def pil_read() -> None:
            for image, _ in pairs:
                with Image.open(image) as im:
                    np.asarray(im)

        def lungseg_read() -> None:
            for image, _ in pairs:
                read_image(image)

        def lungseg_ingest() -> None:
            for image, mask in pairs:
                ingest_image("bench", image, {"lung": mask})

        times = best_times({"pil_read": pil_read, "lungseg_read": lungseg_read, "lungseg_ingest": lungseg_ingest}, repeats)
        megabytes = sum(image.stat().st_size for image, _ in pairs) / n / 1e6
    cpu, wall = times["cpu"], times["wall"]
    per_second = {k: round(n / v, 1) for k, v in cpu.items()}
    return {
        "images": n,
        "size": [size, size],
        "png_mb_per_image": round(megabytes, 3),
        "repeats": repeats,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "wall_s": {k: round(v, 4) for k, v in wall.items()},
        "images_per_s_per_core": per_second,
        "throughput_ratio_read_vs_pil": round(cpu["pil_read"] / cpu["lungseg_read"], 3),
        "throughput_ratio_ingest_vs_pil": round(cpu["pil_read"] / cpu["lungseg_ingest"], 3),
        "goal_ratio_at_least": GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="PNG images per round (default 8)")
    parser.add_argument("--size", type=int, default=1024, help="width and height in pixels (default 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "images.json")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    result = {"pinned_to_one_core": hasattr(os, "sched_setaffinity"), **benchmark(args.images, args.size, args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s_per_core", "throughput_ratio_read_vs_pil",
                                              "throughput_ratio_ingest_vs_pil")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
