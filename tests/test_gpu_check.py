"""benchmarks/gpu_check.sh: its reduced CPU form end to end, the comparisons it judges by, and a rehearsal of
the GPU form's code paths on the CPU (gloo in place of NCCL), so that the check cannot rot while no GPU is around."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

from lungseg.docs_reference import benchmarks_markdown  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
GPU_ONLY = {("correctness", "train_step_fp32"), ("correctness", "train_step_bf16"), ("correctness", "checkpoint_gpu_to_cpu"),
            ("correctness", "checkpoint_cpu_to_gpu"), ("correctness", "predict_gpu_vs_cpu"), ("ddp", "nccl_collectives"),
            ("inference", "volume_gpu")}
CPU_CHECKS = {("correctness", "checkpoint_cpu_to_cpu"), ("correctness", "predict_cli_cpu"), ("ddp", "lungseg_train_torchrun")}
MEASURED = {("throughput", "unet_train"), ("inference", "volume_cpu_2_threads"), ("classifier", "resnet18")}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # the tests' interpreter


@pytest.fixture(scope="module")
def cpu_form(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    proc = subprocess.run([str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=600, env=ENV, cwd="/")
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_cpu_form_runs_and_passes(cpu_form) -> None:
    proc, data = cpu_form
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert data["form"] == "cpu-reduced"
    assert "reduced CPU form (no CUDA device)" in proc.stdout
    assert "gpu_check: " in proc.stdout.splitlines()[-1]  # the closing summary line
    checks = {(s, n): r for s, c in data["checks"].items() for n, r in c.items()}
    assert set(checks) == GPU_ONLY | CPU_CHECKS | MEASURED
    for key in CPU_CHECKS:
        assert checks[key]["status"] == "passed", (key, checks[key])
    for key in MEASURED:
        assert checks[key]["status"] == "measured", (key, checks[key])
    assert data["counts"] == {"passed": len(CPU_CHECKS), "measured": len(MEASURED), "skipped": len(GPU_ONLY)}


def test_cpu_form_says_which_checks_it_skipped_and_why(cpu_form) -> None:
    _, data = cpu_form
    for section, name in GPU_ONLY:
        status = data["checks"][section][name]["status"]
        assert status.startswith("skipped: ") and "no CUDA device" in status, (section, name, status)
        assert data["checks"][section][name]["summary"]


def test_cpu_form_checks_really_ran(cpu_form) -> None:
    _, data = cpu_form
    c = data["checks"]
    roundtrip = c["correctness"]["checkpoint_cpu_to_cpu"]
    assert roundtrip["relative_error"] == 0.0 and roundtrip["checkpoint_loads_exactly_on_target"]
    assert roundtrip["resumed_at_epoch_2_with_history"]
    assert c["correctness"]["train_step_fp32"]["cpu_reference_step"]["ran"]
    assert c["correctness"]["train_step_fp32"]["cpu_reference_step"]["update_norm"] > 0
    assert c["correctness"]["predict_cli_cpu"]["mask_equals_api"]
    assert "lungseg predict --device cuda" in c["correctness"]["predict_gpu_vs_cpu"]["note"]
    ddp = c["ddp"]["lungseg_train_torchrun"]
    assert ddp["exit_code"] == 0 and ddp["processes"] == min(2, len(os.sched_getaffinity(0)))
    assert ddp["backend"] in ("gloo", "none (one process forms no process group)")
    tp = c["throughput"]["unet_train"]
    assert tp["bare_images_per_s_best"] > 0 and tp["pipeline_images_per_s_best"] > 0
    assert tp["config"]["precision"].startswith("fp32")
    assert "NOT comparable" in tp["paper_workload"]["how"] and tp["paper_workload"]["goal_met"] is None
    assert c["inference"]["volume_cpu_2_threads"]["seconds_per_volume"] > 0
    env = data["environment"]
    assert env["gpus"] is None and env["cuda_runtime"] is None and env["nccl"] is None and env["cores"] >= 1
    assert data["provenance"]["command"] and data["provenance"]["machine"]["cpu"]


def test_docs_render_a_result_file_and_do_without_one(cpu_form, tmp_path: Path) -> None:
    _, data = cpu_form
    assert "GPU check" not in benchmarks_markdown(tmp_path)  # no gpu_check.json: no section, no error
    (tmp_path / "gpu_check.json").write_text(json.dumps(data))
    page = benchmarks_markdown(tmp_path)
    assert "## GPU check (`gpu_check.json`)" in page and "`correctness.checkpoint_cpu_to_cpu`" in page
    assert "Form **cpu-reduced**" in page


def test_help_and_refusals(tmp_path: Path) -> None:
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0 and "--form" in proc.stdout and "--out" in proc.stdout
    proc = subprocess.run([str(SCRIPT), "--form", "gpu"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr
    results = REPO / "benchmarks" / "results" / "gpu_check.json"
    proc = subprocess.run([str(SCRIPT), "--out", str(results)], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "must not land in benchmarks/results/" in proc.stderr
    proc = subprocess.run([str(SCRIPT), "--sections", "bogus"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "unknown section" in proc.stderr


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK) and shutil.which("bash")


# ---------------------------------------------------------------- the comparisons


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g), "n": torch.tensor(7)}


def test_compare_passes_equal_and_fails_unequal_states() -> None:
    base, want = _state(0), _state(1)
    assert gpu_check.compare(want, {k: v.clone() for k, v in want.items()}, 1e-6, base)["status"] == "passed"
    close = {k: v + 1e-4 if v.is_floating_point() else v for k, v in want.items()}
    assert gpu_check.compare(close, want, 1e-2, base)["status"] == "passed"
    broken = {k: v.clone() for k, v in want.items()}
    broken["w"][0, 0] += 0.5  # one weight off: a device bug in one kernel
    result = gpu_check.compare(broken, want, 2e-2, base)
    assert result["status"] == "failed" and result["relative_error"] > 2e-2
    nan = {k: v.clone() for k, v in want.items()}
    nan["b"][1] = float("nan")
    assert gpu_check.compare(nan, want, 1.0, base)["status"] == "failed"


def test_relative_error_measures_the_update_not_the_weights() -> None:
    base = _state(0)
    want = {k: v + 0.01 if v.is_floating_point() else v for k, v in base.items()}  # a small step
    got = {k: v + 0.02 if v.is_floating_point() else v for k, v in base.items()}  # twice that step
    assert gpu_check.relative_error(got, want, base) == pytest.approx(1.0)
    assert gpu_check.relative_error(got, want) < 0.02  # against the weights the difference would hide
    assert gpu_check.relative_error(got, base, base) == math.inf
    with pytest.raises(ValueError, match="different tensors"):
        gpu_check.relative_error({"w": base["w"]}, base)


def test_compare_probabilities() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((4, 8, 8)).astype(np.float32)
    assert gpu_check.compare_probabilities(p + 1e-4, p, 1e-2)["status"] == "passed"
    flipped = p.copy()
    i = np.unravel_index(np.argmax(np.abs(p - 0.5)), p.shape)
    flipped[i] = 1.0 - p[i]  # a confident voxel changes side
    result = gpu_check.compare_probabilities(flipped, p, 1e-2)
    assert result["status"] == "failed" and result["decisive_voxels_flipped"] == 1
    assert gpu_check.compare_probabilities(p[:2], p, 1e-2)["status"] == "failed"


# ---------------------------------------------------------------- the GPU form's code, rehearsed on the CPU


def test_gpu_form_code_paths_rehearsed_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check of the GPU form runs with "cpu" for the GPU and gloo for NCCL: what a GPU run would do but
    for the device itself. The two devices being one, every comparison must pass."""
    monkeypatch.setattr(gpu_check, "GPU", "cpu")
    monkeypatch.setattr(gpu_check, "GPU_BACKEND", "gloo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    run = gpu_check.Run(tmp_path / "rehearsal.json", "rehearsal", ["gpu_check.py"])
    sizes, work = gpu_check.CPU_SIZES, tmp_path / "work"
    try:
        torch.set_num_threads(2)
        gpu_check.record_all(run, "correctness", lambda: gpu_check.check_train_steps(sizes, work, True),
                             ["train_step_fp32", "train_step_bf16"])
        gpu_check.guarded(run, "correctness", "checkpoint_gpu_to_cpu",
                          lambda: gpu_check.check_resume(sizes, work, gpu_check.GPU, "cpu"))
        model = work / "resume_cpu_to_cpu" / "split" / "model.pt"
        gpu_check.record_all(run, "correctness", lambda: gpu_check.check_predict(sizes, work, model, True, 2),
                             ["predict_cli_cpu", "predict_gpu_vs_cpu"])
        gpu_check.guarded(run, "ddp", "nccl_collectives", lambda: gpu_check.check_nccl(sizes, work, 300))
        gpu_check.record_all(run, "inference", lambda: gpu_check.check_inference(sizes, True),
                             ["volume_gpu", "volume_cpu_2_threads"])
    finally:
        torch.set_num_threads(threads)
    checks = run.data["checks"]
    for name in ("train_step_fp32", "train_step_bf16", "checkpoint_gpu_to_cpu", "predict_cli_cpu", "predict_gpu_vs_cpu"):
        assert checks["correctness"][name]["status"] == "passed", (name, checks["correctness"][name])
    assert checks["correctness"]["train_step_bf16"]["relative_error"] > 0  # bf16 autocast really ran
    nccl = checks["ddp"]["nccl_collectives"]
    assert nccl["status"] == "passed", nccl
    assert nccl["ranks"][0]["backend"] == "gloo" and nccl["ranks"][0]["lungseg_train_model_written"]
    gpu = checks["inference"]["volume_gpu"]
    assert gpu["status"] == "measured" and set(gpu["seconds_by_batch_size"]) == {"16", "64"}
    assert checks["inference"]["volume_cpu_2_threads"]["gpu_speedup"] > 0
