"""Training settings (:class:`TrainConfig`): the one source of their defaults, validation and help.

Where the settings of a run come from (``lungseg train``), later ones winning: the defaults of
:class:`TrainConfig`; the settings file of ``--config FILE`` (:func:`load_settings`: a JSON or YAML
mapping of TrainConfig field -> value, e.g. the resolved ``train:`` settings of one workflow
experiment, ``results/experiments/<name>/train_settings.json``); the options given on the command line.

Keys. Every field is a ``lungseg train`` option (``base_channels`` -> ``--base-channels``; booleans
as ``--augment`` / ``--no-augment``). The workflow's ``train:`` section (schema) has every field but
:data:`CLI_ONLY` (``device``, ``log_every``: how one hand run shows progress and which device it
picks; the workflow always uses ``auto``) and adds :data:`WORKFLOW_ONLY` (``nproc_per_node``: the
launcher's process count; training reads it as torchrun's ``WORLD_SIZE``), which a settings file may
hold and ``lungseg train`` ignores. Any other key of a settings file is an error naming it.
``tests/test_training_config.py`` keeps the schema, this class and the CLI the same set with the same
defaults; schema keys without a default (``required`` there) are the ones a workflow config must spell out.

Resuming (two layers, consistent: :data:`RESUME_KEYS` is disjoint from :data:`EXECUTION_ONLY`, so a
checkpoint in a workflow folder always passes the check of the second layer):

* Workflow: a run's checkpoint folder is named by :func:`lungseg.training.rule_args.checkpoint_key`,
  a hash of all its settings except :data:`EXECUTION_ONLY` (``threads``, ``num_workers`` and the
  CLI-only ``device``, ``log_every``: how a run is executed, not what it computes). A requeued or
  preempted job, or a rerun with other thread counts / loader workers, continues the run; any other
  change (``epochs``, ``lr``, ``batch_size``, ``arch``, ``nproc_per_node``, ``amp``, ...) trains from
  scratch in a new folder; the old folder is kept, so going back to the old settings continues it.
  ``epochs`` starts over because the learning-rate schedule (warmup, then cosine from ``lr`` down to
  ``lr_min`` at the last epoch) is laid out over all epochs: the first 5 epochs of a 10-epoch run are
  not those of a 20-epoch run, so a continued run would give a model no fresh run reproduces.
* One ``--out-dir`` (hand runs): ``train`` refuses a checkpoint whose :data:`RESUME_KEYS` differ
  (another model, data or training mode: the weights would not fit or would mean something else) and
  otherwise continues it with the new settings: raising ``--epochs`` trains on (the cosine is laid out
  anew over the new total, so the result differs from a fresh run of that length), and another
  ``--batch-size`` or process count continues at an epoch boundary.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lungseg.training.dataset import ROI_MODES
from lungseg.training.losses import LOSSES
from lungseg.training.models import CLASSIFIERS, MODELS, NORMS
from lungseg.training.rule_args import EXECUTION_ONLY  # noqa: F401 - re-exported; torch-free module for the Snakefile
from lungseg.training.sampling import PARTITIONS

MODES = ("ddp", "fedavg", "flower")  # flower: lungseg fl-run / fl-server + fl-client (lungseg.federated)
OPTIMIZERS = ("adam", "sgd")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
TASKS = ("segmentation", "classification")
#: classification: which labels the network learns (image = readers' malignancy, pathology = the patient-level
#: pathology diagnosis, both = the two tasks in one network, shared as ``sharing`` says)
CLS_TASKS = ("image", "pathology", "both", "candidate")
SHARINGS = ("soft", "hard")
PLANES = ("orthogonal", "axial")
INDETERMINATE = ("exclude", "class")
CLASS_BALANCE = ("none", "sampling", "loss")
SCHEDULERS = ("cosine", "plateau")
#: settings a checkpoint must share with the current config to be resumed in the same --out-dir
RESUME_KEYS = ("task", "cls_task", "sharing", "planes", "indeterminate", "dropout", "scheduler", "arch",
               "base_channels", "depth", "norm", "label", "image_size", "hu_window", "roi", "roi_label",
               "roi_margin", "patch_size", "patch_depth", "context_slices", "patch_spacing", "mode", "optimizer",
               "local_epochs", "fed_partition", "fed_fractions")
#: TrainConfig fields that are options of a hand run only, not keys of the workflow's train: section
CLI_ONLY = ("device", "log_every")
#: keys of the workflow's train: section that are not TrainConfig fields; allowed in a settings file, ignored
WORKFLOW_ONLY = ("nproc_per_node",)
#: the allowed values of the settings with a fixed set of them (validate, the CLI's choices, the schema's enums)
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": (*sorted(MODELS), *CLASSIFIERS), "norm": tuple(NORMS), "roi": tuple(ROI_MODES), "loss": tuple(sorted(LOSSES)),
    "optimizer": OPTIMIZERS, "mode": MODES, "fed_partition": tuple(PARTITIONS), "amp": AMP_MODES,
    "channels_last": SWITCHES, "device": DEVICES, "task": TASKS, "cls_task": CLS_TASKS, "sharing": SHARINGS,
    "planes": PLANES, "indeterminate": INDETERMINATE, "class_balance": CLASS_BALANCE, "scheduler": SCHEDULERS,
}


@dataclass
class TrainConfig:
    """Training settings.

    ``batch_size`` is per process; ``threads`` is the CPU thread budget of the whole job on this node,
    split evenly among its processes. ``mode``: ``ddp`` (one process, or synchronous data-parallel
    SGD over all torchrun processes) or ``fedavg`` (each process is a federated client that trains
    ``local_epochs`` epochs on its partition before the n_k/n-weighted averaging; ``epochs`` counts
    all local epochs, so rounds = epochs / local_epochs).

    ``task``: ``segmentation`` (the U-Nets, on case files) or ``classification`` (nodule malignancy:
    ``arch`` one of :data:`~lungseg.training.models.CLASSIFIERS`, on nodule patch files; the settings
    from ``cls_task`` to ``class_balance`` apply; see :mod:`lungseg.training.tasks`).
    """

    task: str = "segmentation"

    arch: str = "unet"
    base_channels: int = 16
    depth: int = 4
    norm: str = "batch"
    pretrained: str | None = None  # vgg16_unet: weights file, or "hub" (torch hub cache); never downloaded
    freeze_encoder_epochs: int = 0
    label: str = "lung"
    image_size: int = 128
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    roi: str = "crop"  # none, crop (to the roi_label box) or mask (HU outside roi_label -> window low)
    roi_label: str = "lung"
    roi_margin: int = 8
    patch_size: int = 0  # 0: whole slices resized to image_size; N: N x N patches at patch_spacing (small objects)
    patch_depth: int = 1  # slices per patch of a 3-D architecture (unet3d)
    context_slices: int = 0  # 2.5-D: this many neighbouring slices on each side as extra input channels
    patch_spacing: float | None = None  # in-plane mm the patches are resampled to (None: each scan's own pixels)
    foreground_rate: float = 0.33  # share of training patches centred on a foreground object (nnU-Net's 1/3)
    patches_per_epoch: int = 512  # training patches drawn per epoch (all processes together)
    overlap: float = 0.5  # sliding-window overlap of patch inference, stored in the model file
    epochs: int = 8
    batch_size: int = 8
    loss: str = "bce_dice"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_min: float = 1e-6
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool = True
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of batch pairs; 0 = off
    oversample: float = 1.0  # sampling weight of slices with foreground relative to the others
    mode: str = "ddp"
    local_epochs: int = 1
    fed_partition: str = "iid"
    fed_fractions: tuple[float, ...] = ()
    num_workers: int = 0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (CUDA when available), cuda or cpu
    amp: str = "auto"  # auto = bf16 on CUDA, off on CPU
    channels_last: str = "auto"  # auto = on with CUDA
    sync_bn: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    deterministic: bool = False
    cls_task: str = "image"  # classification: image (readers' malignancy), pathology, both (two-task network), candidate
    sharing: str = "soft"  # cls_task both: soft (own stems, cross-stitched later stages) or hard (one backbone, two heads)
    planes: str = "orthogonal"  # classification input: the 3 orthogonal planes as channels, or the axial plane alone
    dropout: float = 0.0  # classification: dropout before the final layer(s)
    indeterminate: str = "exclude"  # classification: readers' median rating 3: left out, or a third class
    class_balance: str = "none"  # classification: none, sampling (class-balanced draws) or loss (class-weighted)
    scheduler: str = "cosine"  # cosine (warmup + cosine to lr_min) or plateau (ReduceLROnPlateau on val_loss)
    plateau_patience: int = 2  # plateau: epochs without a lower val_loss before the lr is cut
    plateau_factor: float = 0.5  # plateau: the cut (new lr = factor * lr, not below lr_min)
    log_every: int = 0  # log a line every N training steps (0: progress bar only)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], source: str = "training settings") -> TrainConfig:
        """A TrainConfig from ``{field: value}`` (missing fields: the defaults). Lists become tuples,
        numbers are converted to the field's type (YAML's ``1e-3`` string too); :data:`WORKFLOW_ONLY`
        keys are ignored. Raises ValueError (one line, starting with ``source``) for a key that is not
        a field or a value of the wrong kind. Does not :meth:`validate`."""
        names = setting_names()
        unknown = [str(k) for k in settings if k not in names and k not in WORKFLOW_ONLY]
        if unknown:
            match = difflib.get_close_matches(unknown[0], names, n=1)
            raise ValueError(f"{source}: {'key' if len(unknown) == 1 else 'keys'} {', '.join(unknown)} "
                             f"{'is not a training setting' if len(unknown) == 1 else 'are not training settings'}"
                             + (f" (did you mean {match[0]}?)" if match else "")
                             + f"; allowed: {', '.join(names)} (and {', '.join(WORKFLOW_ONLY)}, ignored)")
        types = {f.name: str(f.type) for f in fields(cls)}
        return cls(**{k: _coerce(source, k, types[k], v) for k, v in settings.items() if k in types})

    def validate(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(sorted(valid))}")
        for name in ("base_channels", "depth", "image_size", "epochs", "batch_size", "local_epochs", "patch_depth",
                     "patches_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self._validate_input()
        if len(self.hu_window) != 2 or not float(self.hu_window[1]) > float(self.hu_window[0]):
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"need lr > 0, 0 <= lr_min <= lr and weight_decay >= 0, got lr={self.lr}, "
                             f"lr_min={self.lr_min}, weight_decay={self.weight_decay}")
        if self.num_workers < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"num_workers must be >= 0 and threads >= 1, got {self.num_workers}, {self.threads}")
        if self.warmup_epochs < 0 or self.freeze_encoder_epochs < 0 or self.roi_margin < 0 or self.log_every < 0:
            raise ValueError("warmup_epochs, freeze_encoder_epochs, roi_margin and log_every must be >= 0")
        if self.mixup < 0 or self.oversample <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need mixup >= 0, oversample > 0 and 0 <= momentum < 1, got {self.mixup}, "
                             f"{self.oversample}, {self.momentum}")
        if self.mode in ("fedavg", "flower") and self.epochs % self.local_epochs:
            raise ValueError(f"{self.mode}: epochs ({self.epochs}) must be a multiple of local_epochs ({self.local_epochs}); "
                             f"rounds = epochs / local_epochs")
        if self.pretrained and self.arch != "vgg16_unet":
            raise ValueError(f"pretrained weights are only for arch vgg16_unet, not {self.arch}")
        if self.plateau_patience < 0 or not 0 < self.plateau_factor < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"need plateau_patience >= 0, 0 < plateau_factor < 1 and 0 <= dropout < 1, got "
                             f"{self.plateau_patience}, {self.plateau_factor}, {self.dropout}")
        self._validate_task()

    def _validate_task(self) -> None:
        """Which architectures and settings go with which task."""
        classifier = self.arch in CLASSIFIERS
        if self.task == "segmentation" and classifier:
            raise ValueError(f"arch {self.arch} is a classifier; use task classification, or a segmentation "
                             f"architecture ({', '.join(sorted(MODELS))})")
        if self.task != "classification":
            return
        if not classifier:
            raise ValueError(f"task classification needs a classifier arch ({', '.join(CLASSIFIERS)}), got {self.arch}")
        segmentation_only = {"patch_size": 0, "context_slices": 0, "mixup": 0.0, "oversample": 1.0,
                             "freeze_encoder_epochs": 0}
        changed = [k for k, v in segmentation_only.items() if getattr(self, k) != v]
        if changed:
            one = len(changed) == 1
            raise ValueError(f"{', '.join(changed)} {'is a segmentation setting' if one else 'are segmentation settings'}"
                             f"; leave {'it' if one else 'them'} at the default for task classification "
                             f"(class balance: class_balance sampling or loss)")

    def _validate_input(self) -> None:
        """Whole slices or patches, and which architecture takes which."""
        from lungseg.training.models import SPATIAL_DIMS

        side, what = (self.patch_size, "patch_size") if self.patches else (self.image_size, "image_size")
        if side < 2**self.depth and self.task == "segmentation":
            raise ValueError(f"{what} {side} is too small for depth {self.depth} (needs >= {2**self.depth})")
        if self.patch_size < 0 or self.context_slices < 0:
            raise ValueError(f"patch_size and context_slices must be >= 0, got {self.patch_size}, {self.context_slices}")
        three_d = SPATIAL_DIMS[self.arch] == 3
        if not self.patches and (three_d or self.context_slices or self.patch_depth != 1):
            raise ValueError(f"{'arch ' + self.arch if three_d else 'context_slices / patch_depth'} needs patch "
                             f"training: set patch_size (e.g. 64); whole slices are for 2-D architectures")
        if three_d and self.context_slices:
            raise ValueError("context_slices is for 2-D architectures (2.5-D input); a 3-D architecture sees "
                             "patch_depth slices")
        if not three_d and self.patch_depth != 1:
            raise ValueError(f"patch_depth is for 3-D architectures (unet3d); {self.arch} takes one slice "
                             f"(add neighbours as channels with context_slices)")
        if self.patches and self.oversample != 1.0:
            raise ValueError("oversample weighs whole slices; patch training centres foreground_rate of its "
                             "patches on foreground instead (leave oversample at 1)")
        if not 0.0 <= self.foreground_rate <= 1.0 or not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"need 0 <= foreground_rate <= 1 and 0 <= overlap < 1, got {self.foreground_rate}, "
                             f"{self.overlap}")
        if self.patch_spacing is not None and not self.patch_spacing > 0:
            raise ValueError(f"patch_spacing must be > 0 mm (or null: each scan's own pixels), got {self.patch_spacing}")

    @property
    def patches(self) -> bool:
        """Whether training uses patches (``patch_size > 0``) rather than whole slices."""
        return self.patch_size > 0

    def input_spec(self) -> dict[str, Any]:
        """The network input as the model file records it (``input``; :mod:`lungseg.training.patches`)."""
        if not self.patches:
            return {"kind": "slices"}
        return {"kind": "patches", "patch_size": [int(self.patch_depth), int(self.patch_size), int(self.patch_size)],
                "context_slices": int(self.context_slices),
                "spacing_mm": None if self.patch_spacing is None else float(self.patch_spacing),
                "overlap": float(self.overlap)}

    def heads(self) -> dict[str, int]:
        """Classification: task name -> number of classes of each output head, in output order."""
        image = 3 if self.indeterminate == "class" else 2
        return {"image": {"image": image}, "pathology": {"pathology": 2},
                "both": {"image": image, "pathology": 2}, "candidate": {"candidate": 2}}[self.cls_task]

    def model_kwargs(self) -> dict[str, Any]:
        if self.task == "classification":
            heads = self.heads()
            return {"in_channels": 3 if self.planes == "orthogonal" else 1, "heads": heads, "dropout": float(self.dropout),
                    "norm": str(self.norm), "sharing": self.sharing if len(heads) > 1 else "none"}
        return {"in_channels": 1 + 2 * int(self.context_slices), "out_channels": 1, "base_channels": int(self.base_channels),
                "depth": int(self.depth), "norm": str(self.norm)}

    def as_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), as stored in checkpoints."""
        d = asdict(self)
        d["hu_window"] = [float(v) for v in self.hu_window]
        d["fed_fractions"] = [float(v) for v in self.fed_fractions]
        return d


def setting_names() -> list[str]:
    """The TrainConfig fields, in order: the keys of a settings file (besides :data:`WORKFLOW_ONLY`)."""
    return [f.name for f in fields(TrainConfig)]


def _coerce(source: str, key: str, kind: str, value: Any) -> Any:
    """``value`` as a TrainConfig field of type ``kind`` (its annotation), or a one-line ValueError."""
    def bad(expected: str) -> ValueError:
        return ValueError(f"{source}: {key} = {json.dumps(value, default=str)} is not {expected}")

    def number(v: Any, integer: bool) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise bad("an integer" if integer else "a number")
        try:
            f = float(v)
        except ValueError:
            raise bad("an integer" if integer else "a number") from None
        if integer:
            if not f.is_integer():
                raise bad("an integer")
            return int(f)
        return f

    if value is None and kind.endswith("| None"):
        return None
    base = kind.removesuffix(" | None")
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base in ("int", "float"):
        return number(value, base == "int")
    if base == "str":
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted off / on as false / true
            return "on" if value else "off"
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise bad("a list of numbers")
        items = tuple(number(v, False) for v in value)
        if base == "tuple[float, float]" and len(items) != 2:
            raise bad("a list of two numbers")
        return items
    raise AssertionError(f"TrainConfig.{key}: no conversion for type {kind}")  # a new field type: add it here


def load_settings(path: str | Path) -> dict[str, Any]:
    """The mapping of a settings file: JSON (``.json``) or YAML (anything else). ValueError (one line
    naming the file) for a file that does not parse or is not a mapping; FileNotFoundError if missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} not found (--config); give the path of a JSON or YAML file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json / yaml parse errors: one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"settings file {path}: cannot parse it ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"settings file {path}: expected a mapping of training settings (key: value), "
                         f"got {type(data).__name__}")
    return dict(data)


def config_from_settings(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a settings file, updated with ``overrides`` (what ``lungseg train --config`` does)."""
    settings = {**load_settings(path), **(overrides or {})}
    return TrainConfig.from_mapping(settings, source=f"settings file {path}")
