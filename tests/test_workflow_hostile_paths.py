"""Hostile and unlucky paths through the DAG: case-sheet and config paths with spaces, quotes, `;`,
`$(...)`, backticks and non-ASCII characters are data, never shell code (issue 11, item 1).

Every rule quotes what it pastes into its shell line (Snakemake's ``:q``); a path that tries to run
a command leaves a sentinel file behind if it ever does, and each test checks that none appears.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from ingest_data import demo_case

SENTINEL = "INJECTED"
#: one folder name with everything a shell would act on (a `/` cannot be in a folder name, so the
#: injected commands write to the job's working directory: the Snakemake workdir)
HOSTILE = f"scan 'one' \"two\"; $(touch {SENTINEL}1) `touch {SENTINEL}2` & ñ ü 肺 |x>y"
SECRET = "hostile-paths-secret-7"


def _env() -> dict[str, str]:
    return dict(os.environ, LUNGSEG_PSEUDONYM_KEY=SECRET,
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def sentinels(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob(f"{SENTINEL}*") if HOSTILE not in p.name]


def write_config(workdir: Path, **changes: object) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(changes)
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return config


def test_dry_run_commands_quote_every_path(tmp_path: Path) -> None:
    """`snakemake -n -p`: each planned command splits (shell rules) back into the hostile paths whole."""
    results = f"out {HOSTILE}"
    write_config(tmp_path, results=results, demo={"n_cases": 3, "seed": 1, "slices": 8, "size": 64,
                                                  "folder": f"demo {HOSTILE}"})
    out = smk(tmp_path, "-n", "-p", "--forceall").stdout
    commands = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Shell command: lungseg")]
    assert {c.split()[1] for c in commands} >= {"demo-cohort", "ingest"}, out[-3000:]
    for command in commands:
        words = shlex.split(command)
        if words[1] in ("demo-cohort", "ingest"):
            # whole paths below the two hostile roots (labels as NAME=PATH), never split or cut
            roots = (results, f"demo {HOSTILE}")
            paths = [w.split("=", 1)[-1] for w in words if HOSTILE in w]
            assert paths and all(p in roots or p.startswith(tuple(r + "/" for r in roots)) for p in paths), words
    assert not sentinels(tmp_path)


@pytest.mark.slow
def test_case_sheet_and_results_with_hostile_names_run_ingest_and_lung_mask(tmp_path: Path) -> None:
    """source: cases with scan, label and results paths full of shell syntax: ingest and lung mask
    work, the case is not quarantined, and nothing is executed."""
    data = tmp_path / f"data {HOSTILE}"
    case = demo_case(data, "demo001", slices=16, size=64)
    label = data / f"lung {HOSTILE}.nii.gz"
    shutil.copy(case.lung_path, label)
    sheet = tmp_path / f"cases {HOSTILE}.tsv"
    with open(sheet, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["case_id", "patient_id", "dicom", "label_lung"])
        writer.writerow(["hostile01", "p01", str(case.dicom_dir), str(label)])
    results = f"results {HOSTILE}"
    write_config(tmp_path, source="cases", cases=str(sheet), results=results)
    targets = [f"{results}/lungmask/hostile01.qa.json", f"{results}/quarantine.tsv"]
    smk(tmp_path, "--cores", "2", *targets)
    out = tmp_path / results
    status = json.loads((out / "ingest/hostile01.status.json").read_text())
    assert status["status"] == "ok", status
    assert (out / "lungmask/hostile01.nii.gz").is_file() and (out / "lungmask/hostile01.qa.json").is_file()
    assert (out / "quarantine.tsv").read_text().count("\n") == 1  # header only
    assert not sentinels(tmp_path), sentinels(tmp_path)
    assert "Nothing to be done" in smk(tmp_path, "-n", *targets).stdout


@pytest.mark.slow
def test_discover_root_with_hostile_name(tmp_path: Path) -> None:
    """source: discover below a hostile archive root: the checkpoint, ingest and lung mask run, nothing executes."""
    archive = tmp_path / f"archive {HOSTILE}"
    demo_case(tmp_path / "demo", "demo001", slices=16, size=64)
    shutil.copytree(tmp_path / "demo/demo001/dicom", archive / f"study {HOSTILE}" / "ct")
    write_config(tmp_path, source="discover", discover={"root": str(archive), "min_slices": 10})
    smk(tmp_path, "--cores", "2", "results/lungmask/qa.tsv", "results/quarantine.tsv")
    qa = (tmp_path / "results/lungmask/qa.tsv").read_text().splitlines()
    assert len(qa) == 2, qa  # header + the one discovered case
    assert not sentinels(tmp_path), sentinels(tmp_path)
