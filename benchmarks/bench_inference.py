"""CPU inference of a 300-slice 512 x 512 CT volume: lungseg's default model against lungmask's `resunet`.

Same run, same synthetic chest volume (air, body, two lungs, noise), same CPU thread budget (``--threads``,
default 2), each timed best of ``--repeats`` with the methods interleaved (the machine may be shared):

* ``lungseg``: :func:`lungseg.inference.predict.predict_volume` (HU window, resize to the model's input
  size, batched forward pass under ``torch.inference_mode``, resize back, threshold) with the default
  model of ``config/config.yaml`` (``train``: arch, base_channels, depth, image_size), randomly
  initialised, or a trained ``--model``; batch size from ``predict.batch_size``. Also with ``--flips xy``
  (four views) for reference.
* ``lungmask``: lungmask's own inference pipeline (``LMInferer``: crop to the body and resize every slice
  to 256 x 256, batch 20, ``torch.inference_mode``, argmax, paste back) with its published R231 network
  (``resunet.UNet``: depth 5, 64 base filters, padding, batch norm, bilinear upsampling, 3 classes),
  randomly initialised and loaded from a temporary state dict (nothing is downloaded; speed depends on
  shapes, not weights). Its volume post-processing (connected components, hole filling) is off, since
  its cost depends on what the weights predict. The network costs about 3 s per slice on 2 cores, so it
  runs on the first ``--baseline-slices`` slices (default 20: one of its batches) and the time is
  scaled linearly to the whole volume (every step is per slice); ``--baseline-slices 300`` times it all.
* Networks alone at lungmask's input size (256 x 256, batch 20): both models' forward passes.

Prints wall seconds per volume, the process CPU seconds (robust when the machine is shared; the
1-minute load average is recorded too) and the ratios lungmask / lungseg; with ``--summary`` (a metrics summary.json)
also the trained model's test Dice. Writes ``benchmarks/results/inference.json``.
Needs ``pip install lungmask`` (benchmark only, not a lungseg dependency).
Run: ``.venv/bin/python benchmarks/bench_inference.py``
``[--model results/model/lung/model.pt --summary results/metrics/summary.json]`` (about 20 min on 2 cores,
most of it lungmask); ``--skip-baseline`` times lungseg alone (``inference_lungseg_only.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lungseg.inference.model import load_predictor
from lungseg.inference.predict import predict_volume
from lungseg.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def chest_volume(n_slices: int = 300, size: int = 512, seed: int = 0) -> np.ndarray:
    """int16 HU (z, y, x): air, an elliptic body with two elliptic lungs, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.52) / 0.32) ** 2 < 1
    lungs = (((x - 0.32) / 0.13) ** 2 + ((y - 0.48) / 0.2) ** 2 < 1) | (((x - 0.68) / 0.13) ** 2 + ((y - 0.48) / 0.2) ** 2 < 1)
    slice_hu = np.where(body, np.where(lungs, -850, 40), -1000).astype(np.int16)
    volume = np.repeat(slice_hu[None], n_slices, axis=0)
    return (volume + rng.normal(0, 15, volume.shape)).clip(-1024, 3071).astype(np.int16)


def default_model(config: dict, model_path: Path | None) -> tuple[torch.nn.Module, dict]:
    if model_path:
        return load_predictor(model_path)
    t = config["train"]
    torch.manual_seed(0)
    model = build_model(t["arch"], base_channels=t["base_channels"], depth=t["depth"]).eval()
    return model, {"image_size": t["image_size"], "hu_window": tuple(t["hu_window"]), "label": t["label"]}


def lungmask_inferer(batch_size: int = 20):
    """lungmask's LMInferer with a randomly initialised R231 network (no download)."""
    from lungmask import LMInferer
    from lungmask.resunet import UNet as ResUNet

    torch.manual_seed(0)
    net = ResUNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r231_random.pth"
        torch.save(net.state_dict(), path)
        inferer = LMInferer(modelpath=str(path), force_cpu=True, batch_size=batch_size, volume_postprocessing=False,
                            tqdm_disable=True)
    return inferer, net


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CPU_S: dict[str, list[float]] = {}


def timed(fn, key: str | None = None, scale: float = 1.0) -> float:
    """Wall seconds of ``fn()`` (times ``scale``); its process CPU seconds are kept under ``key``."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    if key:
        CPU_S.setdefault(key, []).append((_cpu_seconds() - cpu) * scale)
    return wall * scale


def lungseg_only(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    batch_size = config["predict"]["batch_size"]
    volume = chest_volume(args.slices, args.size)
    model, meta = default_model(config, args.model)
    predict_volume(model, meta, volume[:batch_size], batch_size=batch_size, progress=False)
    wall = [timed(lambda: predict_volume(model, meta, volume, batch_size=batch_size, progress=False), "lungseg")
            for _ in range(args.repeats)]
    result = {"volume": {"slices": args.slices, "matrix": [args.size, args.size]}, "threads": args.threads,
              "load_average_1min_at_end": os.getloadavg()[0], "lungseg_wall_s": [round(w, 2) for w in wall],
              "lungseg_cpu_s": [round(c, 2) for c in CPU_S["lungseg"]], "goal_30s_per_volume_met": min(wall) <= 30.0}
    out = args.out.with_name(args.out.stem + "_lungseg_only.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"lungseg {args.slices} x {args.size}^2 on {args.threads} threads: best {min(wall):.1f} s wall "
          f"(runs {result['lungseg_wall_s']}), CPU {min(CPU_S['lungseg']):.1f} s; "
          f"1-min load average {result['load_average_1min_at_end']:.1f} -> {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-slices", type=int, default=20, help="slices lungmask is timed on (scaled to --slices)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="time lungseg only (no lungmask, no ratios): a quick check of the 30 s goal")
    parser.add_argument("--model", type=Path, default=None, help="trained model.pt (default: the config's model, random weights)")
    parser.add_argument("--summary", type=Path, default=None, help="metrics summary.json of that model (for its test Dice)")
    parser.add_argument("--config", type=Path, default=REPO / "config/config.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    args = parser.parse_args()
    if args.skip_baseline:
        return lungseg_only(args)
    try:
        import lungmask  # noqa: F401
    except ImportError:
        print("lungmask is not installed: `.venv/bin/pip install lungmask` (benchmark only)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    batch_size = config["predict"]["batch_size"]
    volume = chest_volume(args.slices, args.size)
    baseline_part = volume[: min(args.baseline_slices, args.slices)]
    model, meta = default_model(config, args.model)
    inferer, resunet = lungmask_inferer()
    # warm-up (allocators, oneDNN kernels) on a few slices
    predict_volume(model, meta, volume[:batch_size], batch_size=batch_size, progress=False)
    inferer.apply(volume[:4])

    runs: dict[str, list[float]] = {"lungseg": [], "lungseg_flips_xy": [], "lungmask": []}
    for _ in range(args.repeats):
        runs["lungseg"].append(timed(lambda: predict_volume(model, meta, volume, batch_size=batch_size, progress=False),
                                     "lungseg"))
        runs["lungmask"].append(timed(lambda: inferer.apply(baseline_part), "lungmask", args.slices / len(baseline_part)))
        runs["lungseg_flips_xy"].append(timed(lambda: predict_volume(model, meta, volume, batch_size=batch_size,
                                                                      flips="xy", progress=False), "lungseg_flips_xy"))
    best = {k: min(v) for k, v in runs.items()}

    # the networks alone, at lungmask's working size (256 x 256), batch 20
    x = torch.rand(20, 1, 256, 256)
    with torch.inference_mode():
        model(x[:2]), resunet.eval()(x[:2])
        net_s = {"lungseg_net": min(timed(lambda: model(x)) for _ in range(args.repeats)) / 20,
                 "resunet_net": min(timed(lambda: resunet(x)) for _ in range(args.repeats)) / 20}

    test_dice = None
    if args.summary and args.summary.is_file():
        test_dice = json.loads(args.summary.read_text())["unet"]["metrics"]["dice"]
    result = {
        "volume": {"slices": args.slices, "matrix": [args.size, args.size]},
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lungseg_model": {"arch": config["train"]["arch"], "base_channels": config["train"]["base_channels"],
                          "depth": config["train"]["depth"], "image_size": meta["image_size"],
                          "batch_size": batch_size, "weights": str(args.model) if args.model else "random",
                          "parameters": sum(p.numel() for p in model.parameters())},
        "lungmask_model": {"arch": "resunet R231 (depth 5, wf 6, batch norm, upsample)", "input": [256, 256],
                           "batch_size": 20, "weights": "random", "volume_postprocessing": False,
                           "timed_slices": len(baseline_part), "parameters": sum(p.numel() for p in resunet.parameters())},
        "seconds_per_volume": {k: round(v, 2) for k, v in best.items()},
        "cpu_seconds_per_volume": {k: round(min(v), 2) for k, v in CPU_S.items()},
        "all_runs_s": {k: [round(t, 2) for t in v] for k, v in runs.items()},
        "ratio_lungmask_vs_lungseg": round(best["lungmask"] / best["lungseg"], 1),
        "ratio_lungmask_vs_lungseg_flips_xy": round(best["lungmask"] / best["lungseg_flips_xy"], 1),
        "ratio_cpu_lungmask_vs_lungseg": round(min(CPU_S["lungmask"]) / min(CPU_S["lungseg"]), 1),
        "network_only_256px_ms_per_slice": {k: round(1000 * v, 1) for k, v in net_s.items()},
        "ratio_network_only_256px": round(net_s["resunet_net"] / net_s["lungseg_net"], 1),
        "goal_30s_per_volume_met": best["lungseg"] <= 30.0,
        "lungseg_test_dice": test_dice,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    s = result["seconds_per_volume"]
    print(f"{args.slices} x {args.size}^2 on {args.threads} threads (best of {args.repeats}):")
    print(f"  lungseg ({meta['image_size']}^2 input) {s['lungseg']:.1f} s/volume; with flips xy {s['lungseg_flips_xy']:.1f} s")
    print(f"  lungmask resunet (256^2 input, scaled from {len(baseline_part)} slices) {s['lungmask']:.1f} s/volume")
    print(f"  ratio lungmask / lungseg: {result['ratio_lungmask_vs_lungseg']}x "
          f"(with flips xy: {result['ratio_lungmask_vs_lungseg_flips_xy']}x); CPU time "
          f"{result['cpu_seconds_per_volume']['lungseg']:.1f} s vs {result['cpu_seconds_per_volume']['lungmask']:.1f} s "
          f"({result['ratio_cpu_lungmask_vs_lungseg']}x); 1-min load average {result['load_average_1min_at_end']:.1f}")
    print(f"  networks alone at 256^2: lungseg {result['network_only_256px_ms_per_slice']['lungseg_net']} ms/slice, "
          f"resunet {result['network_only_256px_ms_per_slice']['resunet_net']} ms/slice "
          f"({result['ratio_network_only_256px']}x)")
    if test_dice:
        print(f"  lungseg test Dice {test_dice['mean']:.3f} (95% CI {test_dice['ci95']}) over the test split")
    print(f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
