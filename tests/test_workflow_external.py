"""The external test set (config external_test, workflow/rules/external.smk): its jobs in the DAG only when it is
set, its case sheet checked at start, and end to end the tiny nodule demo's models on the real LIDC-IDRI slices in
../shared/data, with metrics, report page and overlays that name no DICOM identifier."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA
from test_workflow_experiments import jobs, smk

LIDC = SHARED_DATA / "lidc-idri"
#: the two LIDC-IDRI series in ../shared/data: folder (= DICOM PatientID) and reader XML
LIDC_SERIES = {"lidc001": ("LIDC-IDRI-0001", "69.xml"), "lidc002": ("LIDC-IDRI-0003", "72.xml")}


def write_config(workdir: Path, **changes: object) -> dict:
    """config/config.yaml of the workdir: the shipped one with ``changes`` merged per section."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    return config


def write_sheet(path: Path, rows: dict[str, dict[str, str]]) -> None:
    columns = ["case_id", "patient_id", *sorted({k for row in rows.values() for k in row} - {"patient_id"})]
    lines = ["\t".join(columns)] + ["\t".join([case, *(row.get(c, "") for c in columns[1:])]) for case, row in rows.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def tiny_lung(workdir: Path, **changes: object) -> dict:
    return write_config(workdir, demo={"n_cases": 5, "slices": 12, "size": 64},
                        train={"epochs": 1, "image_size": 32, "base_channels": 4, "depth": 2},
                        scaling={"enabled": False}, evaluate={"bootstrap_samples": 100}, **changes)


def external_demo_sheet(workdir: Path, n_cases: int = 2) -> Path:
    """Two synthetic cases of another seed as an external set (lung labels), pseudonyms ext001, ext002."""
    folder = workdir / "external_scans"
    subprocess.run([sys.executable, "-m", "lungseg", "demo-cohort", "--out", str(folder), "--n-cases", str(n_cases),
                    "--seed", "7", "--slices", "12", "--size", "64", "--no-progress"], check=True, capture_output=True)
    rows = {f"ext{i:03d}": {"patient_id": f"extp{i:03d}", "dicom": str(folder / f"demo{i:03d}/dicom"),
                            "label_lung": str(folder / f"demo{i:03d}/labels/lung.nii.gz")} for i in range(1, n_cases + 1)}
    write_sheet(workdir / "config/external.tsv", rows)
    return workdir / "config/external.tsv"


EXTERNAL_RULES = {"external_ingest", "external_quarantine", "external_lung_mask", "external_predict",
                  "external_nodule_baseline", "external_evaluate", "external_evaluate_baselines", "external_aggregate",
                  "external_overlay", "external_page"}


def test_external_jobs_only_with_external_test(tmp_path: Path) -> None:
    """A dry run asked for the external quarantine table plans one ingest per external case and the checkpoint; without
    external_test no rule makes it, and the default target plans no external job."""
    with_set = tmp_path / "with"
    tiny_lung(with_set, external_test={"name": "ext", "cases": "config/external.tsv"})
    write_sheet(with_set / "config/external.tsv", {
        "ext001": {"patient_id": "extp001", "dicom": str(tmp_path / "scans/a")},
        "ext002": {"patient_id": "extp002", "dicom": str(tmp_path / "scans/b")},
    })
    planned = jobs(smk(with_set, "-n", "results/external/ext/quarantine.tsv").stdout)
    assert sorted(w["case"] for rule, w in planned if rule == "external_ingest") == ["ext001", "ext002"], planned
    assert "external_quarantine" in {rule for rule, _ in planned}
    assert not {rule for rule, _ in planned} & {"ingest", "split"}, planned  # not the cohort's

    without = tmp_path / "without"
    tiny_lung(without)
    proc = smk(without, "-n", "results/external/ext/quarantine.tsv", check=False)
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr
    assert not {rule for rule, _ in jobs(smk(without, "-n").stdout)} & EXTERNAL_RULES


def test_external_rules_have_a_log_and_a_benchmark(tmp_path: Path) -> None:
    """The rules as Snakemake loads them with config/lidc_external.yaml's set (the sheet is read, no path opened)."""
    from test_workflow_rules import _config, _loaded_rules

    config = _config(external_test={"name": "lidc", "cases": str(REPO / "config/lidc_external.tsv")})
    rules = _loaded_rules(tmp_path, config)
    assert set(rules) >= EXTERNAL_RULES, sorted(rules)
    assert {name: flags for name, flags in rules.items() if name in EXTERNAL_RULES and not all(flags)} == {}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ({"LIDC-IDRI-0001": {"patient_id": "p1", "dicom": "data/LIDC-IDRI-0001"}}, "case_id 'LIDC-IDRI-0001'"),
        ({"ext001": {"patient_id": "LIDC-IDRI-0001", "dicom": "data/LIDC-IDRI-0001"}}, "patient_id 'LIDC-IDRI-0001'"),
        ({"ext001": {"patient_id": "demo002", "dicom": "data/x"}}, "demo002 are in the cohort too"),
    ],
)
def test_identifying_or_shared_external_ids_stop_at_start(tmp_path: Path, rows: dict, expected: str) -> None:
    tiny_lung(tmp_path, external_test={"name": "ext", "cases": "config/external.tsv"})
    write_sheet(tmp_path / "config/external.tsv", rows)
    proc = smk(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out, out
    assert "Traceback" not in out and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_full_external_dag_after_the_checkpoints(tmp_path: Path) -> None:
    """Lung target, two experiments: after the split and the external quarantine ran, the dry run plans every
    external job: mask, prediction, metrics and overlay per experiment and case, one aggregate and one page."""
    tiny_lung(tmp_path, external_test={"name": "ext", "cases": "config/external.tsv"})
    external_demo_sheet(tmp_path)
    smk(tmp_path, "--cores", "2", "results/split.tsv", "results/external/ext/quarantine.tsv")
    planned = jobs(smk(tmp_path, "-n").stdout)
    count = {rule: sum(r == rule for r, _ in planned) for rule in EXTERNAL_RULES}
    assert count == {"external_ingest": 0, "external_quarantine": 0, "external_lung_mask": 2, "external_predict": 4,
                     "external_nodule_baseline": 0, "external_evaluate": 4, "external_evaluate_baselines": 2,
                     "external_aggregate": 1, "external_overlay": 4, "external_page": 1}, count
    predicted = {(w["experiment"], w["case"]) for r, w in planned if r == "external_predict"}
    assert predicted == {(e, c) for e in ("unet", "dense_unet") for c in ("ext001", "ext002")}
    # the cohort's own jobs are there too, and never on the external cases
    assert all(w.get("case", "").startswith("demo") for r, w in planned if r in ("predict", "evaluate", "lung_mask"))


def _leaks(folder: Path, needles: set[str]) -> list[tuple[str, str]]:
    found = []
    for path in folder.rglob("*"):
        found += [(str(path), s) for s in needles if s.lower() in str(path.relative_to(folder)).lower()]
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            found += [(str(path), s) for s in needles if s.encode() in data]
    return found


@pytest.mark.slow
def test_nodule_demo_on_real_lidc_scans(tmp_path: Path) -> None:
    """config/nodule.yaml + config/lidc_external.yaml at tiny size (4 phantoms, 1 epoch, one experiment): the model
    runs on the two real LIDC-IDRI series; the external metrics, summary and report page exist, the page has the
    gap sentence and the overlays, and nothing under results/ or logs/ names the scans' PatientIDs or UIDs."""
    if not LIDC.is_dir():
        pytest.skip(f"real LIDC-IDRI slices not found at {LIDC} (clone with ../shared beside the repo)")
    import pydicom

    external = yaml.safe_load((REPO / "config/lidc_external.yaml").read_text())["external_test"]
    assert external["name"] == "lidc"
    # the shipped sheet, its paths made absolute (they are relative to the repository root)
    shipped = (REPO / external["cases"]).read_text().splitlines()
    header, rows = shipped[0].split("\t"), [line.split("\t") for line in shipped[1:]]
    assert [r[0] for r in rows] == list(LIDC_SERIES)
    sheet = {r[0]: {c: (str((REPO / v).resolve()) if c in ("dicom", "lidc_xml") else v) for c, v in zip(header, r)}
             for r in rows}
    # as documented, `--configfile config/nodule.yaml config/lidc_external.yaml`, plus a tiny overlay: 4 phantoms,
    # 1 epoch of 32 patches, the reference experiment only (the others `false`: left out)
    write_config(tmp_path)
    for name in ("nodule.yaml", "lidc_external.yaml"):
        (tmp_path / "config" / name).write_text((REPO / "config" / name).read_text())
    nodule = yaml.safe_load((REPO / "config/nodule.yaml").read_text())
    reference = nodule["experiments"]["reference"]
    others = {name: False for name in {*nodule["experiments"], *yaml.safe_load((REPO / "config/config.yaml").read_text())
                                       ["experiments"]} - {"reference", "grid", reference}}
    tiny = {"demo": {"n_cases": 4, "slices": 16, "size": 64, "nodules_per_case": [1, 3]},
            "train": {"epochs": 1, "patches_per_epoch": 32, "batch_size": 8, "base_channels": 4, "depth": 2,
                      "patch_size": 32},
            "experiments": {"reference": reference, reference: {}, **others},
            "evaluate": {"bootstrap_samples": 100}}
    (tmp_path / "config/tiny.yaml").write_text(yaml.safe_dump(tiny))
    write_sheet(tmp_path / external["cases"], {c: {k: v for k, v in r.items() if k != "case_id"} for c, r in sheet.items()})
    results = tmp_path / nodule["results"]
    page = results / "report/external_lidc.html"
    args = ["--configfile", "config/config.yaml", "config/nodule.yaml", "config/lidc_external.yaml", "config/tiny.yaml",
            "--", str(page.relative_to(tmp_path))]  # the page needs every external output and the internal summary
    started = time.monotonic()
    run = smk(tmp_path, "--cores", "2", *args)
    print(f"tiny nodule demo + LIDC external set: {time.monotonic() - started:.0f} s")
    ran = jobs(run.stdout + run.stderr)
    assert {(w["experiment"], w["case"]) for r, w in ran if r == "external_predict"} == {
        (reference, c) for c in LIDC_SERIES}
    assert sorted(w["case"] for r, w in ran if r == "external_nodule_baseline") == sorted(LIDC_SERIES)
    assert all(w.get("case") not in LIDC_SERIES for r, w in ran if r in ("ingest", "lung_mask", "predict"))

    ext = results / "external/lidc"
    assert (ext / "quarantine.tsv").read_text().splitlines()[1:] == []  # both series ingested
    summary = json.loads((ext / "metrics/summary.json").read_text())
    assert set(summary) == {reference, "classical_nodule", "all_background"}
    for method in (reference, "classical_nodule"):
        assert summary[method]["n_cases"] == 2
        assert summary[method]["detection"]["n_nodules"] == 2  # the readers' consensus nodule of each series
        assert "froc" in summary[method]
    csv_cases = {line.split(",")[0] for line in (ext / "metrics/metrics.csv").read_text().splitlines()[1:]}
    assert csv_cases == set(LIDC_SERIES)
    text = page.read_text()
    assert f"The gap of {reference}:" in text and "internal test set" in text and "classical_nodule" in text
    assert text.count("data:image/png;base64,") == 2  # 1 experiment x 2 cases
    for case in LIDC_SERIES:
        assert (ext / f"plots/overlays/{reference}/{case}.png").is_file()

    # no DICOM identifier of the LIDC scans in any output, log or file name
    needles = {"LIDC-IDRI"}
    for folder, _ in LIDC_SERIES.values():
        ds = pydicom.dcmread(sorted((LIDC / folder).glob("*.dcm"))[0], stop_before_pixels=True)
        needles |= {str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0003"} <= needles
    leaks = _leaks(results, needles) + _leaks(tmp_path / "logs", needles)
    assert not leaks, leaks[:10]
    assert "Nothing to be done" in smk(tmp_path, "-n", *args).stdout
