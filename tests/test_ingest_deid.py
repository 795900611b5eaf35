"""No patient identity or DICOM UID leaves the inputs through discover / ingest / quarantine-table.

Cases carry distinctive fake identities (demo cohort); one bad series sits in a folder named after
its PatientID and SeriesInstanceUID, as archives often do, so its error message must be scrubbed.
Every file written, every file name and everything printed is searched for each identifying value.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
from ingest_data import SEED, demo_case, identifiers, slice_files

from lungseg.cli import main
from lungseg.demo.cohort import demo_identity

LUNGSEG = [sys.executable, "-m", "lungseg"]


def _lidc_xml(folder: Path, path: Path) -> None:
    """A reader XML outlining a square on three slices, keyed by the slices' SOP UIDs (and naming the series)."""
    files = slice_files(folder)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    rois = ""
    for f in files[4:7]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        square = (
            [(x, 20) for x in range(20, 28)]
            + [(27, y) for y in range(21, 28)]
            + [(x, 27) for x in range(26, 19, -1)]
            + [(20, y) for y in range(26, 20, -1)]
        )
        rois += (
            f"<roi><imageZposition>{ds.ImagePositionPatient[2]}</imageZposition><imageSOP_UID>{ds.SOPInstanceUID}"
            "</imageSOP_UID><inclusion>TRUE</inclusion>"
            + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in square)
            + "</roi>"
        )
    path.write_text(
        f'<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader><SeriesInstanceUid>'
        f"{series_uid}</SeriesInstanceUid></ResponseHeader><readingSession><servicingRadiologistID>R1"
        f"</servicingRadiologistID><unblindedReadNodule><noduleID>1</noduleID><characteristics><malignancy>4"
        f"</malignancy></characteristics>{rois}</unblindedReadNodule></readingSession></LidcReadMessage>"
    )


def _subprocess(*args: str) -> str:
    env = dict(os.environ)
    env.pop("LUNGSEG_PSEUDONYM_KEY", None)
    proc = subprocess.run([*LUNGSEG, *args], capture_output=True, text=True, env=env, timeout=300)
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_no_identity_in_any_output(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.delenv("LUNGSEG_PSEUDONYM_KEY", raising=False)
    caplog.set_level(logging.DEBUG)

    def _run(*args: str) -> str:  # in-process: everything printed and logged
        code = main(list(args))
        out = capsys.readouterr()
        text = f"exit {code}\n{out.out}\n{out.err}\n{caplog.text}"
        caplog.clear()
        return text

    demo = tmp_path / "demo"
    good, bad = demo_case(demo, "demo001"), demo_case(demo, "demo002")
    secrets = set()
    for case in (good, bad):
        secrets.update(demo_identity(case.case_id, SEED).values())
        secrets.update(identifiers(case.dicom_dir))
    bad_uid = str(pydicom.dcmread(slice_files(bad.dicom_dir)[0], stop_before_pixels=True).SeriesInstanceUID)
    bad_pid = demo_identity("demo002", SEED).patient_id

    archive = tmp_path / "archive"
    shutil.copytree(good.dicom_dir, archive / "good" / "series")
    _lidc_xml(archive / "good" / "series", archive / "good" / "reads.xml")
    bad_folder = archive / bad_pid / bad_uid
    shutil.copytree(bad.dicom_dir, bad_folder)
    slice_files(bad_folder)[5].unlink()  # a missing slice: quarantined, with the file named in the reason

    out = tmp_path / "out"
    printed = [
        _run(
            "discover",
            str(archive),
            "-o",
            str(out / "cases.tsv"),
            "--link-dir",
            str(out / "links"),
            "--allow-default-secret",
            "--no-progress",
        )
    ]
    with open(out / "cases.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 2
    statuses = []
    for row in rows:
        statuses.append(out / "status" / f"{row['case_id']}.json")
        extra = ["--lidc-xml", row["lidc_xml"]] if row["lidc_xml"] else []
        printed.append(
            _run(
                "ingest",
                row["dicom"],
                "--case-id",
                row["case_id"],
                *extra,
                "-o",
                str(out / "ingest" / f"{row['case_id']}.h5"),
                "--status",
                str(statuses[-1]),
            )
        )
    # the bad series straight from its identifying folder: quarantined and refused, both scrubbed
    statuses.append(out / "status" / "direct.json")
    printed.append(
        _run(
            "ingest",
            str(bad_folder),
            "--case-id",
            "direct",
            "-o",
            str(out / "ingest" / "direct.h5"),
            "--status",
            str(statuses[-1]),
        )
    )
    printed.append(  # the real command line, as a user sees it
        _subprocess("ingest", str(bad_folder), "--case-id", "direct2", "-o", str(out / "ingest" / "direct2.h5"))
    )
    printed.append(_run("quarantine-table", *map(str, statuses), "-o", str(out / "quarantine.tsv")))

    assert "exit 1" in printed[-2] and "<uid>" in printed[-2] and "<redacted>" in printed[-2]
    table = (out / "quarantine.tsv").read_text()
    assert table.count("missing slice") == 2 and "<uid>" in table  # the link-dir case and the direct one
    assert '"status": "ok"' in statuses[0].read_text() or '"status": "ok"' in statuses[1].read_text()
    ok_case = next(out / "ingest" / f"{r['case_id']}.h5" for r in rows if r["lidc_xml"])
    import h5py

    with h5py.File(ok_case, "r") as f:
        assert f["labels/nodule"][()].sum() == 3 * 36  # the 6x6 inside of each 8x8 outline, on 3 slices
        assert "lidc_nodules" in f["annotations"].attrs

    leaks = []
    for path in sorted(out.rglob("*")):
        for secret in secrets:
            if secret.lower() in path.name.lower():
                leaks.append(f"file name {path.name} contains {secret}")
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes().lower()
            leaks += [f"{path.relative_to(out)} contains {s}" for s in secrets if s.lower().encode() in data]
    for text in printed:
        leaks += [f"printed output contains {s}: {text[:300]}" for s in secrets if s.lower() in text.lower()]
    assert not leaks, "\n".join(leaks)
    assert len(secrets) == 2 * (5 + 12 + 3)  # 5 identity values, 12 SOP + study, series, frame UIDs per case
