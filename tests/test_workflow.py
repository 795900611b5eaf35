"""End to end: the whole Snakemake DAG on a tiny demo cohort (3 cases, 1 epoch), then its rerun semantics."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lungseg.demo.cohort import demo_identity

pytestmark = pytest.mark.slow
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CASES = ["demo001", "demo002", "demo003"]
EXPERIMENTS = ["unet", "dense_unet"]  # config/config.yaml's experiments


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # lungseg, torchrun
    return env


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"].update(n_cases=len(CASES), slices=16, size=96)
    config["train"].update(epochs=1, image_size=64, base_channels=8, depth=3, batch_size=8)
    (workdir / "config").mkdir()
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    smk(workdir, "--cores", "2")
    smk(workdir, "--report", "results/report.html")
    return workdir


def test_outputs_exist(run_dir):
    results = run_dir / "results"
    split = (results / "split.tsv").read_text().splitlines()[1:]
    test_cases = [line.split("\t")[0] for line in split if line.split("\t")[2] == "test"]
    assert len(test_cases) == 1
    for experiment in EXPERIMENTS:  # the demo config compares two experiments, unet the reference
        for name in (f"predictions/{test_cases[0]}.nii.gz", "folds/0/model.pt", "folds/0/metrics.csv",
                     "train_settings.json", "metrics/metrics.csv", "metrics/summary.json"):
            assert (results / "experiments" / experiment / name).is_file(), (experiment, name)
        assert (results / "plots/training" / experiment / "0.png").is_file()
    for name in ("metrics/metrics.csv", "metrics/summary.json", "report.html", f"plots/overlays/{test_cases[0]}.png",
                 "comparison/comparison.csv", "comparison/comparison.json", "report/comparison.html",
                 "report/paired_dice.png"):
        assert (results / name).is_file(), name
    summary = json.loads((results / "metrics/summary.json").read_text())
    assert set(summary) == {*EXPERIMENTS, "classical_threshold_3d", "all_background"}
    assert summary["all_background"]["metrics"]["dice"]["mean"] == 0.0
    comparison = json.loads((results / "comparison/comparison.json").read_text())
    assert comparison["reference"] == "unet" and comparison["methods"]["dense_unet"]["difference"]["dice"]["n_pairs"] == 1
    for case in CASES:
        assert (run_dir / "logs/ingest" / f"{case}.log").is_file()
        assert (results / "benchmarks/ingest" / f"{case}.tsv").is_file()


def test_nothing_left_to_do(run_dir):
    out = smk(run_dir, "-n").stdout + smk(run_dir, "-n").stderr
    assert "Nothing to be done" in out, out


def planned_jobs(dry_run: str) -> list[tuple[str, str | None]]:
    """(rule, case wildcard or None) for every job a ``snakemake -n`` output plans."""
    jobs: list[tuple[str, str | None]] = []
    for line in dry_run.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            jobs.append((line.split()[1].rstrip(":"), None))
        elif line.startswith("wildcards: case=") and jobs:
            jobs[-1] = (jobs[-1][0], line.split("=", 1)[1])
    return jobs


def test_touching_one_dicom_reruns_only_that_case(run_dir):
    dicom = sorted((run_dir / "resources/demo/demo002/dicom").iterdir())[3]
    time.sleep(1)
    os.utime(dicom)  # `touch`: now, newer than every output
    planned = planned_jobs(smk(run_dir, "-n").stdout)  # up to the split checkpoint
    assert ("ingest", "demo002") in planned, planned
    assert not {case for rule, case in planned if rule == "ingest"} - {"demo002"}, planned
    assert "demo_case" not in {rule for rule, _ in planned}  # the generator does not rerun
    run = smk(run_dir, "--cores", "2")
    ran = {(rule, case) for rule, case in planned_jobs(run.stdout + run.stderr) if case}
    assert {("ingest", "demo002"), ("lung_mask", "demo002")} <= ran, ran
    assert not {case for rule, case in ran if rule in ("ingest", "lung_mask")} - {"demo002"}, ran
    assert "Nothing to be done" in smk(run_dir, "-n").stdout


def test_lint_and_dag(run_dir):
    lint = smk(run_dir, "--lint", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dag = smk(run_dir, "--dag").stdout
    assert dag.lstrip().startswith("digraph") and "train" in dag and "ingest" in dag


def test_no_patient_identity_in_outputs(run_dir):
    identities = [demo_identity(case, seed=2026) for case in CASES]
    secrets = {v for ident in identities for v in ident.values()}  # name, ID, birth date, accession, institution
    secrets |= {ident.patient_name.replace("^", " ") for ident in identities}
    import pydicom

    for case in CASES:  # UIDs from the inputs must not leak either
        ds = pydicom.dcmread(next((run_dir / "resources/demo" / case / "dicom").iterdir()), stop_before_pixels=True)
        secrets |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    assert all(len(s) >= 6 for s in secrets)
    # the DICOM inputs really carry them (so the check below can fail)
    raw = b"".join(p.read_bytes() for p in (run_dir / "resources/demo/demo001/dicom").iterdir())
    assert identities[0].patient_id.encode() in raw
    leaks = []
    for folder in ("results", "logs"):
        for path in (run_dir / folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if path.suffix == ".gz":
                    data = gzip.decompress(data)
                leaks += [(str(path), s) for s in secrets if s.encode() in data]
    assert not leaks, leaks


def test_bad_series_is_quarantined_and_the_cohort_completes(run_dir, tmp_path):
    """source: cases with three good series and one corrupt one: the run ends well, the bad case is listed."""
    workdir = tmp_path / "cohort"
    rows = ["case_id\tpatient_id\tdicom\tlabel_lung"]
    for case in CASES:
        rows.append(f"{case}\tp{case}\t{run_dir}/resources/demo/{case}/dicom\t{run_dir}/resources/demo/{case}/labels/lung.nii.gz")
    bad = tmp_path / "broken_series"
    bad.mkdir()
    (bad / "slice001.dcm").write_bytes(b"not a DICOM file at all")
    rows.append(f"broken\tpbroken\t{bad}\t{run_dir}/resources/demo/demo001/labels/lung.nii.gz")
    (workdir / "config").mkdir(parents=True)
    (workdir / "config/cases.tsv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((run_dir / "config/config.yaml").read_text())
    config.update(source="cases", cases="config/cases.tsv")
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    smk(workdir, "--cores", "2")
    quarantine = (workdir / "results/quarantine.tsv").read_text().splitlines()
    assert len(quarantine) == 2 and quarantine[1].startswith("broken\t"), quarantine
    assert "slice001.dcm" in quarantine[1]
    split = (workdir / "results/split.tsv").read_text()
    assert "broken" not in split and all(case in split for case in CASES)
    assert (workdir / "results/metrics/summary.json").is_file()

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(report: Path, tmp_path: Path, script: str = "") -> str:
    """The report's DOM after headless Chromium ran its JavaScript (``script`` runs 200 ms after load)."""
    page = report.read_text()
    if script:
        hook = f"<script>window.addEventListener('load', () => setTimeout(() => {{ {script} }}, 200));</script>"
        cut = page.rfind("</body>")
        page = page[:cut] + hook + page[cut:]
    copy = tmp_path / f"report{abs(hash(script))}.html"
    copy.write_text(page)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """Open results/report.html as a browser would and find the four result categories and their items."""
    if not CHROMIUM:
        pytest.skip("chromium not found: install the Debian package `chromium` (listed in .ci/apt-packages.txt) "
                    "to check the rendered report")
    report = run_dir / "results/report.html"
    main = rendered_dom(report, tmp_path)
    menu = set(re.findall(r"<span>([^<]+)</span>", main))
    assert {"Workflow", "Statistics", "About", "Data", "Evaluation", "Training", "Workflow details"} <= menu, menu
    assert "Results are grouped in four categories" in main  # the workflow description, rendered from RST

    def listed(category: str, subcategory: str | None = None) -> set[str]:
        view = {"navbarMode": "subcategory", "category": category, "subcategory": subcategory}
        script = f"app.setView({json.dumps(view)});" if subcategory else f"app.showCategory({json.dumps(category)});"
        return {m.strip() for m in re.findall(r">([^<>]+)<", rendered_dom(report, tmp_path, script))}

    assert {"Figures", "Tables", "Overlays of every test case"} <= listed("Evaluation")
    assert {"worst cases", "best cases", "per-case distribution"} <= listed("Evaluation", "Figures")
    assert {"summary with 95% CIs, per case"} <= listed("Evaluation", "Tables")
    assert {"cohort"} <= listed("Data", "Cohort")
    assert {"configuration", "software versions", "run times"} <= listed("Workflow details", "Other")
    # every report item carries a caption that says what it shows
    for caption in ("Cohort: one row per case", "Where the model fails", "with the highest Dice", "Distribution of per-case",
                    "95% percentile-bootstrap", "Run time per rule", "configuration of this run", "Software that made"):
        assert caption in main, caption


def test_killed_retrain_is_trained_again_by_the_next_plain_run(run_dir):
    """A settings change makes Snakemake delete model.pt and retrain; the retrain is preempted (SIGTERM
    to its job) and the job fails. The next plain `snakemake` must train again (resuming the checkpoint)
    and redo what follows, not say "Nothing to be done" with the model missing (issue 11)."""
    import psutil

    model = run_dir / "results/experiments/unet/folds/0/model.pt"
    config = yaml.safe_load((run_dir / "config/config.yaml").read_text())
    config["experiments"]["unet"] = {"epochs": 40}  # long enough to be stopped; the last test: no need to restore
    (run_dir / "config/config.yaml").write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(run_dir), "--cores", "2"]
    proc = subprocess.Popen(cmd, cwd=run_dir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    guard = None
    while guard is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the retrain did not start"
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "train-guard" in " ".join(child.cmdline()) and "experiments/unet/" in " ".join(child.cmdline()):
                    guard = child
        time.sleep(0.05)
    time.sleep(1.0)  # let training begin
    guard.terminate()  # what SLURM sends on preemption: checkpoint, exit 75, the job fails
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and not model.exists(), out[-3000:]
    planned = {rule for rule, _ in planned_jobs(smk(run_dir, "-n").stdout)}
    assert {"train", "predict", "evaluate", "aggregate"} <= planned, planned
    run = smk(run_dir, "--cores", "2")
    assert "train" in {rule for rule, _ in planned_jobs(run.stdout + run.stderr)}
    assert model.is_file()
    predictions = list((run_dir / "results/experiments/unet/predictions").glob("*.nii.gz"))
    assert predictions and all(p.stat().st_mtime_ns > model.stat().st_mtime_ns for p in predictions)
    assert "Nothing to be done" in smk(run_dir, "-n").stdout
