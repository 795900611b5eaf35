"""`source: discover`: the discovery checkpoint finds the series of an archive-like tree, the DAG ingests
them (LIDC XML found beside a series, config's target spacing) and masks the lungs."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO, SHARED_DATA
from ingest_data import demo_case, edit, slice_files
from pydicom.uid import generate_uid

pytestmark = pytest.mark.slow
SECRET = "workflow-discover-secret-42"
TARGET_SPACING = [1.5, 1.5, 2.5]


def smk(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, LUNGSEG_PSEUDONYM_KEY=SECRET)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("discover")
    archive = work / "archive"
    for k, case in enumerate(("demo001", "demo002")):  # nested at different depths
        series = demo_case(work / "demo", case, slices=16, size=64).dicom_dir
        shutil.copytree(series, archive / f"patient{k}" / "study" / ("ct" if k else "a/b/ct"))
    scout = archive / "patient0" / "study" / "scout"  # a localizer beside a series: skipped
    scout.mkdir()
    shutil.copy(slice_files(archive / "patient1" / "study" / "ct")[0], scout / "IM0001")

    def make_scout(ds, k):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesInstanceUID = generate_uid()

    edit([scout / "IM0001"], make_scout)
    lidc = SHARED_DATA / "lidc-idri" / "LIDC-IDRI-0001"
    if lidc.is_dir():  # real slices with the readers' XML beside them
        shutil.copytree(lidc, archive / "lidc" / "LIDC-IDRI-0001")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(source="discover", discover={"root": str(archive), "min_slices": 10})
    config["ingest"]["target_spacing"] = TARGET_SPACING
    (work / "config").mkdir()
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/split.tsv", "results/quarantine.tsv", "results/lungmask/qa.tsv"]
    log = smk(work, "--cores", "2", *targets)
    return work, log, lidc.is_dir(), targets


def sheet(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_checkpoint_finds_series_and_skips_the_scout(run):
    work, log, with_lidc, _ = run
    cases = sheet(work / "results/discovered/cases.tsv")
    assert len(cases) == 2 + with_lidc, cases
    assert all(row["case_id"].startswith("c") and "demo" not in row["case_id"] for row in cases)
    # the sheet points at pseudonymous link folders, not the archive's paths
    assert all(row["dicom"].startswith("results/discovered/series/") or "/results/discovered/series/" in row["dicom"]
               for row in cases), cases
    skipped = sheet(work / "results/discovered/skipped.tsv")
    assert any("scout" in row["reason"] for row in skipped), skipped
    split = sheet(work / "results/split.tsv")
    assert sorted(r["case_id"] for r in split) == sorted(r["case_id"] for r in cases)
    assert (work / "logs/discover/discover.log").is_file()


def test_ingest_uses_config_spacing_and_lidc_xml(run):
    work, _, with_lidc, _ = run
    for row in sheet(work / "results/discovered/cases.tsv"):
        with h5py.File(work / "results/ingest" / f"{row['case_id']}.h5", "r") as f:
            assert np.allclose(f.attrs["spacing"], TARGET_SPACING), dict(f.attrs)
            assert not np.allclose(f.attrs["source_spacing"], TARGET_SPACING)
            if row["lidc_xml"]:
                assert f["labels/nodule"][...].any()  # the readers' consensus, through --lidc-xml
    if not with_lidc:
        pytest.skip("../shared/data/lidc-idri not found: the LIDC XML part of this test did not run")
    assert sum(bool(row["lidc_xml"]) for row in sheet(work / "results/discovered/cases.tsv")) == 1


def test_nothing_left_to_do_and_rediscovery_on_request(run):
    work, _, _, targets = run
    assert "Nothing to be done" in smk(work, "-n", *targets)
    planned = smk(work, "-n", "--forcerun", "discover", "--until", "discover")
    assert "discover" in planned
