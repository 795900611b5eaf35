"""Is the chest X-ray demo learnable, and hard enough? A VGG16 U-Net against the trivial and classical baselines.

Writes the demo (``lungseg demo-xray``), turns its 8-bit PNG images and 0/1/2 labels into one-slice
case files (:func:`lungseg.casefile.write_case`, intensities 0-255 with the window [0, 255]), splits
them train / val / test by patient, trains with ``lungseg train`` (arch vgg16_unet, encoder frozen for
the first half of the epochs, cosine learning rate) and scores the test images (Dice of both lungs as
one mask = the F-score at threshold 0.5) of:

* ``all_background``: the trivial answer (Dice 0 wherever there is lung);
* ``mean_mask``: the training masks' pixel-wise majority (where lungs usually are);
* ``otsu_in_body``: Otsu's threshold inside the body (air around it removed), the two largest dark
  components not touching the border, holes filled: the classical recipe;
* ``vgg16_unet``: the trained network.

Writes ``--out/xray_demo.json`` (and the training folder); the figures in docs/explanation/xray-demo.md
come from::

    OMP_NUM_THREADS=2 python benchmarks/xray_demo_learnability.py --out /tmp/xray_bench --n-cases 40 --epochs 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred > 0, ref > 0
    total = p.sum() + r.sum()
    return 1.0 if total == 0 else float(2 * (p & r).sum() / total)


def otsu_in_body(image: np.ndarray) -> np.ndarray:
    """The classical baseline: dark regions inside the body, two largest, not touching the border."""
    from skimage.filters import threshold_otsu

    body = ndimage.binary_fill_holes(image > 0.1 * float(image.max()))
    body = ndimage.binary_erosion(body, iterations=3)
    if body.sum() < 100:
        return np.zeros(image.shape, bool)
    dark = body & (image < threshold_otsu(image[body]))
    dark = ndimage.binary_opening(dark, iterations=2)
    labels, n = ndimage.label(dark)
    if n == 0:
        return np.zeros(image.shape, bool)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    sizes = ndimage.sum(dark, labels, index=range(1, n + 1))
    order = [i + 1 for i in np.argsort(sizes)[::-1] if i + 1 not in border][:2]
    return ndimage.binary_fill_holes(np.isin(labels, order))


def write_cases(demo: Path, cases_dir: Path, sheet: list[dict[str, str]]) -> dict[str, str]:
    from lungseg.casefile import CaseVolume, write_case
    from lungseg.geometry import Geometry

    paths = {}
    for row in sheet:
        image = np.asarray(Image.open(demo / row["image"]), dtype=np.int16)[None]
        labels = np.asarray(Image.open(demo / row["labels"]), dtype=np.uint8)[None]
        pixel = float(row["pixel_mm"])
        geometry = Geometry((pixel, pixel, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        path = cases_dir / f"{row['case_id']}.h5"
        write_case(path, CaseVolume(row["case_id"], image, geometry, labels={"lung": labels}))
        paths[row["case_id"]] = str(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (demo, cases, run, xray_demo.json)")
    parser.add_argument("--n-cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--base-channels", type=int, default=16, help="VGG16 width / 64 (64 = the real VGG16)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    demo, cases_dir, run_dir = args.out / "demo", args.out / "cases", args.out / "run"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lungseg", "demo-xray", "--out", str(demo), "--n-cases", str(args.n_cases),
                    "--seed", str(args.seed), "--size", str(args.size), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    demo_s = time.perf_counter() - t0
    lines = (demo / "patients.tsv").read_text().splitlines()
    sheet = [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]
    paths = write_cases(demo, cases_dir, sheet)
    order = np.random.default_rng(args.seed).permutation(len(sheet))  # one image per patient: split by image
    n_test, n_val = max(1, len(sheet) // 5), max(1, len(sheet) // 10)
    test = [sheet[i] for i in order[:n_test]]
    val = [sheet[i] for i in order[n_test:n_test + n_val]]
    train = [sheet[i] for i in order[n_test + n_val:]]
    half = args.epochs // 2
    command = [sys.executable, "-m", "lungseg", "train", "--train", *[paths[r["case_id"]] for r in train],
               "--val", *[paths[r["case_id"]] for r in val], "--out-dir", str(run_dir),
               "--arch", "vgg16_unet", "--base-channels", str(args.base_channels), "--depth", "4",
               "--image-size", str(args.size), "--hu-window", "0", "255", "--roi", "none",
               "--epochs", str(args.epochs), "--freeze-encoder-epochs", str(half), "--batch-size", "4",
               "--lr", "0.001", "--lr-min", "0.00001", "--threads", str(args.threads), "--device", "cpu"]
    t1 = time.perf_counter()
    subprocess.run(command, check=True)
    train_s = time.perf_counter() - t1

    import torch

    from lungseg.inference.model import load_predictor
    from lungseg.inference.predict import predict_volume

    torch.set_num_threads(args.threads)
    model, meta = load_predictor(run_dir / "model.pt")
    mean_mask = np.mean([np.asarray(Image.open(demo / r["mask"])) > 0 for r in train], axis=0) > 0.5
    scores: dict[str, list[float]] = {"all_background": [], "mean_mask": [], "otsu_in_body": [], "vgg16_unet": []}
    for row in test:
        image = np.asarray(Image.open(demo / row["image"]), dtype=np.int16)
        ref = np.asarray(Image.open(demo / row["labels"])) > 0
        scores["all_background"].append(dice(np.zeros_like(ref), ref))
        scores["mean_mask"].append(dice(mean_mask, ref))
        scores["otsu_in_body"].append(dice(otsu_in_body(image), ref))
        pred = predict_volume(model, meta, image[None], progress=False)[0]
        scores["vgg16_unet"].append(dice(pred, ref))
    summary = {name: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
               for name, v in scores.items()}
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    result = {"n_train": len(train), "n_val": len(val), "n_test": len(test), "size": args.size, "epochs": args.epochs,
              "freeze_encoder_epochs": half, "base_channels": args.base_channels, "threads": args.threads,
              "demo_seconds": round(demo_s, 1), "train_seconds": round(train_s, 1), "test_dice": summary,
              "per_image": {name: [round(v, 4) for v in values] for name, values in scores.items()},
              "opacities_test": [int(r["opacities"]) for r in test], "metrics_csv": lines,
              "command": " ".join(Path(c).name if c == sys.executable else c for c in command[:3]) + " ..."}
    (args.out / "xray_demo.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, s in summary.items():
        print(f"{name:16s} Dice {s['mean']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})")
    print(f"demo {demo_s:.0f} s, training {train_s:.0f} s on {args.threads} thread(s); {args.out / 'xray_demo.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
