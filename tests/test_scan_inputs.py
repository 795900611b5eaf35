"""A DICOM folder is one workflow input plus a fingerprint parameter: a changed, added or removed slice
still reruns that case only, and a rediscovery that finds the same series leaves every case alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from conftest import REPO
from ingest_data import demo_case, slice_files

from lungseg.ingest.discover import discover
from lungseg.ingest.fingerprint import folder_fingerprint


def test_fingerprint_follows_size_mtime_names_and_link_targets(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.dcm").write_bytes(b"x" * (10 + k))
    (folder / ".hidden").write_text("ignored")
    first = folder_fingerprint(folder)
    assert first == folder_fingerprint(folder) and len(first) == 32
    (folder / ".hidden").write_text("still ignored")
    assert folder_fingerprint(folder) == first
    os.utime(folder / "1.dcm", ns=(1, 1))  # same size, another mtime
    touched = folder_fingerprint(folder)
    assert touched != first
    (folder / "3.dcm").write_bytes(b"new")
    assert folder_fingerprint(folder) != touched
    (folder / "3.dcm").unlink()
    assert folder_fingerprint(folder) == touched
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.dcm").symlink_to(folder / "0.dcm")
    before = folder_fingerprint(links)
    (folder / "0.dcm").write_bytes(b"changed content, longer")
    assert folder_fingerprint(links) != before  # the link's target changed
    assert folder_fingerprint(tmp_path / "missing") == ""


def test_rediscovery_of_the_same_series_keeps_the_link_folders(tmp_path):
    demo = demo_case(tmp_path / "demo", "demo001")
    shutil.copytree(demo.dicom_dir, tmp_path / "archive" / "ct")
    links = tmp_path / "links"
    first = discover(tmp_path / "archive", "secret", link_dir=links)
    folder = Path(first.cases[0]["dicom"])
    stamp = folder.stat().st_mtime_ns
    os.utime(folder, ns=(stamp - 10**9, stamp - 10**9))
    discover(tmp_path / "archive", "secret", link_dir=links)
    assert folder.stat().st_mtime_ns == stamp - 10**9  # untouched: no rerun of its ingest
    (tmp_path / "archive" / "ct" / slice_files(demo.dicom_dir)[0].name).unlink()
    discover(tmp_path / "archive", "secret", link_dir=links)
    assert folder.stat().st_mtime_ns != stamp - 10**9 and len(list(folder.iterdir())) == 11


def _smk(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_changed_or_removed_slice_reruns_that_case_only(tmp_path):
    data = tmp_path / "data"
    rows, folders = ["case_id\tpatient_id\tdicom"], []
    for k in range(2):
        folders.append(demo_case(data, f"demo00{k + 1}", slices=12, size=48).dicom_dir)
        rows.append(f"case{k}\tp{k}\t{folders[-1]}")
    (tmp_path / "cases.tsv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(source="cases", cases=str(tmp_path / "cases.tsv"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/ingest/case{k}.h5" for k in range(2)]
    _smk(tmp_path, "--cores", "2", *targets)

    def planned() -> set[str]:
        out = _smk(tmp_path, "-n", "-p", *targets)
        return {t for t in targets if f"-o {t}" in out}

    assert planned() == set()
    path = slice_files(folders[0])[5]
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[10:20, 10:20] += 100
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert planned() == {"results/ingest/case0.h5"}
    _smk(tmp_path, "--cores", "2", *targets)
    assert planned() == set()
    slice_files(folders[1])[0].unlink()
    assert planned() == {"results/ingest/case1.h5"}
