"""Sliding-window (patch) inference against whole-slice inference on one CT volume, same run (issue 13).

The volume is ``bench_inference.chest_volume`` (300 slices of 512 x 512 by default: air, body, two lungs,
noise) with its classical lung mask (:func:`lungseg.inference.postprocess.classical_lung_mask`, not timed).
Models are randomly initialised (speed depends on shapes, not weights), on ``--threads`` CPU threads,
each timed best of ``--repeats`` with the methods taking turns (the machine may be shared):

* ``whole_slice``: the lung demo's model (``config/config.yaml`` ``train``: unet, 16 channels, depth 4,
  slices cropped to the lung box and resized to 128 x 128) through
  :func:`lungseg.inference.predict.predict_probabilities`;
* ``patches_2_5d``: the nodule demo's reference (``config/nodule.yaml``: unet, depth 3, 64 x 64 patches
  of slices resampled to 1.4 mm, 3 context slices per side), sliding window with 50% overlap over the
  lungs grown by 8 pixels, Gaussian blending; ``patches_2_5d_native`` the same at the scan's own
  0.7 mm pixels (4x the windows);
* ``patches_3d``: the nodule demo's commented-out ``unet3d`` experiment (8 x 48 x 48 patches at 1.4 mm,
  8 channels).

Prints and writes (``benchmarks/results/sliding_window.json``) seconds per volume (wall and process
CPU), windows run, and each patch method's time over the whole-slice time.
Run: ``.venv/bin/python benchmarks/bench_sliding_window.py [--slices 300 --size 512 --threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import chest_volume  # noqa: E402
from timing import best_times  # noqa: E402

from lungseg.geometry import Geometry  # noqa: E402
from lungseg.inference.postprocess import classical_lung_mask  # noqa: E402
from lungseg.inference.predict import predict_probabilities  # noqa: E402
from lungseg.inference.sliding_window import _windows, prepare_volume  # noqa: E402
from lungseg.training.config import TrainConfig  # noqa: E402
from lungseg.training.models import build_model  # noqa: E402
from lungseg.training.patches import PatchSpec, dilate_region  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETUPS = {
    "whole_slice": TrainConfig(arch="unet", base_channels=16, depth=4, image_size=128, roi="crop", roi_margin=8),
    "patches_2_5d": TrainConfig(arch="unet", base_channels=16, depth=3, patch_size=64, context_slices=3, roi="crop",
                                patch_spacing=1.4),
    "patches_2_5d_native": TrainConfig(arch="unet", base_channels=16, depth=3, patch_size=64, context_slices=3,
                                       roi="crop"),
    "patches_3d": TrainConfig(arch="unet3d", base_channels=8, depth=3, patch_size=48, patch_depth=8, roi="crop",
                              patch_spacing=1.4),
}


def model_and_meta(config: TrainConfig) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build_model(config.arch, **config.model_kwargs()).eval()
    meta = {"arch": config.arch, "label": "nodule", "image_size": config.image_size, "hu_window": config.hu_window,
            "roi": {"mode": config.roi, "label": "lung", "margin": config.roi_margin}, "input": config.input_spec()}
    return model, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated, from {', '.join(SETUPS)} (whole_slice always runs: the baseline)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sliding_window.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hu = chest_volume(args.slices, args.size)
    geometry = Geometry((0.7, 0.7, 1.25), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lung = classical_lung_mask(hu, geometry)
    chosen = {"whole_slice", *args.setups.split(",")}
    unknown = chosen - set(SETUPS)
    if unknown:
        parser.error(f"unknown setup(s) {', '.join(sorted(unknown))}; choose from {', '.join(SETUPS)}")
    setups = {name: config for name, config in SETUPS.items() if name in chosen}
    models = {name: model_and_meta(config) for name, config in setups.items()}

    def run(name: str):
        model, meta = models[name]
        return lambda: predict_probabilities(model, meta, hu, batch_size=args.batch_size, progress=False,
                                             roi_mask=lung, spacing=geometry.spacing)

    times = best_times({name: run(name) for name in setups}, args.repeats)
    grown = dilate_region(lung, 8)
    windows = {}
    for name, c in setups.items():
        if c.patches:  # on the grid the windows slide over (resampled to the patch spacing)
            spec = PatchSpec.from_input(c.input_spec())
            volume, region = prepare_volume(hu, geometry.spacing, spec, c.hu_window, grown)
            windows[name] = len(list(_windows(spec, tuple(volume.shape), region)))
    base = times["wall"]["whole_slice"]
    result = {
        "benchmark": "sliding-window patch inference vs whole-slice inference, one CT volume, CPU",
        "volume": {"slices": args.slices, "size": args.size, "lung_voxels": int(lung.sum())},
        "threads": args.threads, "batch_size": args.batch_size, "repeats": args.repeats, "torch": torch.__version__,
        "setups": {name: {"input": c.input_spec(), "arch": c.arch, "base_channels": c.base_channels, "depth": c.depth,
                          **({"image_size": c.image_size} if not c.patches else {"windows": windows[name]})}
                   for name, c in setups.items()},
        "seconds_per_volume_wall": {k: round(v, 2) for k, v in times["wall"].items()},
        "seconds_per_volume_cpu": {k: round(v, 2) for k, v in times["cpu"].items()},
        "ratio_to_whole_slice_wall": {k: round(v / base, 2) for k, v in times["wall"].items() if k != "whole_slice"},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in setups:
        print(f"{name}: {times['wall'][name]:.1f} s wall, {times['cpu'][name]:.1f} s CPU per volume"
              + (f", {windows[name]} windows, {times['wall'][name] / base:.2f}x whole-slice" if name in windows else ""))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
