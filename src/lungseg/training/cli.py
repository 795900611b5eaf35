"""``lungseg train``: train a slice-wise segmentation model on ingested cases.

Runs as one process (``lungseg train ...``) or data-parallel under torchrun
(``torchrun --standalone --nproc_per_node=N -m lungseg train ...``: NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from lungseg.atomic import atomic_path
from lungseg.training.distributed import DistributedSetupError, dist_env
from lungseg.training.models import MODELS
from lungseg.training.train import METRICS_NAME, TrainConfig, train

log = logging.getLogger("lungseg.train")

EPILOG = """\
outputs in --out-dir: checkpoint.pt (resume state, rewritten every epoch), model.pt (best epoch by
validation Dice; input of `lungseg predict`) and metrics.csv (one row per epoch). Re-running with the
same --out-dir resumes after the last completed epoch; raising --epochs continues training. A checkpoint
written with another --arch/--label/--image-size/--base-channels/--depth/--hu-window is never overwritten.

examples:
  lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung --epochs 10
  torchrun --standalone --nproc_per_node=2 -m lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung
"""


def configure(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    io = parser.add_argument_group("data and outputs")
    io.add_argument("--train", nargs="+", required=True, metavar="CASE.h5", help="ingested training case files")
    io.add_argument("--val", nargs="+", required=True, metavar="CASE.h5", help="ingested validation case files")
    io.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="folder for checkpoint.pt, model.pt and metrics.csv")
    io.add_argument("--label", default=d.label, metavar="NAME", help=f"label to learn, e.g. lung or nodule (default: {d.label})")
    io.add_argument("--model-out", type=Path, default=None, metavar="PATH", help="also copy the best model.pt here when done")
    io.add_argument("--metrics-out", type=Path, default=None, metavar="PATH", help="also copy metrics.csv here when done")
    m = parser.add_argument_group("model")
    m.add_argument("--arch", default=d.arch, choices=sorted(MODELS), help=f"architecture (default: {d.arch})")
    m.add_argument("--base-channels", type=int, default=d.base_channels, metavar="N", help=f"channels of the first level (default: {d.base_channels})")
    m.add_argument("--depth", type=int, default=d.depth, metavar="N", help=f"number of down-sampling steps (default: {d.depth})")
    m.add_argument("--image-size", type=int, default=d.image_size, metavar="S",
                   help=f"slices are resized to SxS for the network (default: {d.image_size})")
    m.add_argument("--hu-window", type=float, nargs=2, default=list(d.hu_window), metavar=("LO", "HI"),
                   help=f"HU window clipped and scaled to [0, 1] (default: {d.hu_window[0]:g} {d.hu_window[1]:g})")
    t = parser.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help=f"total epochs (default: {d.epochs})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help=f"slices per batch per process (default: {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, metavar="F", help=f"Adam learning rate, cosine-annealed (default: {d.lr:g})")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="F", help=f"Adam weight decay (default: {d.weight_decay:g})")
    t.add_argument("--no-augment", action="store_true", help="disable random flips / rotations of training slices")
    t.add_argument("--seed", type=int, default=d.seed, metavar="N", help=f"random seed (default: {d.seed})")
    r = parser.add_argument_group("resources")
    r.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N", help=f"data-loader worker processes per training process (default: {d.num_workers})")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the whole job on this node, split among its processes (default: torch's choice)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="auto: CUDA GPUs when available (one per process), else CPU (default: auto)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        arch=args.arch, base_channels=args.base_channels, depth=args.depth, label=args.label,
        image_size=args.image_size, hu_window=(float(args.hu_window[0]), float(args.hu_window[1])),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        num_workers=args.num_workers, seed=args.seed, augment=not args.no_augment, threads=args.threads,
        device=args.device,
    )


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run(args: argparse.Namespace) -> int:
    env = dist_env()
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=f"%(asctime)s %(name)s{f' [rank {env.rank}]' if env.world_size > 1 else ''} %(levelname)s %(message)s",
    )
    try:
        config = config_from_args(args)
        model_path = train(config, args.train, args.val, args.out_dir)
    except (ValueError, FileNotFoundError, FloatingPointError, DistributedSetupError) as exc:
        log.error("%s", exc)
        return 1
    if env.is_main:
        if args.model_out is not None:
            _copy_atomic(model_path, args.model_out)
        if args.metrics_out is not None:
            _copy_atomic(model_path.parent / METRICS_NAME, args.metrics_out)
    return 0
