"""`lungseg fl-run --launcher slurm`: the server here, each site's client a SLURM GPU job (submitit), and the
SLURM profiles putting the train job of such a flower experiment on the CPU partition without a GPU.

The runs against the real local SLURM skip with the reason when none answers (LUNGSEG_SLURM_TESTS=required
turns that into a failure, as in tests/test_slurm_cluster.py); the local cluster's gpu partition has GRES
gpu but no GPU, so the clients train on CPU there, as the sweep's jobs do.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_federated import two_sites as federated_sites
from test_slurm_cluster import REQUIRED, cancel, cluster_test_config, sacct, slurm_unavailable
from test_slurm_profiles import cluster_config, render_profile, resources, sbatch_line

from lungseg.federated.security import read_token
from lungseg.federated.slurm_clients import client_executor_options
from lungseg.training.checkpoint import load_model
from lungseg.training.train import TrainConfig

SETTINGS = TrainConfig(base_channels=4, depth=2, image_size=32, epochs=1, batch_size=4, lr=1e-2, seed=0, threads=1,
                       roi="none", mode="flower", local_epochs=1)


@pytest.fixture
def slurm() -> None:
    reason = slurm_unavailable()
    if reason and REQUIRED:
        pytest.fail(f"LUNGSEG_SLURM_TESTS=required but {reason}")
    if reason:
        pytest.skip(f"{reason} (start one with ../shared/tools/local-slurm/setup-local-slurm.sh, as .ci/run does)")


def two_sites(root: Path) -> dict:
    """The two sites of test_federated (site_a: 2 training + 1 validation case; site_b: 1 + 1), the settings file
    and a cluster config."""
    root.mkdir(parents=True, exist_ok=True)
    data = federated_sites(root)
    settings = root / "settings.json"
    settings.write_text(json.dumps({k: v for k, v in SETTINGS.as_dict().items() if k not in ("device", "log_every")}))
    return {"sheet": data["sheet"], "settings": str(settings), "cluster": cluster_test_config(root / "wf", nproc=1),
            "train": data["train"], "val": data["val"]}


def fl_run(data: dict, out: Path, *extra: str, limit: int = 85) -> list[str]:
    return ["timeout", "-s", "KILL", str(limit), sys.executable, "-m", "lungseg", "fl-run", "--launcher", "slurm",
            "--cluster-config", str(data["cluster"]), "--timeout-min", "5", "--config", data["settings"],
            "--sites", data["sheet"], "--train", *data["train"], "--val", *data["val"], "--out-dir", str(out), *extra]


def client_jobs(out: Path) -> dict[str, str]:
    path = out / "client_jobs.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["site"]: row["job_id"] for row in csv.DictReader(f, delimiter="\t")}


@pytest.mark.slow
def test_two_site_run_with_client_jobs_on_the_gpu_partition(slurm, tmp_path: Path) -> None:
    data = two_sites(tmp_path / "data")
    out = tmp_path / "run"
    model = tmp_path / "model.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LUNGSEG_CONFIG", None)
    proc = subprocess.run(fl_run(data, out, "--join-timeout", "60", "--model-out", str(model)), capture_output=True,
                          text=True, timeout=95, env=env)
    jobs = client_jobs(out)
    if proc.returncode != 0:
        cancel(list(jobs.values()))
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((out / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert sorted(jobs) == ["site_a", "site_b"]
    with open(out / "server/rounds.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["sites_ok"] == "site_a;site_b" and row["sites_failed"] == "-"
    assert int(row["n_train_site_a"]) == 2 * int(row["n_train_site_b"]) > 0  # each job trained its own site only
    assert float(row["bytes_received_site_a"]) > 0 and float(row["bytes_received_site_b"]) > 0
    assert (out / "server/global_model.pt").is_file()
    _, meta = load_model(model)
    assert meta["epoch"] == 1 and 0.0 <= meta["val_dice"] <= 1.0
    # the server advertised this node and listened on all interfaces; the clients dialled that file
    assert (out / "server.address").read_text().strip().rsplit(":", 1)[1].isdigit()
    # the client jobs: accounted by SLURM on the gpu partition with a GPU each, completed, no token anywhere
    # on their command lines or in the job files submitit wrote
    tokens = [read_token(out / "tls" / f"{site}.token") for site in jobs]
    accounted = sacct(list(jobs.values()))
    for site, job_id in jobs.items():
        record = accounted[job_id]
        assert record["partition"] == "gpu" and record["state"] == "COMPLETED", record
        assert not any(token in record["submit"] for token in tokens), record["submit"]
        script = (out / "submitit" / f"{job_id}_submission.sh").read_text()
        assert "--gpus-per-node=1" in script and f"lungseg-fl-{site}" in script
        assert f"# SLURM job {job_id}" in (out / "logs" / f"{site}.log").read_text()
    for path in (out / "submitit").rglob("*"):
        if path.is_file():
            assert not any(token.encode() in path.read_bytes() for token in tokens), path


@pytest.mark.slow
def test_a_client_job_that_fails_to_start_leaves_the_others_to_train(slurm, tmp_path: Path) -> None:
    """site_b's job dies before joining (an unreadable case file): with --min-clients 1 the server waits its
    join timeout, then trains with site_a and records the round; sacct shows site_b's job FAILED."""
    data = two_sites(tmp_path / "data")
    Path(data["train"][2]).write_bytes(b"not an HDF5 file")  # b1, site_b's only training case
    out = tmp_path / "run"
    proc = subprocess.run(fl_run(data, out, "--join-timeout", "15", "--min-clients", "1"), capture_output=True, text=True,
                          timeout=95, env=dict(os.environ, OMP_NUM_THREADS="1"))
    jobs = client_jobs(out)
    if proc.returncode != 0:
        cancel(list(jobs.values()))
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "logs/server.log").read_text()[-3000:]
    with open(out / "server/rounds.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["sites_ok"] == "site_a" and row["n_train_site_b"] == "", row
    states = {site: sacct([job_id])[job_id]["state"] for site, job_id in jobs.items()}
    assert states == {"site_a": "COMPLETED", "site_b": "FAILED"}, states
    log = (out / "logs/site_b.log").read_text()
    assert "OSError" in log and "open file" in log, log[-2000:]  # h5py refused the file: the client never joined


@pytest.mark.slow
def test_a_stopped_run_cancels_its_client_jobs(slurm, tmp_path: Path) -> None:
    """SIGTERM to every process of the run, as scancel or a time limit sends it to the train job (train-guard,
    fl-run, fl-server; the guard passes one more to fl-run): the client jobs are cancelled with scancel and the
    guard exits 75 (requeue; the server resumes after its last saved round)."""
    data = two_sites(tmp_path / "data")
    out = tmp_path / "run"
    cmd = fl_run(data, out, "--join-timeout", "120", limit=80)
    cmd[5:5] = ["-m", "lungseg", "train-guard", "--", sys.executable]  # timeout ... python -m lungseg train-guard -- python ...
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    jobs: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 40
        while len(jobs) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            jobs = client_jobs(out)
        assert len(jobs) == 2, proc.stdout.read() if proc.poll() is not None else "no client_jobs.tsv"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cancel(list(jobs.values()))  # whatever happened, leave no job behind
    assert proc.returncode == 75, output
    assert f"cancelled client job(s) {jobs['site_a']}, {jobs['site_b']}" in output, output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = {row["state"].split()[0] for row in sacct(list(jobs.values())).values()}
        if states == {"CANCELLED"}:
            break
        time.sleep(1)
    assert states == {"CANCELLED"}, sacct(list(jobs.values()))


# ---------------------------------------------------------------- without a SLURM controller


def flower_cluster_config(tmp_path: Path, launcher: str, **cluster) -> Path:
    path = cluster_config(tmp_path, **cluster)
    config = yaml.safe_load(path.read_text())
    config["experiments"] = {"reference": "unet", "unet": {}, "flower": {"mode": "flower"}}
    config["federated"] = {"launcher": launcher}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("profile", ["slurm", "hybrid"])
def test_profiles_put_the_train_job_of_a_flower_experiment_with_slurm_clients_on_the_cpu_partition(
        profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = flower_cluster_config(tmp_path, "slurm", gpu_type="a100", nproc_per_node=4, train={"cpus_per_gpu": 6})
    rendered = render_profile(profile, config, monkeypatch)
    per_rule: dict[str, dict[str, str]] = {}
    for item in rendered["set-resources"]:
        rule, assign = item.split(":", 1)
        key, value = assign.split("=", 1)
        per_rule.setdefault(rule, {})[key] = value
    threads = dict(item.split("=", 1) for item in rendered["set-threads"])

    def job(experiment: str) -> tuple[dict, int]:
        names = {"wildcards": argparse.Namespace(experiment=experiment)}
        values = {k: eval(v, dict(names)) for k, v in per_rule["train"].items()}  # noqa: S307 - as Snakemake does
        return values, eval(threads["train"], dict(names))  # noqa: S307

    server, server_threads = job("flower")
    line = sbatch_line(server, threads=server_threads)
    assert "-p cpu" in line and "--gpus" not in line and "--gres" not in line and "--cpus-per-task=6" in line, line
    unet, unet_threads = job("unet")
    line = sbatch_line(unet, threads=unet_threads)
    assert "-p gpu" in line and "--gpus=a100:4" in line and "--cpus-per-gpu=6" in line, line


def test_profiles_keep_a_local_launcher_flower_job_on_the_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """federated.launcher local: server and clients share the one train job, which keeps its GPUs."""
    config = flower_cluster_config(tmp_path, "local", nproc_per_node=2)
    _, per_rule = resources(render_profile("slurm", config, monkeypatch))
    assert per_rule["train"]["slurm_partition"] == "gpu" and per_rule["train"]["gpu"] == 2


def test_client_jobs_are_sized_from_the_cluster_section(tmp_path: Path) -> None:
    config = cluster_config(tmp_path, account="lung", gpu_partition="gpu-a100", gpu_type="a100",
                            train={"cpus_per_gpu": 6, "mem_mb": 8192, "runtime": 240})
    args = argparse.Namespace(cluster_config=config, partition=None, account=None, gpu_type=None, cpus_per_client=None,
                              mem_gb=None, timeout_min=None)
    options = client_executor_options(args)
    assert (options.cluster, options.partition, options.account, options.gpu_type) == ("slurm", "gpu-a100", "lung", "a100")
    assert (options.gpus, options.cpus_per_proc, options.mem_gb, options.timeout_min) == (True, 6, 8.0, 240)
    args.partition, args.timeout_min = "short", 30
    assert (client_executor_options(args).partition, client_executor_options(args).timeout_min) == ("short", 30)
    args.cluster_config = tmp_path / "missing.yaml"
    with pytest.raises(ValueError, match="missing.yaml not found"):
        client_executor_options(args)


def test_fl_run_names_a_missing_cluster_config(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lungseg", "fl-run", "--launcher", "slurm", "--cluster-config",
                           str(tmp_path / "nope.yaml"), "--config", "s.json", "--sites", "c.tsv", "--train", "a.h5",
                           "--val", "b.h5", "--out-dir", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 1 and "nope.yaml not found" in proc.stderr, proc.stderr
