"""The table of a `lungseg sweep` in the report (issue 12): `lungseg report sweep` renders the sweep's own
sweep.csv (nothing is rerun), says in one line how to make a missing one, and the workflow has the
`sweep_table` rule (and the page among its targets) only when report.sweep names a sweep folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lungseg.cli import main
from lungseg.cluster.sweep import RunResult, expand_grid, parse_grid, write_table
from lungseg.report.sweep import SUMMARY_NAME, load, read_sweep


def make_sweep(folder: Path) -> Path:
    """A finished 2x2 sweep as `lungseg sweep` leaves it: sweep.csv (its own writer) and runs/<run>/metrics.csv."""
    grid = parse_grid(["arch=unet,dense_unet", "lr=0.01,0.0001"])
    specs = expand_grid(grid)
    results = []
    for i, spec in enumerate(specs):
        if i == 3:  # dense_unet, lr 0.0001
            results.append(RunResult(spec, "failed", f"10{i}", error="lungseg train exited with code 1: out of memory"))
            continue
        run = folder / "runs" / spec.name
        run.mkdir(parents=True)
        dice = [round(0.5 + 0.1 * i, 4), round(0.7 + 0.05 * i, 4), round(0.65 + 0.05 * i, 4)]
        (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_dice,lr,images_per_s,epoch_seconds\n" + "".join(
            f"{e + 1},{0.9 - 0.1 * e},0.5,{d},0.01,100,2.0\n" for e, d in enumerate(dice)))
        results.append(RunResult(spec, "ok", f"10{i}", summary={
            "wall_s": 12.5 + i, "epochs": 3, "images_per_s": 100.0, "final_train_loss": 0.7, "best_val_dice": max(dice)}))
    write_table(folder / SUMMARY_NAME, results, list(grid))
    return folder


def test_sweep_page_shows_every_run_with_grid_values_state_and_dice(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path / "sweep")
    keys, rows = read_sweep(folder)
    assert keys == ["arch", "lr"] and len(rows) == 4
    assert main(["report", "sweep", "--folder", str(folder), "-o", str(tmp_path / "sweep.html")]) == 0
    page = (tmp_path / "sweep.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h2>Training sweep</h2>" in page
    for header in ("run", "arch", "lr", "status", "best val Dice", "final val Dice", "wall time (s)", "error"):
        assert f"<th>{header}</th>" in page
    assert page.count("<tr>") == 5  # header and one row per run
    assert "4 run(s)" in page and "3 ok, 1 failed" in page and "best validation Dice 0.800 (arch-denseunet_lr-0.01)" in page
    assert "<td>0.0001</td>" in page  # grid values as given, not rounded
    # run 2 (dense_unet, lr 0.01): best 0.80, last epoch 0.75 from its metrics.csv, wall time 14.5 s
    row = next(r for r in page.split("<tr>") if "<td>arch-denseunet_lr-0.01<" in r)
    assert '<td class="num">0.800</td><td class="num">0.750</td>' in row and ">14.500<" in row
    failed = next(r for r in page.split("<tr>") if "<td>arch-denseunet_lr-0.0001<" in r)
    assert "<td>failed</td>" in failed and "out of memory" in failed and "–" in failed
    assert load(folder) == page


def test_missing_summary_is_one_line_naming_the_folder_and_the_fix(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for folder, what in ((tmp_path / "empty", f"has no {SUMMARY_NAME}"), (tmp_path / "nowhere", "does not exist")):
        out = tmp_path / "sweep.html"
        assert main(["report", "sweep", "--folder", str(folder), "-o", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("lungseg report sweep: error: ") and f"{folder} {what}" in err
        assert f"lungseg sweep ... --out-dir {folder}" in err
        assert not out.exists()


def test_a_table_of_another_kind_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / SUMMARY_NAME).write_text("case_id,dice\na,0.9\n")
    assert main(["report", "sweep", "--folder", str(tmp_path), "-o", str(tmp_path / "p.html")]) == 1
    assert "is not a lungseg sweep table" in capsys.readouterr().err


# ---------------------------------------------------------------- workflow


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_rules(output: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in (ln.strip() for ln in output.splitlines())
            if line.startswith(("rule ", "localrule ", "checkpoint ")) and line.endswith(":")]


def write_config(workdir: Path, sweep: str | None, **demo: int) -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["report"]["sweep"] = sweep
    config["demo"].update(demo)
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))


def test_workflow_plans_the_sweep_page_only_when_configured(tmp_path: Path) -> None:
    make_sweep(tmp_path / "sweeps/grid")
    write_config(tmp_path, "sweeps/grid")
    lint = smk(tmp_path, "--lint", check=False)  # the whole workflow's lint is tests/test_workflow.py's
    assert "sweep_table" not in lint.stdout + lint.stderr and "report.smk" not in lint.stdout + lint.stderr
    dry = smk(tmp_path, "-n", "results/report/sweep.html")
    assert planned_rules(dry.stdout) == ["sweep_table"], dry.stdout
    assert "sweeps/grid/sweep.csv" in dry.stdout
    # a rerun sweep (newer sweep.csv) makes the page again
    smk(tmp_path, "--cores", "1", "results/report/sweep.html")
    page = tmp_path / "results/report/sweep.html"
    assert "arch-denseunet_lr-0.01" in page.read_text()
    assert planned_rules(smk(tmp_path, "-n", "results/report/sweep.html").stdout) == []
    os.utime(tmp_path / "sweeps/grid" / SUMMARY_NAME, (page.stat().st_mtime + 10,) * 2)
    assert planned_rules(smk(tmp_path, "-n", "results/report/sweep.html").stdout) == ["sweep_table"]

    write_config(tmp_path, None)
    assert "sweep_table" not in planned_rules(smk(tmp_path, "-n").stdout)
    refused = smk(tmp_path, "-n", "results/report/sweep.html", check=False)
    assert refused.returncode != 0 and "No rule to produce results/report/sweep.html" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_all_outputs_has_the_sweep_page_only_when_configured(tmp_path: Path) -> None:
    """Past the split checkpoint the default target lists every page: sweep.html only with report.sweep."""
    make_sweep(tmp_path / "sweeps/grid")
    write_config(tmp_path, None, n_cases=5, slices=12, size=64)
    smk(tmp_path, "--cores", "2", "results/split.tsv")
    assert "sweep_table" not in planned_rules(smk(tmp_path, "-n").stdout)
    write_config(tmp_path, "sweeps/grid", n_cases=5, slices=12, size=64)
    assert "sweep_table" in planned_rules(smk(tmp_path, "-n").stdout)
