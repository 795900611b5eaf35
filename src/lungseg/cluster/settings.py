"""The ``cluster`` section of the workflow config: the one place for SLURM names and job sizes.

``profiles/slurm`` and ``profiles/hybrid`` (YTE templates) and ``lungseg sweep`` read it through
:func:`load_cluster_settings`, so partition, account and GPU type names are written only in
``config/config.yaml`` (or the file given with ``--configfile`` / ``$LUNGSEG_CONFIG``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: the config file Snakemake reads by default (relative to the working directory)
DEFAULT_CONFIG = Path("config/config.yaml")
#: environment variable naming the config file the profiles read (overrides --configfile / default)
CONFIG_ENV = "LUNGSEG_CONFIG"

_NAMES = ("account", "cpu_partition", "gpu_partition", "gpu_type", "cloud_partition", "cloud_account")
_SIZES = {"train": ("nodes", "cpus_per_gpu", "mem_mb", "runtime"), "jobs": ("mem_mb", "runtime")}


class ClusterConfigError(ValueError):
    """The cluster section is missing or malformed (message names the file and the fix)."""


@dataclass(frozen=True)
class JobSize:
    """Resources of one kind of SLURM job (``mem_mb`` per node, ``runtime`` in minutes)."""

    mem_mb: int
    runtime: int
    nodes: int = 1
    cpus_per_gpu: int = 1


@dataclass(frozen=True)
class ClusterSettings:
    """SLURM names and sizes; ``gpus_per_node`` is ``train.nproc_per_node`` (one GPU per process). The
    scaling study's runs take their GPU count from the rule itself (one job per N of ``scaling.devices``)."""

    account: str
    cpu_partition: str
    gpu_partition: str
    gpu_type: str
    cloud_partition: str
    cloud_account: str
    train: JobSize
    jobs: JobSize
    gpus_per_node: int
    source: str = ""
    #: experiments whose train job holds no GPU: train.mode flower with federated.launcher slurm (the job is
    #: the Flower server; each site's client is a GPU job of its own)
    cpu_train_experiments: tuple[str, ...] = ()

    @property
    def train_threads(self) -> int:
        """CPU cores of the training job on each node."""
        return self.train.cpus_per_gpu * self.gpus_per_node

    def train_resource(self, gpu_value: Any, cpu_value: Any) -> Any:
        """A ``train`` resource for the profiles: ``gpu_value``, or, with :attr:`cpu_train_experiments`, a
        Python expression Snakemake evaluates per job that gives those experiments ``cpu_value``."""
        if not self.cpu_train_experiments:
            return gpu_value
        return f"({cpu_value}) if wildcards.experiment in {self.cpu_train_experiments!r} else ({gpu_value})"

    @property
    def gpu_request(self) -> str:
        """Value for ``--gpus`` / the ``gres`` count: ``[TYPE:]N`` GPUs per node."""
        return f"{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else str(self.gpus_per_node)


def quote(value: Any) -> str:
    """A string resource for Snakemake's resource parser (which evaluates values as Python)."""
    return repr(str(value))


def config_paths_from_argv(argv: Sequence[str]) -> list[Path]:
    """The ``--configfile(s)`` given on a Snakemake command line, resolved against ``--directory``."""
    paths: list[str] = []
    workdir = None
    collecting = False
    for arg in argv[1:]:
        if arg.startswith("-"):
            collecting = False
            name, eq, value = arg.partition("=")
            if name in ("--configfile", "--configfiles"):
                if eq:
                    paths.append(value)
                else:
                    collecting = True
            elif name in ("--directory", "-d") and eq:
                workdir = value
            elif name in ("--directory", "-d"):
                workdir = ""  # the next argument
            continue
        if workdir == "":
            workdir = arg
        elif collecting:
            paths.append(arg)
    base = Path(workdir) if workdir else Path()
    return [p if p.is_absolute() else base / p for p in map(Path, paths)] or [base / DEFAULT_CONFIG]


def find_config_files(argv: Sequence[str] | None = None) -> list[Path]:
    """``$LUNGSEG_CONFIG`` if set, else the ``--configfile`` arguments, else ``config/config.yaml``."""
    if os.environ.get(CONFIG_ENV):
        return [Path(os.environ[CONFIG_ENV])]
    return config_paths_from_argv(sys.argv if argv is None else argv)


def _require(section: dict[str, Any], key: str, kind: type, where: str, source: str) -> Any:
    if key not in section:
        raise ClusterConfigError(f"{source}: {where}.{key} is missing; add it (see config/config.yaml of lungseg)")
    value = section[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ClusterConfigError(f"{source}: {where}.{key} must be a positive integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ClusterConfigError(f"{source}: {where}.{key} must be a string (quote it), got {value!r}")
    return value


def settings_from_config(config: dict[str, Any], source: str = "config") -> ClusterSettings:
    """Validate ``config['cluster']`` (and read ``train.nproc_per_node``) into :class:`ClusterSettings`."""
    cluster = config.get("cluster")
    if not isinstance(cluster, dict):
        raise ClusterConfigError(f"{source} has no 'cluster' section; copy the one of lungseg's config/config.yaml "
                                 "and put your partition, account and GPU type names in it")
    names = {k: _require(cluster, k, str, "cluster", source) for k in _NAMES}
    sizes = {}
    for part, keys in _SIZES.items():
        section = cluster.get(part)
        if not isinstance(section, dict):
            raise ClusterConfigError(f"{source}: cluster.{part} must be a mapping with {', '.join(keys)}")
        sizes[part] = JobSize(**{k: _require(section, k, int, f"cluster.{part}", source) for k in keys})
    gpus = _require(config.get("train") or {}, "nproc_per_node", int, "train", source)
    for key in ("cpu_partition", "gpu_partition", "cloud_partition"):
        if not names[key]:
            raise ClusterConfigError(f"{source}: cluster.{key} is empty; name a partition of your cluster (sinfo -s)")
    return ClusterSettings(**names, train=sizes["train"], jobs=sizes["jobs"], gpus_per_node=gpus,
                           source=source, cpu_train_experiments=cpu_train_experiments(config))


def cpu_train_experiments(config: dict[str, Any]) -> tuple[str, ...]:
    """Experiments whose train job is a CPU job: ``mode: flower`` with ``federated.launcher: slurm``. An
    experiments section the workflow would refuse gives none here (the workflow names the error)."""
    if (config.get("federated") or {}).get("launcher", "local") != "slurm":
        return ()
    from lungseg.experiments import ExperimentError, resolve_experiments

    try:
        experiments = resolve_experiments(config)
    except (ExperimentError, KeyError, TypeError):
        return ()
    return tuple(name for name, settings in experiments.items() if settings.get("mode") == "flower")


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Recursive dict update, as Snakemake merges several config files."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def load_cluster_settings(paths: Sequence[os.PathLike[str] | str] | None = None) -> ClusterSettings:
    """Read the cluster settings from config file(s) (later files override earlier ones, as in Snakemake)."""
    files = [Path(p) for p in paths] if paths is not None else find_config_files()
    merged: dict[str, Any] = {}
    for path in files:
        if not path.is_file():
            raise ClusterConfigError(f"config file {path} not found (run from the workflow directory, "
                                     f"or point {CONFIG_ENV} at your config file)")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        _merge(merged, data)
    return settings_from_config(merged, source=", ".join(map(str, files)))
