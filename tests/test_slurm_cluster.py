"""Against a real SLURM (slurmctld, slurmd, slurmdbd): the demo DAG through `--profile profiles/slurm`,
`lungseg sweep` through submitit, and `srun torchrun` with c10d rendezvous.

Skipped with the reason when no SLURM answers here (CI starts a single-node one in .ci/run from
../shared/tools/local-slurm and sets LUNGSEG_SLURM_TESTS=required, which turns a skip into a failure).
Every command is bounded in time; Snakemake's SLURM plugin can wait forever on a lost job.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_sweep import TINY_TRAIN, write_tiny_cases

pytestmark = pytest.mark.slow
REQUIRED = os.environ.get("LUNGSEG_SLURM_TESTS") == "required"
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: .*?/rule_([A-Za-z0-9_]+)/")
EXPERIMENTS = ["unet", "dense_unet"]  # config/config.yaml's experiments
FOLDS = 2  # cross-validation folds of the cluster test config: experiments x folds training jobs


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=1)
def slurm_unavailable() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    missing = [c for c in ("sbatch", "sacct", "scontrol", "srun", "sinfo") if shutil.which(c) is None]
    if missing:
        return f"SLURM client commands not found: {', '.join(missing)}"
    try:
        ping = _run("scontrol", "ping")
        if " is UP" not in ping.stdout:
            said = (ping.stdout.strip() or ping.stderr.strip() or "no answer").splitlines()[0]
            return f"no SLURM controller answers (scontrol ping: {said})"
        acct = _run("sacct", "-n", "-X", "-S", "now-1minutes")
        if acct.returncode != 0:
            return f"sacct does not work (no slurmdbd?): {acct.stderr.strip()}"
        parts = set(_run("sinfo", "-h", "-o", "%R").stdout.split())
        if not {"cpu", "gpu"} <= parts:
            return f"partitions cpu and gpu are needed, this cluster has {sorted(parts)}"
        if gpus_per_node() < 1:
            return "no node of partition gpu offers GRES gpu"
    except subprocess.TimeoutExpired as exc:
        return f"SLURM did not answer within {exc.timeout} s ({' '.join(exc.cmd)})"
    return None


def gpus_per_node() -> int:
    gres = _run("sinfo", "-h", "-p", "gpu", "-o", "%G").stdout
    counts = [int(m) for m in re.findall(r"gpu(?::[A-Za-z0-9_.]+)?:(\d+)", gres)]
    return max(counts, default=0)


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_unavailable()
    if reason and REQUIRED:
        pytest.fail(f"LUNGSEG_SLURM_TESTS=required but {reason}")
    if reason:
        pytest.skip(f"{reason} (start one with ../shared/tools/local-slurm/setup-local-slurm.sh, as .ci/run does)")


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """JobID -> Partition, State, SubmitLine (the sbatch command line, as accounted by slurmdbd)."""
    proc = _run("sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", "JobID,Partition,State,SubmitLine%4000")
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        job_id, partition, state, submit = line.split("|", 3)
        rows[job_id] = {"partition": partition, "state": state, "submit": submit}
    return rows


def scontrol_job(job_id: str) -> str:
    return _run("scontrol", "show", "job", "-o", job_id).stdout


def cluster_test_config(workdir: Path, nproc: int) -> Path:
    """The demo config, tiny, for a 2-core node: what a site-specific config for the CI machine says."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"].update(n_cases=3, slices=16, size=96)
    config["train"].update(epochs=1, image_size=64, base_channels=8, depth=3, batch_size=8,
                           nproc_per_node=nproc, threads=nproc)
    config["predict"]["threads"] = 1
    config["split"].update(folds=FOLDS, fractions=[0.6, 0.0, 0.4])
    # the scaling study (workflow/rules/scaling.smk): as small as allowed
    config["scaling"].update(enabled=True, epochs=1, devices=sorted({1, nproc}))
    config["cluster"].update(account="", cpu_partition="cpu", gpu_partition="gpu", gpu_type="",
                             train={"nodes": 1, "cpus_per_gpu": 1, "mem_mb": 3000, "runtime": 20},
                             jobs={"mem_mb": 1500, "runtime": 20})
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    path = workdir / "config/config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run("scancel", *job_ids)


@pytest.fixture(scope="module")
def dag_run(slurm, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict[str, list[str]]]:
    """The tiny demo DAG through `snakemake --profile profiles/slurm` (plus a faster first status check)."""
    workdir = tmp_path_factory.mktemp("slurm_dag")
    cluster_test_config(workdir, nproc=min(2, gpus_per_node()))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("LUNGSEG_CONFIG", None)  # the profile reads ./config/config.yaml, as on a cluster
    cmd = ["timeout", "-s", "KILL", "900", sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--profile", str(REPO / "profiles/slurm"),
           "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=960)
    jobs: dict[str, list[str]] = {}
    for job_id, rule in SUBMITTED.findall(proc.stdout + proc.stderr):
        jobs.setdefault(rule, []).append(job_id)
    if proc.returncode != 0:
        cancel([j for ids in jobs.values() for j in ids])
        raise AssertionError(f"snakemake --profile profiles/slurm failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return workdir, proc, jobs


def test_demo_dag_completes_through_sbatch(dag_run) -> None:
    workdir, proc, jobs = dag_run
    for rule in ("demo_case", "ingest", "lung_mask", "split", "train", "predict", "evaluate", "aggregate"):
        assert rule in jobs, f"rule {rule} was not submitted through sbatch: {sorted(jobs)}"
    # every experiment and fold is a training job of its own (config/config.yaml: two experiments; 2 folds here)
    assert len(jobs["ingest"]) == 3 and len(jobs["train"]) == len(EXPERIMENTS) * FOLDS
    accounted = sacct([j for ids in jobs.values() for j in ids])
    assert {row["state"] for row in accounted.values()} == {"COMPLETED"}, accounted
    summary = workdir / "results/metrics/summary.json"
    assert summary.is_file() and "unet" in summary.read_text()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n"],
                          cwd=workdir, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    assert "Nothing to be done" in done.stdout + done.stderr


def test_train_ran_on_gpu_partition_with_gpus(dag_run) -> None:
    workdir, _, jobs = dag_run
    nproc = min(2, gpus_per_node())
    rows = sacct(jobs["train"])
    assert len(rows) == len(EXPERIMENTS) * FOLDS, rows
    for job_id, row in rows.items():
        assert row["partition"] == "gpu", row
        assert f"--gpus={nproc}" in row["submit"] and "--cpus-per-gpu=1" in row["submit"], row["submit"]
        assert "--comment rule_train" in row["submit"] and "--requeue" in row["submit"]
        record = scontrol_job(job_id)  # still known to slurmctld (MinJobAge): what SLURM allocated
        if record:
            assert f"TresPerJob=gres:gpu:{nproc}" in record or f"gres/gpu={nproc}" in record, record
    for experiment in EXPERIMENTS:
        for fold in range(FOLDS):
            log = (workdir / "logs/train" / experiment / f"{fold}.log").read_text()
            assert f"{nproc} process(es)" in log  # torchrun started one process per requested GPU


#: rules that train, and so go to the GPU partition
GPU_RULES = {"train", "scaling_run"}


def test_light_jobs_ran_on_cpu_partition(dag_run) -> None:
    _, _, jobs = dag_run
    for rule in ("predict", "evaluate", "ingest", "lung_mask", "aggregate"):
        assert rule in jobs, sorted(jobs)
    light = [j for rule, ids in jobs.items() if rule not in GPU_RULES for j in ids]
    rows = sacct(light)
    assert {rows[j]["partition"] for j in light} == {"cpu"}, rows
    assert all("--gpus" not in rows[j]["submit"] for j in light)


def test_scaling_study_ran_on_gpus(dag_run) -> None:
    _, _, jobs = dag_run
    # the cluster test config enables the scaling study: its runs missing from the DAG is a failure, not a skip
    assert "scaling_run" in jobs, f"no scaling_run job was submitted through sbatch: {sorted(jobs)}"
    # one GPU job per run: single-1, and ddp-N / fedavg-N for N = 2 where a node has 2 GPUs
    nproc = min(2, gpus_per_node())
    assert len(jobs["scaling_run"]) == (3 if nproc > 1 else 1), jobs["scaling_run"]
    rows = sacct(jobs["scaling_run"])
    for row in rows.values():
        assert row["partition"] == "gpu" and "--gpus=" in row["submit"], row
    assert sorted(re.search(r"--gpus=(?:\w+:)?(\d+)", r["submit"]).group(1) for r in rows.values()) == (
        ["1", "2", "2"] if nproc > 1 else ["1"])
    assert "scaling" in jobs and "scaling" not in GPU_RULES  # the table and figure: a CPU job


def test_sweep_returns_a_table_from_slurm_jobs(slurm, tmp_path: Path) -> None:
    cases = write_tiny_cases(tmp_path / "cases")
    config = cluster_test_config(tmp_path / "wf", nproc=1)
    out = tmp_path / "sweep"
    nprocs = sorted({1, min(2, gpus_per_node())})
    cmd = ["timeout", "-s", "KILL", "420", sys.executable, "-m", "lungseg", "sweep", "--executor", "slurm",
           "--config", str(config), "--timeout-min", "10", "--train", *cases[:2], "--val", cases[2],
           "--out-dir", str(out), "--grid", "nproc=" + ",".join(map(str, nprocs)), "--grid", "depth=2,9",
           "--", *TINY_TRAIN]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=450)
    submitted = re.findall(r"as slurm job (\d+)", proc.stdout)
    if proc.returncode not in (0, 1):
        cancel(submitted)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the depth-9 runs fail, the others train
    with open(out / "sweep.csv", newline="") as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    assert len(table) == 2 * len(nprocs) == len(submitted)
    accounted = sacct(submitted)
    for nproc in nprocs:
        ok, bad = table[f"nproc-{nproc}_depth-2"], table[f"nproc-{nproc}_depth-9"]
        assert ok["status"] == "ok" and float(ok["images_per_s"]) > 0 and ok["best_val_dice"] != "", ok
        assert bad["status"] == "failed" and "too small for depth 9" in bad["error"], bad
        assert accounted[ok["job_id"]]["state"] == "COMPLETED" and accounted[bad["job_id"]]["state"] == "FAILED"
        for row in (ok, bad):
            assert accounted[row["job_id"]]["partition"] == "gpu"
        record = scontrol_job(ok["job_id"])
        if record:
            assert f"gres:gpu:{nproc}" in record, record  # GPUs per node = processes per node
    assert "failed" in proc.stdout and f"{len(nprocs)} ok, {len(nprocs)} failed" in proc.stdout


def test_srun_torchrun_rendezvous_in_a_slurm_job(slurm, tmp_path: Path) -> None:
    """`lungseg launch --launcher srun`: srun starts torchrun, whose processes meet through c10d on the
    allocation's first node (one node here; the same command spans nodes on a real cluster)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\nimport torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\nt = torch.tensor([dist.get_rank() + 1.0])\ndist.all_reduce(t)\n"
        "open(os.path.join(sys.argv[1], f'rank{dist.get_rank()}.txt'), 'w')"
        ".write(f'{dist.get_world_size()} {t.item():g} {os.environ[\"TORCHELASTIC_RUN_ID\"]}')\n"
        "dist.destroy_process_group()\n")
    nproc = min(2, gpus_per_node())
    lungseg = Path(sys.executable).parent / "lungseg"
    # as in the train rule's SLURM job step: no SLURM_JOB_NODELIST, the launcher asks slurmctld
    wrap = (f"env -u SLURM_JOB_NODELIST -u SLURM_NODELIST PATH={Path(sys.executable).parent}:$PATH "
            f"{lungseg} launch --launcher srun --nodes 1 --nproc-per-node {nproc} -- {probe} {tmp_path}")
    proc = _run("timeout", "-s", "KILL", "180", "sbatch", "--wait", "--parsable", "-p", "gpu", f"--gpus={nproc}",
                "--cpus-per-gpu=1", "-t", "5", "-o", str(tmp_path / "job.log"), "--wrap", wrap, timeout=200)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    job_id = proc.stdout.strip().split(";")[0]
    assert "--rdzv_backend=c10d --rdzv_endpoint=" in log and f"--rdzv_id=lungseg-{job_id}" in log
    expected = sum(range(1, nproc + 1))
    for rank in range(nproc):
        assert (tmp_path / f"rank{rank}.txt").read_text() == f"{nproc} {expected} lungseg-{job_id}"


# ---------------------------------------------------------------- hybrid HPC + cloud: --profile hybrid

#: the HPC side besides training (profiles/hybrid: everything that reads the DICOM data)
HPC_CPU_RULES = {"demo_case", "demo_case_sheet", "ingest", "lung_mask", "split"}


@pytest.fixture(scope="module")
def hybrid_run(slurm, tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The tiny demo DAG (one experiment, no scaling study) through `snakemake --profile hybrid`, the profile
    found by name after `lungseg profiles install` into a temporary Snakemake profile directory."""
    workdir = tmp_path_factory.mktemp("slurm_hybrid")
    config_path = cluster_test_config(workdir, nproc=min(2, gpus_per_node()))
    config = yaml.safe_load(config_path.read_text())
    config["scaling"]["enabled"] = False
    config.pop("experiments")  # one experiment, from train:
    config["cluster"].update(cloud_partition="cloud", cloud_account="")
    config_path.write_text(yaml.safe_dump(config))
    xdg = tmp_path_factory.mktemp("xdg_config")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               XDG_CONFIG_HOME=str(xdg))
    env.pop("LUNGSEG_CONFIG", None)  # the profile reads ./config/config.yaml, as on a cluster
    installed = subprocess.run([sys.executable, "-m", "lungseg", "profiles", "install", "hybrid"], env=env,
                               capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0 and (xdg / "snakemake/hybrid").is_symlink(), installed.stdout + installed.stderr
    cmd = ["timeout", "-s", "KILL", "900", sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--profile", "hybrid", "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=960)
    jobs: dict[str, list[str]] = {}
    for job_id, rule in SUBMITTED.findall(proc.stdout + proc.stderr):
        jobs.setdefault(rule, []).append(job_id)
    if proc.returncode != 0:
        cancel([j for ids in jobs.values() for j in ids])
        raise AssertionError(f"snakemake --profile hybrid failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    assert "Using profiles hybrid and workflow specific profile" in proc.stderr
    return workdir, jobs


def test_hybrid_profile_splits_the_demo_between_hpc_and_cloud(hybrid_run) -> None:
    workdir, jobs = hybrid_run
    assert "cloud" in set(_run("sinfo", "-h", "-o", "%R").stdout.split()), "the local SLURM has no cloud partition"
    for rule in ("demo_case", "ingest", "lung_mask", "train", "predict", "evaluate", "aggregate"):
        assert rule in jobs, f"rule {rule} was not submitted through sbatch: {sorted(jobs)}"
    figures = {"plot_overlay", "plot_training", "metrics_distribution", "extreme_cases"} & set(jobs)
    assert figures, f"no report figure was submitted through sbatch: {sorted(jobs)}"
    assert len(jobs["train"]) == FOLDS  # one experiment, FOLDS folds
    assert "scaling_run" not in jobs
    rows = sacct([j for ids in jobs.values() for j in ids])
    assert {row["state"] for row in rows.values()} == {"COMPLETED"}, rows
    where = {rule: {rows[j]["partition"] for j in ids} for rule, ids in jobs.items()}
    for rule, partitions in where.items():
        expected = "cpu" if rule in HPC_CPU_RULES else "gpu" if rule in GPU_RULES else "cloud"
        assert partitions == {expected}, (rule, partitions, where)
    for job_id in jobs["train"]:
        assert "--gpus=" in rows[job_id]["submit"], rows[job_id]
    assert not any("--gpus" in rows[j]["submit"] for rule, ids in jobs.items() if rule not in GPU_RULES for j in ids)
    assert (workdir / "results/metrics/summary.json").is_file()
