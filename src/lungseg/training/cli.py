"""``lungseg train``: train a slice-wise segmentation model on ingested cases.

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

from lungseg.atomic import atomic_path
from lungseg.training.config import AMP_MODES, MODES, OPTIMIZERS, SWITCHES
from lungseg.training.dataset import ROI_MODES
from lungseg.training.distributed import DistributedSetupError, dist_env
from lungseg.training.losses import LOSSES
from lungseg.training.models import MODELS, NORMS
from lungseg.training.preemption import REQUEUE_EXIT_CODE, TrainingInterrupted
from lungseg.training.sampling import PARTITIONS
from lungseg.training.train import METRICS_NAME, TrainConfig, train

log = logging.getLogger("lungseg.train")

EPILOG = """\
outputs in --out-dir: checkpoint.pt (resume state, rewritten every epoch and on SIGTERM/SIGUSR1),
model.pt (best epoch by validation Dice; input of `lungseg predict`) and metrics.csv (one row per epoch,
per round with --mode fedavg). Re-running with the same --out-dir resumes where the last run stopped
(mid-epoch after a signal); raising --epochs continues training. A checkpoint written for another
model or setup (--arch/--base-channels/--depth/--norm/--label/--image-size/--hu-window/--roi/--mode/...)
is never overwritten.

exit status: 0 done, 1 bad input or setup (one line naming the problem), 75 stopped by SIGTERM/SIGUSR1
after writing the checkpoint (requeue the job; the next start resumes).

examples:
  lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung --epochs 10
  torchrun --standalone --nproc_per_node=2 -m lungseg train --train a.h5 b.h5 --val c.h5 --out-dir runs/lung
  torchrun --standalone --nproc_per_node=4 -m lungseg train --mode fedavg --fed-partition case ... (4 clients)
  seed 000's recipe: lungseg train --arch vgg16_unet --base-channels 64 --pretrained hub
      --freeze-encoder-epochs 5 --epochs 10 --lr 1e-4 --lr-min 1e-6 --warmup-epochs 1 ...
"""


def configure(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    io = parser.add_argument_group("data and outputs")
    io.add_argument("--train", nargs="*", required=True, metavar="CASE.h5", help="ingested training case files")
    io.add_argument("--val", nargs="*", required=True, metavar="CASE.h5", help="ingested validation case files")
    io.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="folder for checkpoint.pt, model.pt and metrics.csv")
    io.add_argument("--label", default=d.label, metavar="NAME", help=f"label to learn, e.g. lung or nodule (default: {d.label})")
    io.add_argument("--model-out", type=Path, default=None, metavar="PATH", help="also copy the best model.pt here when done")
    io.add_argument("--metrics-out", type=Path, default=None, metavar="PATH", help="also copy metrics.csv here when done")
    io.add_argument("--roi", default=d.roi, choices=ROI_MODES,
                    help="crop slices to the ROI label's box, or mask HU outside it (default: none)")
    io.add_argument("--roi-label", default=d.roi_label, metavar="NAME", help=f"label defining the ROI (default: {d.roi_label})")
    io.add_argument("--roi-margin", type=int, default=d.roi_margin, metavar="PX", help=f"pixels around the ROI box (default: {d.roi_margin})")
    m = parser.add_argument_group("model")
    m.add_argument("--arch", default=d.arch, choices=sorted(MODELS), help=f"architecture (default: {d.arch})")
    m.add_argument("--base-channels", type=int, default=d.base_channels, metavar="N", help=f"channels of the first level (default: {d.base_channels})")
    m.add_argument("--depth", type=int, default=d.depth, metavar="N", help=f"number of down-sampling steps (default: {d.depth})")
    m.add_argument("--image-size", type=int, default=d.image_size, metavar="S",
                   help=f"slices are resized to SxS for the network (default: {d.image_size})")
    m.add_argument("--hu-window", type=float, nargs=2, default=list(d.hu_window), metavar=("LO", "HI"),
                   help=f"HU window clipped and scaled to [0, 1] (default: {d.hu_window[0]:g} {d.hu_window[1]:g})")
    m.add_argument("--norm", default=d.norm, choices=NORMS, help="normalisation layers: batch (the seeds') or group (default: batch)")
    m.add_argument("--pretrained", default=None, metavar="FILE|hub",
                   help="vgg16_unet: VGG16-BN ImageNet weights from FILE or the torch hub cache ('hub'); never downloaded")
    m.add_argument("--freeze-encoder-epochs", type=int, default=d.freeze_encoder_epochs, metavar="N",
                   help="train with the encoder frozen for the first N epochs, then all (default: 0)")
    t = parser.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help=f"total epochs (default: {d.epochs})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help=f"slices per batch per process (default: {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, metavar="F", help=f"peak learning rate, cosine-annealed to --lr-min (default: {d.lr:g})")
    t.add_argument("--lr-min", type=float, default=d.lr_min, metavar="F", help=f"learning rate of the last epoch (default: {d.lr_min:g})")
    t.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, metavar="N",
                   help="linear warmup epochs from lr/10 before the cosine annealing (default: 0)")
    t.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help=f"(default: {d.optimizer})")
    t.add_argument("--momentum", type=float, default=d.momentum, metavar="F", help=f"SGD momentum (default: {d.momentum:g})")
    t.add_argument("--loss", default=d.loss, choices=sorted(LOSSES), help=f"(default: {d.loss})")
    t.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA); 0 = off (default)")
    t.add_argument("--oversample", type=float, default=d.oversample, metavar="F",
                   help="draw slices with foreground F times as often as the others (default: 1 = plain shuffling)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="F", help=f"weight decay (default: {d.weight_decay:g})")
    t.add_argument("--no-augment", action="store_true", help="disable random flips / rotations of training slices")
    t.add_argument("--seed", type=int, default=d.seed, metavar="N", help=f"random seed (default: {d.seed})")
    f = parser.add_argument_group("distributed and federated")
    f.add_argument("--mode", default=d.mode, choices=MODES,
                   help="ddp: one model, synchronous data-parallel over all processes; fedavg: every process is a "
                        "federated client, weights averaged with n_k/n after each round (default: ddp)")
    f.add_argument("--local-epochs", type=int, default=d.local_epochs, metavar="E", help="fedavg: epochs per round (default: 1)")
    f.add_argument("--fed-partition", default=d.fed_partition, choices=PARTITIONS,
                   help="fedavg: iid (random slices) or case (non-IID: whole cases per client) (default: iid)")
    f.add_argument("--fed-fractions", type=float, nargs="+", default=None, metavar="F",
                   help="fedavg: relative client sizes, one per client, e.g. 0.6 0.3 0.1 (default: equal)")
    f.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP processes (CUDA only)")
    r = parser.add_argument_group("resources")
    r.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N", help=f"data-loader worker processes per training process (default: {d.num_workers})")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the whole job on this node, split among its processes (default: torch's choice)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="auto: CUDA GPUs when available (one per process), else CPU (default: auto)")
    r.add_argument("--amp", default=d.amp, choices=AMP_MODES,
                   help="autocast: auto = bf16 on CUDA, off on CPU (default: auto)")
    r.add_argument("--channels-last", default=d.channels_last, choices=SWITCHES,
                   help="channels_last memory format: auto = on with CUDA (default: auto)")
    r.add_argument("--deterministic", action="store_true", help="deterministic kernels where the backend has them (slower on GPUs)")
    r.add_argument("--log-every", type=int, default=d.log_every, metavar="N",
                   help="log a line every N training steps (default: 0 = progress bar only)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        arch=args.arch, base_channels=args.base_channels, depth=args.depth, label=args.label,
        image_size=args.image_size, hu_window=(float(args.hu_window[0]), float(args.hu_window[1])),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        num_workers=args.num_workers, seed=args.seed, augment=not args.no_augment, threads=args.threads,
        device=args.device, norm=args.norm, pretrained=args.pretrained,
        freeze_encoder_epochs=args.freeze_encoder_epochs, roi=args.roi, roi_label=args.roi_label,
        roi_margin=args.roi_margin, loss=args.loss, optimizer=args.optimizer, lr_min=args.lr_min,
        warmup_epochs=args.warmup_epochs, momentum=args.momentum, mixup=args.mixup, oversample=args.oversample,
        mode=args.mode, local_epochs=args.local_epochs, fed_partition=args.fed_partition,
        fed_fractions=tuple(args.fed_fractions or ()), amp=args.amp, channels_last=args.channels_last,
        sync_bn=args.sync_bn, deterministic=args.deterministic, log_every=args.log_every,
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
