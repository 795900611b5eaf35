"""Discovery rate: ``lungseg discover`` on a tree of many series against a bare header read of the same files.

The tree: ``--series`` series (default 1000) of ``--slices`` slices each, copies of one small demo series
with fresh Study/Series/SOP/Frame-of-reference UIDs and PatientIDs, nested patient/study/series as an
archive is, plus one RTSTRUCT header per ``--rtstruct-every`` series (discovery attaches it). Timed in
the same run, best of ``--repeats``, wall and CPU seconds of this process:

- ``bare_header_read``: ``pydicom.dcmread(path, stop_before_pixels=True)`` of every file (the floor);
- ``discover``: :func:`lungseg.ingest.discover.discover` (file listing, headers, grouping, checks,
  label attachment, pseudonyms), without link folders.

Writes JSON to ``--out`` (default benchmarks/results/discover.json). Run:
``.venv/bin/python -m lungseg.docs_reference record --out benchmarks/results/discover.json --
.venv/bin/python benchmarks/bench_discover.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.demo.cohort import write_demo_case
from lungseg.ingest.discover import discover
from lungseg.ingest.label_objects import RTSTRUCT_SOP_CLASS


def _timed(fn) -> tuple[float, float, object]:  # noqa: ANN001
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def build_tree(root: Path, n_series: int, n_slices: int, rtstruct_every: int) -> list[Path]:
    """The archive below ``root``; returns every file written."""
    template = write_demo_case("demo001", root / "template", 3, n_slices=n_slices, size=32).dicom_dir
    slices = [pydicom.dcmread(p) for p in sorted(template.iterdir())]
    files = []
    for k in range(n_series):
        patient, study, series, frame = f"PAT{k // 2:05d}", generate_uid(), generate_uid(), generate_uid()
        folder = root / "archive" / patient / f"study {k}" / f"{k}.000000-CHEST-{k:05d}"
        folder.mkdir(parents=True)
        for j, ds in enumerate(slices):
            ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = patient, study, series, frame
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = folder / f"1-{j + 1:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        if rtstruct_every and k % rtstruct_every == 0:
            rs = pydicom.Dataset()
            rs.file_meta = FileMetaDataset()
            rs.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            rs.SOPClassUID = rs.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
            rs.SOPInstanceUID = rs.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            rs.SeriesInstanceUID, rs.Modality, rs.PatientID = generate_uid(), "RTSTRUCT", patient
            ref, st, se = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
            se.SeriesInstanceUID, ref.FrameOfReferenceUID = series, frame
            st.RTReferencedSeriesSequence = [se]
            ref.RTReferencedStudySequence = [st]
            rs.ReferencedFrameOfReferenceSequence = [ref]
            path = folder.parent / "RTSTRUCT" / "1-1.dcm"
            path.parent.mkdir()
            rs.save_as(path, enforce_file_format=True)
            files.append(path)
    shutil.rmtree(root / "template")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--rtstruct-every", type=int, default=10, help="one RTSTRUCT per this many series (0: none)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "discover.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = build_tree(root, args.series, args.slices, args.rtstruct_every)
        build_s = time.perf_counter() - t0
        bare, disc, found = [], [], None
        for _ in range(args.repeats):  # alternate, so both see the same page cache and load
            wall, cpu, _r = _timed(lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in files])
            bare.append((wall, cpu))
            wall, cpu, found = _timed(lambda: discover(root / "archive", "bench-secret"))
            disc.append((wall, cpu))
    (bw, bc), (dw, dc) = min(bare), min(disc)
    result = {
        "benchmark": "discovery rate against a bare header read of the same files",
        "tree": {"series": args.series, "slices_per_series": args.slices, "rtstruct_every": args.rtstruct_every,
                 "files": len(files), "build_s": round(build_s, 1)},
        "repeats": args.repeats,
        "bare_header_read": {"wall_s": round(bw, 3), "cpu_s": round(bc, 3), "files_per_s": round(len(files) / bw, 1)},
        "discover": {"wall_s": round(dw, 3), "cpu_s": round(dc, 3), "files_per_s": round(len(files) / dw, 1),
                     "cases": len(found.cases), "rtstruct_attached": sum(1 for c in found.cases if c["rtstruct"])},
        "ratio_discover_vs_bare_wall": round(bw / dw, 3),
        "ratio_discover_vs_bare_cpu": round(bc / dc, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"discover {result['discover']['files_per_s']} files/s vs bare header read "
          f"{result['bare_header_read']['files_per_s']} ({result['ratio_discover_vs_bare_wall']}x); "
          f"{len(found.cases)} cases, {result['discover']['rtstruct_attached']} with an RTSTRUCT")


if __name__ == "__main__":
    main()
