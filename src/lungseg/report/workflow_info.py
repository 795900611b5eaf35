"""Workflow pages of the report: the run's configuration, software versions, run times from benchmark files."""

from __future__ import annotations

import csv
import importlib.metadata
import math
import platform
import sys
from pathlib import Path

import numpy as np
import yaml

from lungseg.report import html

PACKAGES = ("lungseg", "snakemake", "torch", "torchvision", "numpy", "scipy", "SimpleITK", "scikit-image",
            "pydicom", "h5py", "matplotlib", "PyYAML", "jsonschema", "tqdm")


def config_html(config: dict) -> str:
    return html.page("Configuration", html.paragraph("The configuration this run used (after command-line overrides)."),
                     html.pre(yaml.safe_dump(config, sort_keys=False)))


def package_versions(packages: tuple[str, ...] = PACKAGES) -> list[tuple[str, str]]:
    out = []
    for name in packages:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def versions_html() -> str:
    import torch

    system = [
        ("Python", sys.version.split()[0]),
        ("platform", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("torch threads", str(torch.get_num_threads())),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    return html.page("Software versions", html.table(["software", "version"], system + package_versions(),
                                                     caption="Environment of the report job"))


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "NA", "-") else math.nan
    except ValueError:
        return math.nan


def read_benchmarks(folder: Path) -> dict[str, list[dict[str, float]]]:
    """rule -> one dict per job (``job``, ``s``, ``cpu_time``, ``max_rss`` in MB) from ``<folder>/<rule>/*.tsv``."""
    runs: dict[str, list[dict[str, float]]] = {}
    for path in sorted(Path(folder).glob("*/*.tsv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                runs.setdefault(path.parent.name, []).append(
                    {"job": path.stem, "s": _float(row.get("s")), "cpu_time": _float(row.get("cpu_time")),
                     "max_rss": _float(row.get("max_rss"))})
    return runs


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def runtime_rows(runs: dict[str, list[dict[str, float]]]) -> list[list[object]]:
    """Per rule: jobs, total / mean / max wall time (s), slowest job, total CPU time (s), peak memory (MB)."""
    rows = []
    for rule, jobs in sorted(runs.items(), key=lambda kv: -np.nansum([j["s"] for j in kv[1]])):
        wall = [j["s"] for j in jobs]
        slowest = max(jobs, key=lambda j: j["s"] if math.isfinite(j["s"]) else -1)
        rows.append([rule, len(jobs), float(np.nansum(wall)), float(np.nanmean(wall)), _nanmax(wall), slowest["job"],
                     float(np.nansum([j["cpu_time"] for j in jobs])), _nanmax([j["max_rss"] for j in jobs])])
    return rows


def runtimes_html(folder: Path) -> str:
    rows = runtime_rows(read_benchmarks(folder))
    total = sum(r[2] for r in rows)
    headers = ["rule", "jobs", "total wall (s)", "mean (s)", "max (s)", "slowest job", "CPU time (s)", "peak RSS (MB)"]
    return html.page(
        "Run times",
        html.paragraph(f"From the Snakemake benchmark files under {Path(folder).name}/<rule>/ of every job that had "
                       f"finished when this table was made: {sum(r[1] for r in rows)} jobs, {total:.1f} s of wall time "
                       "in total (summed over jobs; parallel jobs overlap). Sorted by total wall time."),
        html.table(headers, rows, caption="Run time per rule"),
    )
