"""Cluster settings, profiles and launcher, checked without a SLURM controller: the cluster section of
the config, the profiles as Snakemake parses them, the sbatch lines the SLURM executor plugin builds
from them (single- and multi-node training), `lungseg launch`, and the conda environment files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import REPO
from snakemake.profiles import ProfileConfigFileParser

from lungseg.cluster.launch import (
    Allocation,
    LaunchError,
    current_allocation,
    parse_job_record,
    srun_torchrun_command,
    torchrun_prefix,
)
from lungseg.cluster.settings import (
    ClusterConfigError,
    config_paths_from_argv,
    load_cluster_settings,
    settings_from_config,
)

REPO_CONFIG = REPO / "config/config.yaml"


def cluster_config(tmp_path: Path, **cluster: Any) -> Path:
    """The repository config with some cluster keys changed, written to tmp_path."""
    config = yaml.safe_load(REPO_CONFIG.read_text())
    for key, value in cluster.items():
        if isinstance(value, dict):
            config["cluster"][key].update(value)
        elif key == "nproc_per_node":
            config["train"]["nproc_per_node"] = value
        else:
            config["cluster"][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def render_profile(name: str, config: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The profile as Snakemake's own parser turns it into command-line values."""
    monkeypatch.setenv("LUNGSEG_CONFIG", str(config))
    path = REPO / "profiles" / name / "config.v8+.yaml"
    with open(path) as f:
        return dict(ProfileConfigFileParser().parse(f))


def resource_value(text: str) -> Any:
    """A resource value as Snakemake evaluates it (a Python expression, else the raw string)."""
    try:
        return eval(text, {})  # noqa: S307 - the same evaluation Snakemake applies
    except (NameError, SyntaxError):
        return text


def resources(profile: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(default-resources, set-resources per rule) with evaluated values."""
    defaults = {}
    for item in profile.get("default-resources", []):
        key, value = item.split("=", 1)
        defaults[key] = resource_value(value)
    per_rule: dict[str, dict[str, Any]] = {}
    for item in profile.get("set-resources", []):
        rule, assign = item.split(":", 1)
        key, value = assign.split("=", 1)
        per_rule.setdefault(rule, {})[key] = resource_value(value)
    return defaults, per_rule


# ---------------------------------------------------------------- the cluster section


def test_repository_config_has_the_cluster_names() -> None:
    s = load_cluster_settings([REPO_CONFIG])
    assert (s.cpu_partition, s.gpu_partition) == ("cpu", "gpu")
    raw = yaml.safe_load(REPO_CONFIG.read_text())
    assert s.gpus_per_node == raw["train"]["nproc_per_node"]
    assert s.train_threads == s.train.cpus_per_gpu * s.gpus_per_node


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("cluster"), "has no 'cluster' section"),
    (lambda c: c["cluster"].pop("gpu_partition"), r"cluster.gpu_partition is missing"),
    (lambda c: c["cluster"].update(cpu_partition=""), "cluster.cpu_partition is empty"),
    (lambda c: c["cluster"]["train"].update(nodes=0), "cluster.train.nodes must be a positive integer"),
    (lambda c: c["cluster"].update(account=1234), "cluster.account must be a string"),
])
def test_bad_cluster_sections_are_named(change, message: str) -> None:
    config = yaml.safe_load(REPO_CONFIG.read_text())
    change(config)
    with pytest.raises(ClusterConfigError, match=message) as err:
        settings_from_config(config, source="my.yaml")
    assert str(err.value).startswith("my.yaml")


def test_profiles_read_the_config_snakemake_reads(tmp_path: Path) -> None:
    assert config_paths_from_argv(["snakemake", "--profile", "p"]) == [Path("config/config.yaml")]
    assert config_paths_from_argv(["snakemake", "--configfile", "a.yaml", "b.yaml", "-n"]) == [Path("a.yaml"), Path("b.yaml")]
    assert config_paths_from_argv(["snakemake", "--configfile=c.yaml", "--directory", "/w"]) == [Path("/w/c.yaml")]
    assert config_paths_from_argv(["snakemake", "-d", "/w"]) == [Path("/w/config/config.yaml")]
    # later files override earlier ones, key by key, as in Snakemake
    base = cluster_config(tmp_path)
    override = tmp_path / "site.yaml"
    override.write_text("cluster: {gpu_partition: a100q, train: {nodes: 2}}\n")
    s = load_cluster_settings([base, override])
    assert (s.gpu_partition, s.cpu_partition, s.train.nodes, s.train.mem_mb) == ("a100q", "cpu", 2, 64000)
    with pytest.raises(ClusterConfigError, match="not found"):
        load_cluster_settings([tmp_path / "missing.yaml"])


# ---------------------------------------------------------------- profiles


def test_slurm_profile_routes_training_to_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = cluster_config(tmp_path, account="lung-proj", gpu_partition="gpu-a100", gpu_type="a100",
                            nproc_per_node=4, train={"cpus_per_gpu": 6, "mem_mb": 120000, "runtime": 600})
    profile = render_profile("slurm", config, monkeypatch)
    assert profile["executor"] == "slurm" and profile["slurm-requeue"] == "True" and int(profile["retries"]) >= 1
    defaults, per_rule = resources(profile)
    assert defaults == {"slurm_partition": "cpu", "slurm_account": "lung-proj", "mem_mb": 8000, "runtime": 120}
    assert per_rule["train"] == {"slurm_partition": "gpu-a100", "slurm_account": "lung-proj", "nodes": 1,
                                 "cpus_per_gpu": 6, "mem_mb": 120000, "runtime": 600, "gpu": 4, "gpu_model": "a100"}
    # each run of the scaling study: the GPU partition; its GPU count N is the rule's own (one job per N)
    assert per_rule["scaling_run"] == {"slurm_partition": "gpu-a100", "slurm_account": "lung-proj", "cpus_per_gpu": 6,
                                       "mem_mb": 120000, "runtime": 600, "gpu_model": "a100"}
    assert set(per_rule) == {"train", "scaling_run"}  # everything else: the defaults, i.e. the CPU partition
    assert profile["set-threads"] == ["train=24"]
    # the ddp-4 run: the profile's resources and the rule's gpu=4 (workflow/rules/scaling.smk)
    line = sbatch_line({**per_rule["scaling_run"], "gpu": 4}, threads=4)
    for part in ("-p gpu-a100", "--cpus-per-gpu=6", "--gpus=a100:4", "--mem 120000", "-t 600"):
        assert part in line, (part, line)


def test_empty_account_and_gpu_type_are_left_to_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults, per_rule = resources(render_profile("slurm", cluster_config(tmp_path), monkeypatch))
    assert "slurm_account" not in defaults and "slurm_account" not in per_rule["train"]
    assert "gpu_model" not in per_rule["train"]


def test_hybrid_profile_sends_inference_to_the_cloud_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = cluster_config(tmp_path, account="hpc", cloud_partition="cloud-cpu", cloud_account="cloud")
    defaults, per_rule = resources(render_profile("hybrid", config, monkeypatch))
    assert (defaults["slurm_partition"], defaults["slurm_account"]) == ("cloud-cpu", "cloud")
    for rule in ("ingest", "lung_mask", "split", "demo_case"):
        assert per_rule[rule] == {"slurm_partition": "cpu", "slurm_account": "hpc"}, rule
    assert per_rule["train"]["slurm_partition"] == "gpu" and per_rule["train"]["gpu"] >= 1
    assert per_rule["scaling_run"]["slurm_partition"] == "gpu" and "gpu" not in per_rule["scaling_run"]
    for rule in ("predict", "evaluate", "aggregate", "plot_overlay"):
        assert rule not in per_rule  # the defaults: the cloud partition


def test_local_profile_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    with open(REPO / "profiles/local/config.v8+.yaml") as f:
        profile = dict(ProfileConfigFileParser().parse(f))
    assert profile["cores"] == "all"
    (limit,) = profile["resources"]
    assert limit.startswith("mem_mb=") and int(limit.split("=")[1]) > 0


class FakeResources(dict):
    def __getattr__(self, name: str) -> Any:
        return self[name]


def sbatch_line(rule_resources: dict[str, Any], threads: int) -> str:
    """The sbatch call the SLURM executor plugin builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=FakeResources(rule_resources), threads=threads)
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "rule_train", "account": "",
              "partition": f" -p {rule_resources['slurm_partition']}", "workdir": "/w"}
    return get_submit_command(job, params, settings=SimpleNamespace(requeue=True, no_requeue=False, qos=None,
                                                                      reservation=None)) + set_gres_string(job)


def test_single_node_training_asks_for_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = cluster_config(tmp_path, gpu_type="a100", nproc_per_node=4, train={"cpus_per_gpu": 8})
    _, per_rule = resources(render_profile("slurm", config, monkeypatch))
    line = sbatch_line(per_rule["train"], threads=32)
    for part in ("-p gpu", "--nodes=1", "--requeue", "--cpus-per-gpu=8", "--gpus=a100:4", "--mem 64000", "-t 720"):
        assert part in line, (part, line)
    assert "--ntasks" not in line  # one task: the rule's torchrun --standalone


def test_multi_node_training_is_one_srun_torchrun_task_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = cluster_config(tmp_path, gpu_type="h100", nproc_per_node=4, train={"nodes": 3, "cpus_per_gpu": 8})
    _, per_rule = resources(render_profile("slurm", config, monkeypatch))
    train = per_rule["train"]
    assert train["mpi"] == "srun" and train["tasks"] == 3 and "gpu" not in train
    line = sbatch_line(train, threads=32)
    for part in ("-p gpu", "--nodes=3", "--ntasks=3", "--cpus-per-gpu=8", "--gres=gpu:h100:4"):
        assert part in line, (part, line)
    assert "--ntasks-per-gpu" not in line and "--gpus=" not in line
    # and the train rule then launches srun torchrun itself
    assert torchrun_prefix(3, 4) == "lungseg launch --nodes 3 --nproc-per-node 4 --"
    assert torchrun_prefix(1, 4) == "torchrun --standalone --nnodes=1 --nproc_per_node=4"


# ---------------------------------------------------------------- lungseg launch


def test_srun_torchrun_command_meets_on_the_first_node() -> None:
    alloc = Allocation(job_id="4242", nodes=("gpu017", "gpu018"), cpus_per_node=32)
    cmd = srun_torchrun_command(alloc, 2, 4, ["-m", "lungseg", "train", "--epochs", "3"])
    assert cmd[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=32",
                       "--kill-on-bad-exit=1"]
    assert cmd[6:9] == ["torchrun", "--nnodes=2", "--nproc_per_node=4"]
    assert "--rdzv_backend=c10d" in cmd and "--rdzv_endpoint=gpu017:24242" in cmd and "--rdzv_id=lungseg-4242" in cmd
    assert cmd[-5:] == ["-m", "lungseg", "train", "--epochs", "3"]
    with pytest.raises(LaunchError, match="3 nodes requested but SLURM job 4242 has 2"):
        srun_torchrun_command(alloc, 3, 4, ["x.py"])


def test_scontrol_job_record_parsing() -> None:
    text = ("JobId=4242 JobName=x UserId=me(1) NodeList=gpu[017-018] BatchHost=gpu017 NumNodes=2 "
            "NumCPUs=64 NumTasks=2 TRES=cpu=64,node=2,billing=64\n")
    record = parse_job_record(text)
    assert (record["NodeList"], record["NumCPUs"], record["NumNodes"]) == ("gpu[017-018]", "64", "2")


def test_multi_node_launch_needs_a_slurm_job() -> None:
    with pytest.raises(LaunchError, match="must run inside a SLURM job"):
        current_allocation({})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "lungseg", "launch", "--nodes", "2", "--nproc-per-node", "2",
                           "--", "-m", "lungseg", "train"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "lungseg launch: error: a multi-node launch must run inside a SLURM job (SLURM_JOB_ID is not set): "
        "submit it with sbatch, or run the workflow with --profile profiles/slurm"]
    dry = subprocess.run([sys.executable, "-m", "lungseg", "launch", "--nproc-per-node", "2", "--dry-run",
                          "--", "-m", "lungseg", "train", "--epochs", "1"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0
    assert "torchrun --standalone --nnodes=1 --nproc_per_node=2 -m lungseg train --epochs 1" in dry.stdout


# ---------------------------------------------------------------- conda environments


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("env_name", ["preprocess", "train", "report"])
def test_conda_envs_match_pyproject(env_name: str) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    required = {_dist_name(r): r for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((REPO / "envs" / f"{env_name}.yaml").read_text())
    conda = {_dist_name(d): d for d in env["dependencies"] if isinstance(d, str)}
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    pip_names = {_dist_name(p): p for p in pip if not p.startswith("-")}
    assert "python" in conda
    for name, requirement in required.items():
        listed = conda.get(name) or pip_names.get(name)
        assert listed, f"envs/{env_name}.yaml lacks {name} ({requirement} in pyproject.toml)"
        bound = re.search(r">=\s*([\d.]+)", requirement)
        if bound:  # the same lower bound as pyproject.toml
            assert f">={bound.group(1)}" in listed.replace(" ", ""), (listed, requirement)
    # lungseg itself: from this checkout, wherever conda puts the env file (Snakemake copies it to
    # .snakemake/conda/<hash>.yaml): ${LUNGSEG_ROOT} is expanded by pip, set by the workflow
    assert "-e ${LUNGSEG_ROOT}" in pip


def test_pip_section_installs_this_checkout_from_any_directory(tmp_path: Path) -> None:
    """What conda does with the pip section: a requirements file beside the (copied) env file."""
    pip = [d for d in yaml.safe_load((REPO / "envs/train.yaml").read_text())["dependencies"] if isinstance(d, dict)]
    req = tmp_path / ".snakemake/conda/condaenv.abc.requirements.txt"
    req.parent.mkdir(parents=True)
    req.write_text("\n".join(p for p in pip[0]["pip"] if p.startswith("-e")) + "\n")
    env = dict(os.environ, LUNGSEG_ROOT=str(REPO), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                           "--report", str(tmp_path / "report.json"), "-r", str(req)],
                          cwd=req.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    (item,) = json.loads((tmp_path / "report.json").read_text())["install"]
    assert item["metadata"]["name"] == "lungseg"
    assert item["download_info"]["url"] == REPO.as_uri() and item["is_direct"]


def test_workflow_sets_lungseg_root_for_conda_envs() -> None:
    common = (REPO / "workflow/rules/common.smk").read_text()
    assert "os.environ.update(LUNGSEG_ROOT=workflow.basedir)" in common
