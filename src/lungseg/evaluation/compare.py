"""``lungseg compare``: one honest comparison of the experiments (and the baselines) on the same test cases.

Inputs: the per-case metrics CSV of the test split (``lungseg aggregate --csv``: one row per case and
method; methods are the experiments plus baselines such as ``classical_<lung-mask method>`` and
``all_background``) and
a plan (JSON, given inline or as a file)::

    {"reference": "unet",
     "experiments": {"unet": {"folds": 1, "gpus_per_job": 0,
                              "train_benchmarks": ["results/benchmarks/train/unet/0.tsv"], "oof_metrics": null},
                     "dense_unet": {"folds": 5, "train_benchmarks": [...], "models": [...],
                                    "oof_metrics": "results/experiments/dense_unet/oof/metrics.csv"}}}

``models`` (optional, one per train benchmark): the fold models, each recording the GPUs its training
ran on; they then give each job's GPU count instead of ``gpus_per_job`` (the workflow's plan uses them,
so the plan does not depend on where the jobs ran).

Every method of the CSV that the plan does not name is a baseline. Output, per method:

* per metric: mean over the test cases with a seeded percentile-bootstrap 95% CI (cases resampled),
  as ``lungseg aggregate`` computes it (NaNs, e.g. HD95 of an empty mask, skipped and counted);
* per experiment other than the reference, per metric: the **paired** difference experiment minus
  reference over the cases both have a value for: mean, paired bootstrap 95% CI (cases resampled with
  the same indices for both methods), the two-sided Wilcoxon signed-rank p-value
  (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: zero differences are dropped; None with fewer
  than 2 pairs or all differences zero) and the number of pairs (cases of only one method, or with a
  NaN in either, are left out and counted);
* per experiment: its folds, the cross-validated Dice (out-of-fold cases of ``oof_metrics``: mean per
  fold and pooled over all out-of-fold cases with a bootstrap CI), the training wall time (sum of the
  ``s`` column of its train jobs' Snakemake benchmark files) and GPU-hours (wall hours x the job's GPUs,
  summed over the jobs).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import scipy
from scipy import stats

from lungseg.atomic import write_text_atomic
from lungseg.evaluation.aggregate import _metric_stats
from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES, paired_bootstrap_ci
from lungseg.evaluation.metrics import METRICS
from lungseg.experiments import BASELINE_NAMES, BASELINE_PREFIXES
from lungseg.ingest.errors import IngestError

#: scipy.stats.wilcoxon settings (zero differences dropped, the classic signed-rank test)
WILCOXON = {"alternative": "two-sided", "zero_method": "wilcox"}
PLAN_FIX = ('give --plan a JSON object {"reference": NAME, "experiments": {NAME: {"folds": K, "gpus_per_job": G, '
            '"train_benchmarks": [TSV, ...], "oof_metrics": CSV or null}}} (inline or as a file)')
CSV_COLUMNS = (
    "method", "kind", "metric", "n", "n_undefined", "mean", "std", "median", "ci_low", "ci_high",
    "diff_n_pairs", "diff_n_unpaired", "diff_n_undefined", "diff_mean", "diff_ci_low", "diff_ci_high", "wilcoxon_p",
    "folds", "cv_dice", "cv_dice_ci_low", "cv_dice_ci_high", "cv_n", "train_jobs", "train_wall_s", "gpus_per_job",
    "gpu_hours",
)


# ---------------------------------------------------------------- inputs


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "NA", "nan", "-") else math.nan
    except ValueError:
        return math.nan


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``lungseg aggregate`` CSV: ``case`` (from ``case_id``), ``method``, ``fold`` (int, when the
    CSV has it) and every metric column as float (blank = NaN)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "metrics table not found", "give the metrics.csv written by `lungseg aggregate`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        case_column = "case_id" if "case_id" in fields else "case"
        if case_column not in fields or "method" not in fields:
            raise IngestError(path, f"has no case_id and method columns (columns {fields})",
                              "give the metrics.csv written by `lungseg aggregate`")
        rows = []
        for raw in reader:
            row = {"case": raw[case_column], "method": raw["method"],
                   **{m: _number(raw[m]) for m in METRICS if m in fields}}
            if raw.get("fold") not in (None, ""):
                row["fold"] = int(float(raw["fold"]))
            rows.append(row)
    return rows


def load_plan(spec: str) -> dict:
    """The plan from a JSON string (starting with ``{``) or a JSON file, checked and with defaults filled in."""
    text, where = spec, "--plan"
    if not spec.lstrip().startswith("{"):
        where = spec
        try:
            text = Path(spec).read_text()
        except OSError as exc:
            raise IngestError(spec, f"cannot be read ({exc.strerror or exc})", PLAN_FIX) from exc
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(where, f"is not valid JSON ({exc})", PLAN_FIX) from exc
    experiments = plan.get("experiments") if isinstance(plan, dict) else None
    if not isinstance(experiments, dict) or not experiments:
        raise IngestError(where, "names no experiments", PLAN_FIX)
    if plan.get("reference") not in experiments:
        raise IngestError(where, f"reference {plan.get('reference')!r} is not one of its experiments {sorted(experiments)}",
                          PLAN_FIX)
    checked = {}
    for name, spec_ in experiments.items():
        if not isinstance(spec_, dict):
            raise IngestError(where, f"experiment {name!r} is not an object", PLAN_FIX)
        folds, gpus = spec_.get("folds", 1), spec_.get("gpus_per_job", 0)
        benchmarks = spec_.get("train_benchmarks") or []
        oof = spec_.get("oof_metrics")
        models = spec_.get("models") or []
        if isinstance(models, str) or not all(isinstance(m, str) for m in models) or (
                models and len(models) != len(benchmarks)):
            raise IngestError(where, f"experiment {name!r}: models must be a list of model files, one per "
                                     "train benchmark", PLAN_FIX)
        if not isinstance(folds, int) or folds < 1 or not isinstance(gpus, (int, float)) or gpus < 0:
            raise IngestError(where, f"experiment {name!r} needs folds >= 1 and gpus_per_job >= 0 "
                                     f"(got {folds!r}, {gpus!r})", PLAN_FIX)
        if isinstance(benchmarks, str) or not all(isinstance(b, str) for b in benchmarks):
            raise IngestError(where, f"experiment {name!r}: train_benchmarks must be a list of paths", PLAN_FIX)
        if oof is not None and not isinstance(oof, str):
            raise IngestError(where, f"experiment {name!r}: oof_metrics must be a path or null", PLAN_FIX)
        checked[name] = {"folds": folds, "gpus_per_job": gpus, "train_benchmarks": list(benchmarks), "oof_metrics": oof,
                         "models": list(models)}
    return {"reference": plan["reference"], "experiments": checked}


def read_benchmark(path: Path) -> list[float]:
    """Wall seconds (column ``s``) of each row of a Snakemake benchmark TSV (several rows with ``repeat()``)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "training benchmark file not found",
                          "train the experiment first (Snakemake writes it), or fix train_benchmarks in the plan")
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if "s" not in (reader.fieldnames or []):
            raise IngestError(path, f"has no 's' column (columns {reader.fieldnames})",
                              "give a Snakemake benchmark file (header s, h:m:s, max_rss, ...)")
        return [_number(row.get("s")) for row in reader]


# ---------------------------------------------------------------- statistics


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def case_values(rows: list[dict], method: str, metric: str) -> dict[str, float]:
    """case -> value of ``metric`` for ``method`` (NaN kept)."""
    return {r["case"]: r.get(metric, math.nan) for r in rows if r["method"] == method}


def wilcoxon_p(differences: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (:data:`WILCOXON`); None with fewer than
    2 pairs or when every difference is zero (no test possible)."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or not np.any(d != 0):
        return None
    return float(stats.wilcoxon(d, **WILCOXON).pvalue)


def paired_difference(experiment: dict[str, float], reference: dict[str, float], samples: int = DEFAULT_SAMPLES,
                      seed: int = 0) -> dict:
    """Experiment minus reference over the cases both have a finite value for (see the module docstring)."""
    common = sorted(set(experiment) & set(reference))
    x = np.asarray([experiment[c] for c in common], dtype=float)
    y = np.asarray([reference[c] for c in common], dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    d = x - y
    ci = paired_bootstrap_ci(x, y, samples=samples, seed=seed)
    return {
        "n_pairs": int(d.size),
        "n_unpaired": len(set(experiment) ^ set(reference)),
        "n_undefined": int((~finite).sum()),
        "mean": float(d.mean()) if d.size else None,
        "ci95": list(ci) if ci else None,
        "wilcoxon_p": wilcoxon_p(d),
    }


def cross_validation(path: Path, experiment: str, folds: int, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict:
    """Out-of-fold Dice of ``experiment``: per fold (mean over its held-out cases) and pooled over all of them.

    Rows are those of method ``experiment``; a table without them but with exactly one method other than
    the baselines (``all_background``, ``classical_*``) uses that one.
    """
    rows = read_metrics(path)
    if rows and not all("fold" in r for r in rows):
        raise IngestError(path, "has rows without a fold", "aggregate out-of-fold metrics of `lungseg evaluate --fold K`")
    methods = {r["method"] for r in rows}
    method = experiment
    if experiment not in methods:
        candidates = sorted(m for m in methods if not is_baseline(m))
        if len(candidates) != 1:
            raise IngestError(path, f"has no rows of method {experiment!r} (it has {sorted(methods)})",
                              f"evaluate the out-of-fold predictions as --pred {experiment}=PATH")
        method = candidates[0]
    rows = [r for r in rows if r["method"] == method]
    per_fold = []
    for fold in sorted({r["fold"] for r in rows}):
        values = np.asarray([r["dice"] for r in rows if r["fold"] == fold], dtype=float)
        finite = values[np.isfinite(values)]
        per_fold.append({"fold": fold, "dice": float(finite.mean()) if finite.size else None, "n": int(finite.size),
                         "n_undefined": int(values.size - finite.size)})
    pooled = _metric_stats(np.asarray([r["dice"] for r in rows], dtype=float), samples, seed)
    found = {f["fold"] for f in per_fold}
    return {"source": str(path), "method": method, "folds": per_fold, "missing_folds": sorted(set(range(folds)) - found),
            "pooled": {k: pooled[k] for k in ("mean", "ci95", "n", "n_undefined")}}


def model_gpus(path: str | Path) -> int:
    """The GPUs a ``model.pt`` was trained on, as its training recorded them (0: CPU, or an older file)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("gpus", 0)) if isinstance(state, dict) else 0


def training_cost(paths: list[str], gpus_per_job: float | list[float]) -> dict:
    """Jobs, wall seconds (sum of ``s``) and GPU-hours (sum over jobs of wall hours x the job's GPUs:
    one figure for every job, or one per job in the order of ``paths``)."""
    jobs = [read_benchmark(Path(p)) for p in paths]
    gpus = list(gpus_per_job) if isinstance(gpus_per_job, list) else [gpus_per_job] * len(jobs)
    seconds = [s for job in jobs for s in job]
    finite = [s for s in seconds if math.isfinite(s)]
    wall = float(sum(finite)) if finite else None
    gpu_seconds = [s * g for job, g in zip(jobs, gpus) for s in job if math.isfinite(s)]
    return {
        "jobs": len(jobs),
        "wall_s": wall,
        "gpus_per_job": gpus[0] if len(set(gpus)) == 1 else gpus,
        "gpu_hours": float(sum(gpu_seconds) / 3600.0) if finite else None,
        "n_undefined": len(seconds) - len(finite),
        "benchmarks": [str(p) for p in paths],
    }


def is_baseline(method: str) -> bool:
    """A method that is not a trained experiment by its name (the all-background and classical lung masks,
    ``classical_*``, or ``lungmask_*`` in metrics tables written before that name)."""
    return method in BASELINE_NAMES or method.startswith(BASELINE_PREFIXES)


def compare(rows: list[dict], plan: dict, samples: int = DEFAULT_SAMPLES, seed: int = 0, source: str = "") -> dict:
    """The comparison (see the module docstring) of the test rows under ``plan`` (from :func:`load_plan`)."""
    reference, experiments = plan["reference"], plan["experiments"]
    present = {r["method"] for r in rows}
    missing = [e for e in experiments if e not in present]
    if missing:
        raise IngestError(source or "metrics table", f"has no test rows of experiment(s) {missing} (it has {sorted(present)})",
                          "evaluate every experiment's test predictions and aggregate them into one table")
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    if "dice" not in metrics:
        raise IngestError(source or "metrics table", "has no dice column", "give the metrics.csv of `lungseg aggregate`")
    order = [reference, *(e for e in experiments if e != reference), *sorted(present - set(experiments))]
    methods = {}
    for method in order:
        subset = [r for r in rows if r["method"] == method]
        cases = [r["case"] for r in subset]
        if len(set(cases)) != len(cases):
            duplicate = sorted({c for c in cases if cases.count(c) > 1})[0]
            raise IngestError(source or "metrics table", f"has several rows of case {duplicate!r} for method {method!r}",
                              "compare one label at a time (one row per case and method)")
        entry: dict = {
            "kind": "reference" if method == reference else "experiment" if method in experiments else "baseline",
            "n_cases": len(subset),
            "metrics": {m: _metric_stats(np.asarray([r.get(m, math.nan) for r in subset], dtype=float), samples, seed)
                        for m in metrics},
        }
        if method in experiments:
            spec = experiments[method]
            entry["difference"] = None if method == reference else {
                m: paired_difference(case_values(rows, method, m), case_values(rows, reference, m), samples, seed)
                for m in metrics}
            entry["folds"] = spec["folds"]
            entry["cross_validation"] = (cross_validation(Path(spec["oof_metrics"]), method, spec["folds"], samples, seed)
                                         if spec["oof_metrics"] else None)
            gpus = [model_gpus(m) for m in spec["models"]] if spec["models"] else spec["gpus_per_job"]
            entry["training"] = training_cost(spec["train_benchmarks"], gpus)
        methods[method] = entry
    return {
        "reference": reference,
        "metrics": metrics,
        "n_cases": len({r["case"] for r in rows}),
        "bootstrap": {"samples": samples, "seed": seed, "level": 0.95, "method": "percentile, cases resampled",
                      "paired": "cases resampled with the same indices for both methods"},
        "difference": "experiment minus reference, over the cases both have",
        "wilcoxon": {"test": "scipy.stats.wilcoxon", **WILCOXON, "scipy": scipy.__version__},
        "methods": methods,
    }


# ---------------------------------------------------------------- outputs


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def comparison_rows(result: dict) -> list[dict]:
    """One row per method and metric with the columns of :data:`CSV_COLUMNS`."""
    out = []
    for method, entry in result["methods"].items():
        cv = (entry.get("cross_validation") or {}).get("pooled") or {}
        training = entry.get("training") or {}
        for metric in result["metrics"]:
            s = entry["metrics"][metric]
            d = (entry.get("difference") or {}).get(metric) or {}
            ci, d_ci, cv_ci = s["ci95"] or [None, None], d.get("ci95") or [None, None], cv.get("ci95") or [None, None]
            out.append({
                "method": method, "kind": entry["kind"], "metric": metric, "n": s["n"], "n_undefined": s["n_undefined"],
                "mean": s["mean"], "std": s["std"], "median": s["median"], "ci_low": ci[0], "ci_high": ci[1],
                "diff_n_pairs": d.get("n_pairs"), "diff_n_unpaired": d.get("n_unpaired"),
                "diff_n_undefined": d.get("n_undefined"), "diff_mean": d.get("mean"), "diff_ci_low": d_ci[0],
                "diff_ci_high": d_ci[1], "wilcoxon_p": d.get("wilcoxon_p"), "folds": entry.get("folds"),
                "cv_dice": cv.get("mean"), "cv_dice_ci_low": cv_ci[0], "cv_dice_ci_high": cv_ci[1], "cv_n": cv.get("n"),
                "train_jobs": training.get("jobs"), "train_wall_s": training.get("wall_s"),
                "gpus_per_job": training.get("gpus_per_job"), "gpu_hours": training.get("gpu_hours"),
            })
    return out


def to_csv(result: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in comparison_rows(result):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", type=Path, help="per-case metrics CSV of the test cases (`lungseg aggregate --csv`)")
    parser.add_argument("--plan", required=True, metavar="FILE_OR_JSON",
                        help='the experiments as JSON (inline, starting with "{", or a file): {"reference": NAME, '
                             '"experiments": {NAME: {"folds": K, "gpus_per_job": G, "train_benchmarks": [TSV, ...], '
                             '"oof_metrics": CSV or null}}}; methods of the CSV it does not name are baselines')
    parser.add_argument("--csv", type=Path, required=True, help="comparison table: one row per method and metric")
    parser.add_argument("--json", type=Path, required=True, help="the full comparison (per-fold CV Dice included)")
    parser.add_argument("--bootstrap-samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"bootstrap resamples for the 95%% CIs (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def _fmt(value: float | None, digits: int = 4, sign: str = "") -> str:
    return "undefined" if value is None else f"{value:{sign}.{digits}f}"


def run(args: argparse.Namespace) -> int:
    if args.bootstrap_samples < 1:
        raise SystemExit("lungseg compare: error: --bootstrap-samples must be >= 1")
    plan = load_plan(args.plan)
    result = compare(read_metrics(args.metrics), plan, samples=args.bootstrap_samples, seed=args.seed,
                     source=str(args.metrics))
    write_text_atomic(args.csv, to_csv(result))
    write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    for method, entry in result["methods"].items():
        dice = entry["metrics"]["dice"]
        line = f"{method} ({entry['kind']}): mean Dice {_fmt(dice['mean'])} over {dice['n']} case(s)"
        diff = (entry.get("difference") or {}).get("dice")
        if diff:
            p = "undefined" if diff["wilcoxon_p"] is None else f"{diff['wilcoxon_p']:.3g}"
            line += f"; vs {result['reference']}: {_fmt(diff['mean'], sign='+')} over {diff['n_pairs']} pair(s), p = {p}"
        print(line)
    return 0
