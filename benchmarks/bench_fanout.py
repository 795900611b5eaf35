"""Fan-out cost of experiments x folds: per-job overhead against training time, and ``snakemake -n`` time.

1. ``fanout``: a workdir with the demo cohort at demo size (``config/config.yaml``: 8 cases of 48
   slices of 256 x 256; image_size 128, base 16, depth 4, batch 8, 2 threads), ``--epochs`` (2) instead
   of the demo's 10, ``--experiments`` x ``--folds`` (3 x 2) training jobs. First Snakemake runs the
   demo cohort, ingest, split and the settings files (untimed); then one timed ``snakemake --cores 2``
   trains the E*K models. Each job has 2 threads (train.threads), so the jobs run one at a time. Per job:

   - ``job_s``: the job's wall time (its Snakemake benchmark file, column ``s``: the whole shell
     command ``lungseg train-guard -- torchrun ... -m lungseg train ...``);
   - ``training_s``: training proper, the sum of the epochs' ``epoch_seconds`` (``metrics.csv``: the
     training steps and the validation pass of each epoch, data loading included);
   - ``overhead_s = job_s - training_s`` and ``overhead_pct = 100 * overhead_s / training_s`` (goal <= 10%),
     split with the log's timestamps into ``startup_s`` (job start to the log's ``training ...`` line:
     guard, torchrun, worker start, imports, process group, model build, opening the cases),
     ``epoch_saves_s`` (model / checkpoint / metrics writes between the epochs) and ``teardown_s``
     (``done`` line to job end: process group teardown, model copy, process exits). A job's start is
     its benchmark file's mtime minus ``job_s``.

   Snakemake's own cost: ``(snakemake wall - sum of job_s) / jobs``, and the gaps between one job's
   end and the next one's start. Pieces of the start-up are timed alone (best of 3): ``python -c pass``,
   ``lungseg --version``, ``import torch``, ``lungseg train --help`` (the worker's imports),
   ``lungseg train-guard -- true`` and ``torchrun --standalone ... -m lungseg --version`` (torchrun and
   an empty worker), wall and CPU seconds. ``first_epoch_excess_s`` (first epoch minus the later ones'
   mean) shows the warm-up inside training_s; ``overhead_pct_at_demo_epochs`` projects the ratio to
   the demo's 10 epochs (same overhead; the first epoch + 9 x the later epochs' mean).

2. ``dry_run``: ``snakemake -n`` (no target: the whole workflow) on a ``source: cases`` sheet with
   ``--dry-experiments`` x ``--dry-folds`` (3 x 5). Every case is a real series folder: per-file
   symbolic links to one small demo series (``--dry-slices`` slices of 64 x 64) and its lung label, so
   the DAG lists and stats ``--dry-slices`` slice files per case as it would on real data.

   (a) ``fresh``: an empty results folder (Snakemake then plans up to the split checkpoint: ingest,
       quarantine table, split), measured at ``--fresh-sizes`` up to the full ``--sheet-cases`` (1000).
   (b) ``after_split``: ``-n`` once ingest and split have really run (the whole plan: lung masks,
       E*K trainings, predictions, evaluations, report), at ``--split-sizes`` cases (one workdir, the
       sheet grown step by step, each step's new cases ingested), projected to ``--sheet-cases`` with
       least-squares fits t = a + b n and t = a + b n + c n^2 (both given; the quadratic is the one to
       believe when its c is clearly positive: on 2 cores the quadratic fit of 50..200 cases gave
       37.6 s at 1000, a real run at 1000 37.2 s, the linear one 23.7 s). A real 1000 (ingest ~0.5 s
       a case): ``--part dry-run --split-sizes 250 500 1000`` (about 15 minutes).

   Both parts record wall and CPU seconds (the CPU seconds of Snakemake, its jobs, each piece: what a
   shared machine does not inflate); the load average at start and end is in the output.

Writes ``benchmarks/results/fanout.json`` (or ``--out``). Run:
``.venv/bin/python benchmarks/bench_fanout.py`` (about 6 minutes on 2 idle cores, 12 on a busy machine;
``--quick``: smaller, about 3).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lungseg.docs_reference import machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
EXPERIMENTS = {"unet": {}, "dense_unet": {"arch": "dense_unet"}, "unet_lr": {"lr": 0.01}, "unet_b8": {"base_channels": 8}}
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def versions() -> dict:
    import snakemake
    import torch

    import lungseg

    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {"python": platform.python_version(), "snakemake": snakemake.__version__, "torch": torch.__version__,
            "lungseg": lungseg.__version__,
            "git": git.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; (result, wall seconds, CPU seconds of it and its waited-for descendants)."""
    c0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, **kwargs)
    return proc, time.perf_counter() - t0, children_cpu() - c0


def smk(workdir: Path, *args: str, log: Path | None = None) -> tuple[float, float]:
    """Run Snakemake on the repository's Snakefile in ``workdir``: (wall, CPU) seconds, output to ``log``.
    CPU seconds (Snakemake and its jobs) are what a shared machine does not inflate."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc, wall, cpu = timed(cmd, cwd=workdir)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return wall, cpu


def write_config(workdir: Path, changes: dict) -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))


def best_of(run, repeats: int) -> dict[str, float]:
    """{"wall_s", "cpu_s"}: the best of ``repeats`` calls of ``run() -> (wall, cpu)``, each separately."""
    wall, cpu = zip(*(run() for _ in range(repeats)))
    return {"wall_s": round(min(wall), 3), "cpu_s": round(min(cpu), 3)}


def best_cmd(cmd: list[str], repeats: int = 3) -> dict[str, float]:
    def run():
        proc, wall, cpu = timed(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        return wall, cpu
    return best_of(run, repeats)


def startup_pieces() -> dict[str, dict[str, float]]:
    """Pieces of a training job's start-up, each timed alone (best of 3)."""
    py = sys.executable
    pieces = {
        "python -c pass": [py, "-c", "pass"],
        "python -m lungseg --version (no torch)": [py, "-m", "lungseg", "--version"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "lungseg train --help (worker imports)": [py, "-m", "lungseg", "train", "--help"],
        "lungseg train-guard -- true": [str(BIN / "lungseg"), "train-guard", "--", "true"],
        "torchrun --standalone -m lungseg --version": [str(BIN / "torchrun"), "--standalone", "--nnodes=1",
                                                        "--nproc_per_node=1", "-m", "lungseg", "--version"],
    }
    return {name: best_cmd(cmd) for name, cmd in pieces.items()}


def log_times(path: Path) -> dict[str, float]:
    """Epoch seconds of the ``training ...`` and ``done`` lines of a training log."""
    found = {}
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if " training " in line and "train_start" not in found:
            found["train_start"] = stamp
        elif " done: " in line:
            found["done"] = stamp
    return found


def train_jobs(work: Path, names: list[str], folds: int, demo_epochs: int) -> tuple[list[dict], dict]:
    """Per train job: wall, training, overhead and its parts; and the jobs' first start, gaps, last end."""
    jobs = []
    for n in names:
        for k in range(folds):
            bench = work / f"results/benchmarks/train/{n}/{k}.tsv"
            with open(bench, newline="") as f:
                job_s = float(next(csv.DictReader(f, delimiter="\t"))["s"])
            job_end = bench.stat().st_mtime
            job_start = job_end - job_s
            with open(work / f"results/experiments/{n}/folds/{k}/metrics.csv", newline="") as f:
                epochs = [float(r["epoch_seconds"]) for r in csv.DictReader(f)]
            stamps = log_times(work / f"logs/train/{n}/{k}.log")
            training = sum(epochs)
            overhead = job_s - training
            steady = float(np.mean(epochs[1:])) if len(epochs) > 1 else epochs[0]
            at_demo = epochs[0] + steady * (demo_epochs - 1)  # the first epoch (warm-up) + steady ones
            job = {"experiment": n, "fold": k, "job_s": round(job_s, 2), "epoch_s": [round(e, 2) for e in epochs],
                   "training_s": round(training, 2), "overhead_s": round(overhead, 2),
                   "overhead_pct": round(100 * overhead / training, 1),
                   "first_epoch_excess_s": round(epochs[0] - steady, 2),
                   "overhead_pct_at_demo_epochs": round(100 * overhead / at_demo, 1),
                   "start": job_start, "end": job_end}
            if "train_start" in stamps and "done" in stamps:
                job.update(startup_s=round(stamps["train_start"] - job_start, 2),
                           epoch_saves_s=round(stamps["done"] - stamps["train_start"] - training, 2),
                           teardown_s=round(job_end - stamps["done"], 2))
            jobs.append(job)
    jobs.sort(key=lambda j: j["start"])
    timing = {"first_start": jobs[0]["start"], "last_end": max(j["end"] for j in jobs),
              "gaps": [round(b["start"] - a["end"], 2) for a, b in zip(jobs, jobs[1:])]}
    for j in jobs:
        j.pop("start"), j.pop("end")
    return jobs, timing


def fanout(work: Path, args: argparse.Namespace) -> dict:
    names = list(EXPERIMENTS)[: args.experiments]
    experiments = {"reference": names[0], **{n: EXPERIMENTS[n] for n in names}}
    write_config(work, {
        "demo": {"n_cases": args.cases, "slices": args.slices, "size": args.size},
        "train": {"epochs": args.epochs, "image_size": args.image_size, "base_channels": args.base_channels,
                  "depth": args.depth, "threads": args.threads},
        "split": {"folds": args.folds, "fractions": [0.8, 0.0, 0.2]},
        "experiments": experiments,
    })
    settings = [f"results/experiments/{n}/train_settings.json" for n in names]
    prepare, _ = smk(work, "--cores", str(args.cores), "results/split.tsv", *settings, log=work / "prepare.log")
    pieces = startup_pieces()  # on the machine as the jobs will find it
    models = [f"results/experiments/{n}/folds/{k}/model.pt" for n in names for k in range(args.folds)]
    start = time.time()
    wall, _ = smk(work, "--cores", str(args.cores), *models, log=work / "train.log")
    end = time.time()
    noop = best_of(lambda: smk(work, "-n", *models), 1)  # Snakemake start-up and DAG with nothing to do
    jobs, timing = train_jobs(work, names, args.folds, args.demo_epochs)
    means = {key: round(float(np.mean([j[key] for j in jobs if key in j])), 2)
             for key in ("job_s", "training_s", "overhead_s", "overhead_pct", "first_epoch_excess_s",
                         "overhead_pct_at_demo_epochs", "startup_s", "epoch_saves_s", "teardown_s")
             if any(key in j for j in jobs)}
    total_job = sum(j["job_s"] for j in jobs)
    return {
        "setup": {"demo_cases": args.cases, "slices": args.slices, "slice_size": args.size, "epochs": args.epochs,
                  "image_size": args.image_size, "base_channels": args.base_channels, "depth": args.depth,
                  "batch_size": 8, "experiments": experiments, "folds": args.folds, "train_jobs": len(jobs),
                  "cores": args.cores, "train_threads": args.threads,
                  "concurrency": ("one job at a time" if args.threads >= args.cores
                                  else f"{args.cores // args.threads} at a time")},
        "definitions": {
            "job_s": "Snakemake benchmark column s of the train job (the whole shell command)",
            "training_s": "sum of metrics.csv epoch_seconds (training steps + validation of every epoch)",
            "overhead_s": "job_s - training_s", "overhead_pct": "100 * overhead_s / training_s (goal <= 10)",
            "startup_s": "job start (benchmark mtime - job_s) to the log's 'training ...' line",
            "epoch_saves_s": "'training' line to 'done' line, less training_s (model/checkpoint/metrics writes)",
            "teardown_s": "'done' line to job end",
            "first_epoch_excess_s": "first epoch_s - mean of the later ones (warm-up, counted in training_s)",
            "overhead_pct_at_demo_epochs": f"projection to the demo's {args.demo_epochs} epochs: overhead_s / (first "
                                           f"epoch_s + {args.demo_epochs - 1} x mean of the later epoch_s)",
            "snakemake_per_job_s": "(timed snakemake wall - sum job_s) / jobs",
        },
        "prepare_s": round(prepare, 1),
        "jobs": jobs,
        "mean": means,
        "goal_overhead_pct": 10,
        "goal_met": means["overhead_pct"] <= 10,
        "goal_met_at_demo_epochs": means["overhead_pct_at_demo_epochs"] <= 10,
        "snakemake": {"wall_s": round(wall, 2), "sum_job_s": round(total_job, 2),
                      "per_job_s": round((wall - total_job) / len(jobs), 2),
                      "before_first_job_s": round(timing["first_start"] - start, 2),
                      "gaps_between_jobs_s": timing["gaps"],
                      "after_last_job_s": round(end - timing["last_end"], 2),
                      "noop_dry_run": noop},
        "startup_pieces": pieces,
    }


# ---------------------------------------------------------------- snakemake -n on a large sheet


def case_pool(root: Path, n_cases: int, slices: int) -> list[dict[str, str]]:
    """``n_cases`` series folders of per-file links to one small demo series (and its lung label)."""
    subprocess.run([str(BIN / "lungseg"), "demo-cohort", "--out", str(root / "source"), "--case", "src001",
                    "--slices", str(slices), "--size", "64", "--no-progress"], env=ENV, check=True, capture_output=True)
    src = root / "source/src001"
    files = sorted((src / "dicom").iterdir())
    rows = []
    for i in range(1, n_cases + 1):
        case = root / "cases" / f"c{i:04d}"
        (case / "dicom").mkdir(parents=True)
        for f in files:
            (case / "dicom" / f.name).symlink_to(f)
        (case / "lung.nii.gz").symlink_to(src / "labels/lung.nii.gz")
        rows.append({"case_id": f"c{i:04d}", "patient_id": f"p{i:04d}", "dicom": str(case / "dicom"),
                     "label_lung": str(case / "lung.nii.gz")})
    return rows


def write_sheet(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def dry_config(workdir: Path, args: argparse.Namespace) -> None:
    names = list(EXPERIMENTS)[: args.dry_experiments]
    write_config(workdir, {"source": "cases", "cases": "config/cases.tsv",
                           "split": {"folds": args.dry_folds, "fractions": [0.8, 0.0, 0.2]},
                           "experiments": {"reference": names[0], **{n: EXPERIMENTS[n] for n in names}}})


def fit(sizes: list[int], times: list[float], target: int) -> dict:
    n, t = np.asarray(sizes, float), np.asarray(times, float)
    out = {}
    for name, degree in (("linear", 1), ("quadratic", 2)):
        if len(n) <= degree:
            continue
        coef = np.polyfit(n, t, degree)  # highest power first
        pred = np.polyval(coef, n)
        out[name] = {"coefficients_high_to_low": [float(f"{c:.6g}") for c in coef],
                     "max_abs_residual_s": round(float(np.max(np.abs(pred - t))), 3),
                     f"projected_s_at_{target}": round(float(np.polyval(coef, target)), 1)}
    return out


def dry_run(work: Path, args: argparse.Namespace) -> dict:
    rows = case_pool(work, max(args.sheet_cases, *args.fresh_sizes, *args.split_sizes), args.dry_slices)
    fresh = {}
    for size in args.fresh_sizes:
        wd = work / f"fresh{size}"
        dry_config(wd, args)
        write_sheet(wd / "config/cases.tsv", rows[:size])
        fresh[size] = best_of(lambda wd=wd: smk(wd, "-n", log=wd / "dry.log"), args.dry_repeats)
    after, ingest = {}, {}
    wd = work / "split"
    dry_config(wd, args)
    for size in args.split_sizes:
        write_sheet(wd / "config/cases.tsv", rows[:size])
        ingest[size] = round(smk(wd, "--cores", str(args.cores), "results/split.tsv", log=wd / f"ingest{size}.log")[0], 1)
        after[size] = best_of(lambda size=size: smk(wd, "-n", log=wd / f"dry{size}.log"), args.dry_repeats)
    planned = {}
    for size in args.split_sizes:
        m = re.search(r"^total\s+(\d+)", (wd / f"dry{size}.log").read_text(), re.M)
        planned[size] = int(m.group(1)) if m else None
    m = re.search(r"^total\s+(\d+)", (work / f"fresh{args.fresh_sizes[-1]}/dry.log").read_text(), re.M)
    return {
        "setup": {"experiments": args.dry_experiments, "folds": args.dry_folds, "slices_per_case": args.dry_slices,
                  "slice_size": 64, "series": "per-file symbolic links to one demo series + its lung label",
                  "target": "none (rule all)", "repeats": f"best of {args.dry_repeats}"},
        "fresh": fresh,
        "fresh_planned_jobs_at_largest": int(m.group(1)) if m else None,
        "fresh_fit": {k: fit(list(fresh), [t[k] for t in fresh.values()], args.sheet_cases) for k in ("wall_s", "cpu_s")},
        "after_split": after,
        "after_split_planned_jobs": planned,
        "after_split_ingest_run_s": ingest,
        "after_split_fit": {k: fit(list(after), [t[k] for t in after.values()], args.sheet_cases)
                            for k in ("wall_s", "cpu_s")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 demo cases of 24 slices, 1 epoch, "
                        "2 x 2 jobs; fresh -n at 50/100; after-split -n at 10/15/20 cases")
    parser.add_argument("--part", choices=["all", "fanout", "dry-run"], default="all")
    g = parser.add_argument_group("1. fan-out overhead (demo cohort)")
    g.add_argument("--cases", type=int, default=8, help="demo cases (demo: 8)")
    g.add_argument("--slices", type=int, default=48, help="slices per demo case (demo: 48)")
    g.add_argument("--size", type=int, default=256, help="demo slice size (demo: 256)")
    g.add_argument("--epochs", type=int, default=2, help="epochs per training job (demo: 10)")
    g.add_argument("--demo-epochs", type=int, default=10, help="epochs the overhead is also projected to")
    g.add_argument("--image-size", type=int, default=128)
    g.add_argument("--base-channels", type=int, default=16)
    g.add_argument("--depth", type=int, default=4)
    g.add_argument("--experiments", type=int, default=3, choices=range(1, len(EXPERIMENTS) + 1))
    g.add_argument("--folds", type=int, default=2)
    g.add_argument("--threads", type=int, default=2, help="train.threads (= --cores: one job at a time)")
    g.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    d = parser.add_argument_group("2. snakemake -n on a source: cases sheet")
    d.add_argument("--sheet-cases", type=int, default=1000, help="sheet size the times are given / projected for")
    d.add_argument("--dry-experiments", type=int, default=3, choices=range(1, len(EXPERIMENTS) + 1))
    d.add_argument("--dry-folds", type=int, default=5)
    d.add_argument("--dry-slices", type=int, default=48, help="slice files per case")
    d.add_argument("--fresh-sizes", type=int, nargs="+", default=[250, 500, 1000])
    d.add_argument("--split-sizes", type=int, nargs="+", default=[50, 100, 150, 200],
                   help="cases really ingested and split (the sheet grows step by step in one workdir)")
    d.add_argument("--dry-repeats", type=int, default=2, help="best of this many -n per size (wall and CPU apart)")
    parser.add_argument("--workdir", type=Path, help="keep the workdirs here (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fanout.json")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.slices, args.epochs, args.experiments = 4, 24, 1, 2
        args.fresh_sizes, args.split_sizes, args.dry_repeats = [50, 100], [10, 15, 20], 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_fanout_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "fan-out of experiments x folds: per-job overhead vs training; snakemake -n time",
                    "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": machine(), "versions": versions(),
                    "load_average_at_start": list(os.getloadavg())}
    try:
        if args.part in ("all", "fanout"):
            result["fanout"] = fanout(work / "fanout", args)
            f = result["fanout"]
            print(f"fan-out: {len(f['jobs'])} jobs, mean job {f['mean']['job_s']} s, training {f['mean']['training_s']} s, "
                  f"overhead {f['mean']['overhead_s']} s = {f['mean']['overhead_pct']}% (goal <= 10%; "
                  f"{f['mean']['overhead_pct_at_demo_epochs']}% at {args.demo_epochs} epochs); "
                  f"snakemake {f['snakemake']['per_job_s']} s per job", flush=True)
        if args.part in ("all", "dry-run"):
            result["dry_run"] = dry_run(work / "dry", args)
            d = result["dry_run"]
            fits = d["after_split_fit"]["wall_s"]
            print(f"snakemake -n, wall s by cases: fresh {({n: t['wall_s'] for n, t in d['fresh'].items()})}; after split "
                  f"{({n: t['wall_s'] for n, t in d['after_split'].items()})}, projected to {args.sheet_cases}: "
                  + ", ".join(f"{k} {v[f'projected_s_at_{args.sheet_cases}']}" for k, v in fits.items()), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_average_at_end"] = list(os.getloadavg())
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
