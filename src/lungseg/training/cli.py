"""``lungseg train``: train a segmentation model on ingested cases, or a nodule classifier on nodule patches.

Runs as one process (``lungseg train ...``), data-parallel under torchrun
(``torchrun --standalone --nproc_per_node=N -m lungseg train ...``: NCCL on GPUs, gloo on CPU), or as
federated clients (``--mode fedavg``, one per torchrun process). A SIGTERM/SIGUSR1 to any training
process stops all of them after the same step with a checkpoint and exit status 75 (requeue);
``lungseg train-guard -- torchrun ...`` does the same for a signal to itself or to torchrun.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from lungseg.atomic import atomic_path
from lungseg.training.config import CHOICES, TrainConfig, config_from_settings, setting_names
from lungseg.training.distributed import DistributedSetupError, dist_env
from lungseg.training.preemption import REQUEUE_EXIT_CODE, TrainingInterrupted
from lungseg.training.train import METRICS_NAME, train

log = logging.getLogger("lungseg.train")

EPILOG = """\
settings: TrainConfig's defaults, then --config FILE (JSON or YAML: a mapping of setting -> value, keys
as the options below without dashes, e.g. {"arch": "unet", "hu_window": [-1000, 400], "augment": true};
the workflow writes results/experiments/<name>/train_settings.json per experiment; nproc_per_node, a
launcher setting, is allowed and ignored), then the options given here, which override the file.
`lungseg train --config results/experiments/<name>/train_settings.json ...` trains what the workflow trains.

outputs in --out-dir: checkpoint.pt (resume state, rewritten every epoch and on SIGTERM/SIGUSR1),
model.pt (best epoch by validation Dice, classification: AUC; input of `lungseg predict` / `classify`)
and metrics.csv (one row per epoch, per round with --mode fedavg). Re-running with the same --out-dir
resumes where the last run stopped (mid-epoch after a signal); raising --epochs continues training (on a
cosine laid out anew over the new total: not the same as a fresh run of that length). A checkpoint
written for another model or setup (--arch/--base-channels/--depth/--norm/--label/--image-size/
--hu-window/--roi/--mode/--task/...) is never overwritten. The workflow keeps one --out-dir per
settings (all but --threads/--num-workers).

exit status: 0 done, 1 bad input or setup (one line naming the problem), 75 stopped by SIGTERM/SIGUSR1
after writing the checkpoint (requeue the job; the next start resumes).

examples:
  lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung --epochs 10
  lungseg train --task classification --arch resnet18 --image-size 64 --train results/nodules/A.patches.h5 ...
      --val results/nodules/C.patches.h5 --out-dir runs/cls   (model.pt: best epoch by validation AUC)
  lungseg train --config results/experiments/unet/train_settings.json --threads 8 --train ... --val ... --out-dir runs/u
  torchrun --standalone --nproc_per_node=2 -m lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung
  torchrun --standalone --nproc_per_node=4 -m lungseg train --mode fedavg --fed-partition case ... (4 clients)
  the recipe of Hu, "Distributed U-net model and image segmentation for lung cancer detection":
      lungseg train --arch vgg16_unet --base-channels 64 --pretrained hub
      --freeze-encoder-epochs 5 --epochs 10 --lr 1e-4 --lr-min 1e-6 --warmup-epochs 1 ...
"""

#: options of `lungseg train` that are not training settings (TrainConfig fields): inputs, outputs, --config
IO_OPTIONS = ("train", "val", "out_dir", "model_out", "metrics_out", "config")


def default_text(name: str) -> str:
    """TrainConfig's default of ``name`` as the help texts show it."""
    value = getattr(TrainConfig(), name)
    special = {"threads": "torch's choice", "fed_fractions": "equal", "pretrained": "none", "augment": "on",
               "sync_bn": "off", "deterministic": "off", "log_every": "0 = progress bar only", "mixup": "0 = off",
               "oversample": "1 = plain shuffling",
               "patch_size": "0 = whole slices", "patch_spacing": "each scan's own pixels"}
    if name in special:
        return special[name]
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``lungseg train``. Every setting option defaults to ``argparse.SUPPRESS`` (absent
    from the namespace unless given): its default is TrainConfig's, or the --config file's value."""
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    unset = argparse.SUPPRESS
    flag = argparse.BooleanOptionalAction

    def add(group: argparse._ArgumentGroup, name: str, help_text: str, **kwargs) -> None:  # noqa: ANN003
        if name in CHOICES:
            kwargs.setdefault("choices", list(CHOICES[name]))
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=unset,
                           help=f"{help_text} (default: {default_text(name)})".lstrip(), **kwargs)

    io = parser.add_argument_group("data and outputs")
    io.add_argument("--train", nargs="*", required=True, metavar="CASE.h5", help="ingested training case files")
    io.add_argument("--val", nargs="*", required=True, metavar="CASE.h5", help="ingested validation case files")
    io.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                    help="folder for checkpoint.pt, model.pt and metrics.csv")
    io.add_argument("--config", type=Path, default=None, metavar="FILE",
                    help="training settings file (JSON or YAML mapping of the settings below, e.g. the workflow's "
                         "train_settings.json); options given here override it (default: none, TrainConfig's defaults)")
    add(io, "label", "label to learn, e.g. lung or nodule", metavar="NAME")
    io.add_argument("--model-out", type=Path, default=None, metavar="PATH", help="also copy the best model.pt here when done")
    io.add_argument("--metrics-out", type=Path, default=None, metavar="PATH", help="also copy metrics.csv here when done")
    add(io, "roi", "crop slices to the ROI label's box, or mask HU outside it, or none (whole slices)")
    add(io, "roi_label", "label defining the ROI", metavar="NAME")
    add(io, "roi_margin", "pixels around the ROI box (patches: the ROI is dilated by PX at inference)", type=int,
        metavar="PX")
    pt = parser.add_argument_group("patches (small objects such as nodules: patch_size > 0)")
    add(pt, "patch_size", "train on SxS patches at --patch-spacing instead of whole slices resized to --image-size; "
                          "predict by sliding window", type=int, metavar="S")
    add(pt, "patch_depth", "slices per patch of a 3-D architecture (unet3d)", type=int, metavar="D")
    add(pt, "context_slices", "2.5-D: K neighbouring slices on each side as extra input channels", type=int, metavar="K")
    add(pt, "patch_spacing", "in-plane pixel size in mm patches are resampled to (default: each scan's own)",
        type=float, metavar="MM")
    add(pt, "foreground_rate", "share of training patches centred on a foreground object", type=float, metavar="F")
    add(pt, "patches_per_epoch", "training patches per epoch, all processes together", type=int, metavar="N")
    add(pt, "overlap", "sliding-window overlap at inference (stored in the model file)", type=float, metavar="F")
    m = parser.add_argument_group("model")
    add(m, "arch", "architecture")
    add(m, "base_channels", "channels of the first level", type=int, metavar="N")
    add(m, "depth", "number of down-sampling steps", type=int, metavar="N")
    add(m, "image_size", "slices are resized to SxS for the network", type=int, metavar="S")
    add(m, "hu_window", "HU window clipped and scaled to [0, 1]", type=float, nargs=2, metavar=("LO", "HI"))
    add(m, "norm", "normalisation layers: batch (as the papers' U-Nets) or group")
    add(m, "pretrained", "vgg16_unet: VGG16-BN ImageNet weights from FILE or the torch hub cache ('hub'); never downloaded",
        metavar="FILE|hub")
    add(m, "freeze_encoder_epochs", "train with the encoder frozen for the first N epochs, then all", type=int, metavar="N")
    t = parser.add_argument_group("optimisation")
    add(t, "epochs", "total epochs", type=int, metavar="N")
    add(t, "batch_size", "slices per batch per process", type=int, metavar="N")
    add(t, "lr", "peak learning rate, cosine-annealed to --lr-min", type=float, metavar="F")
    add(t, "lr_min", "learning rate of the last epoch", type=float, metavar="F")
    add(t, "warmup_epochs", "linear warmup epochs from lr/10 before the cosine annealing", type=int, metavar="N")
    add(t, "optimizer", "")
    add(t, "momentum", "SGD momentum", type=float, metavar="F")
    add(t, "loss", "")
    add(t, "mixup", "mixup with Beta(ALPHA, ALPHA)", type=float, metavar="ALPHA")
    add(t, "oversample", "draw slices with foreground F times as often as the others", type=float, metavar="F")
    add(t, "weight_decay", "weight decay", type=float, metavar="F")
    add(t, "augment", "random flips / rotations of training slices", action=flag)
    add(t, "seed", "random seed", type=int, metavar="N")
    f = parser.add_argument_group("distributed and federated")
    add(f, "mode", "ddp: one model, synchronous data-parallel over all processes; fedavg: every process is a "
                   "federated client, weights averaged with n_k/n after each round")
    add(f, "local_epochs", "fedavg: epochs per round", type=int, metavar="E")
    add(f, "fed_partition", "fedavg: iid (random slices) or case (non-IID: whole cases per client)")
    add(f, "fed_fractions", "fedavg: relative client sizes, one per client, e.g. 0.6 0.3 0.1; none given = equal",
        type=float, nargs="*", metavar="F")
    add(f, "sync_bn", "SyncBatchNorm across DDP processes (CUDA only)", action=flag)
    c = parser.add_argument_group("classification (task classification: nodule malignancy on nodule patch files)")
    add(c, "task", "segmentation (case files) or classification (--train/--val: <case>.patches.h5, "
                   "<case>.nodules.tsv beside)")
    add(c, "cls_task", "labels learnt: image (readers' malignancy), pathology (patient-level), both (two-task network) "
                       "or candidate (a detector's candidates: nodule or not)")
    add(c, "sharing", "cls_task both: soft (own stems, learned combinations of later stages) or hard (one backbone, two heads)")
    add(c, "planes", "orthogonal (axial, coronal, sagittal as 3 channels) or axial (1 channel)")
    add(c, "dropout", "dropout before the final layer", type=float, metavar="P")
    add(c, "indeterminate", "nodules of median rating 3: exclude, or a third class")
    add(c, "class_balance", "none, sampling (classes drawn equally often) or loss (class-weighted cross-entropy)")
    add(t, "scheduler", "cosine (warmup, then cosine to --lr-min) or plateau (ReduceLROnPlateau on the validation loss)")
    add(t, "plateau_patience", "plateau: epochs without a lower validation loss before the cut", type=int, metavar="N")
    add(t, "plateau_factor", "plateau: multiply the learning rate by F (not below --lr-min)", type=float, metavar="F")
    r = parser.add_argument_group("resources (not part of a run's identity: changing them continues a checkpoint)")
    add(r, "num_workers", "data-loader worker processes per training process", type=int, metavar="N")
    add(r, "threads", "CPU threads of the whole job on this node, split among its processes", type=int, metavar="N")
    add(r, "device", "auto: CUDA GPUs when available (one per process), else CPU")
    add(r, "log_every", "log a line every N training steps", type=int, metavar="N")
    n = parser.add_argument_group("numerics")
    add(n, "amp", "autocast: auto = bf16 on CUDA, off on CPU")
    add(n, "channels_last", "channels_last memory format: auto = on with CUDA")
    add(n, "deterministic", "deterministic kernels where the backend has them (slower on GPUs)", action=flag)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given as options (the others are absent from ``args``)."""
    return {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, updated with the --config file, updated with the options given."""
    given = given_settings(args)
    if getattr(args, "config", None) is not None:
        return config_from_settings(args.config, given)
    return TrainConfig.from_mapping(given, source="lungseg train")


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
    except TrainingInterrupted:  # the checkpoint is written and rank 0 logged the stop in one line
        return REQUEUE_EXIT_CODE
    except (ValueError, FileNotFoundError, FloatingPointError, DistributedSetupError) as exc:
        log.error("%s", exc)
        return 1
    if env.is_main:
        if args.model_out is not None:
            _copy_atomic(model_path, args.model_out)
        if args.metrics_out is not None:
            _copy_atomic(model_path.parent / METRICS_NAME, args.metrics_out)
    return 0
