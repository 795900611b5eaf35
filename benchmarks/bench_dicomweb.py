"""Retrieve rate (slices/s) from a local Orthanc through lungseg against a bare dicomweb-client retrieve.

Starts an Orthanc with its DICOMweb plugin in a temporary folder (``lungseg.dicomweb.orthanc``), uploads
``--series`` demo CT series of ``--slices`` slices of ``--size``² (Orthanc's REST /instances), then, taking
turns in each of ``--repeats`` rounds (:func:`timing.best_times`, best wall and CPU time):

- ``lungseg``: ``retrieve_series`` into an empty archive: per series a QIDO-RS instance list, one WADO-RS
  stream, each instance written as a Part-10 file (atomic rename), the folder renamed into place;
- ``bare``: dicomweb-client's ``retrieve_series`` of the same series, the datasets kept in memory;
- ``bare_save``: the same plus writing each dataset to a file (what a script retrieving to disk does).

The query (``query_ct_series``: QIDO-RS of the studies and their series) is timed on its own. Wall time
counts (the server's work is in another process); CPU time is this process only. Writes
``benchmarks/results/dicomweb.json`` (or ``--out``). Needs the Debian packages orthanc and orthanc-dicomweb.
Run: ``.venv/bin/python benchmarks/bench_dicomweb.py [--series 3 --slices 64 --size 256 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pydicom
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_times  # noqa: E402

from lungseg.demo.cohort import write_demo_case  # noqa: E402
from lungseg.dicomweb.client import Pacs  # noqa: E402
from lungseg.dicomweb.orthanc import find_orthanc, free_port, start_orthanc, stop_orthanc  # noqa: E402
from lungseg.dicomweb.retrieve import query_ct_series, retrieve_series  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-dicomweb-secret"


def benchmark(work: Path, n_series: int, slices: int, size: int, repeats: int) -> dict:
    server = start_orthanc(work / "orthanc", free_port())
    try:
        for k in range(n_series):
            case = write_demo_case(f"bench{k:03d}", work / "demo", seed=7, n_slices=slices, size=size)
            for path in sorted(case.dicom_dir.glob("*.dcm")):
                requests.post(f"{server.http_url}/instances", data=path.read_bytes(), timeout=60).raise_for_status()
        pacs = Pacs(server.dicomweb_url)
        refs = query_ct_series(pacs, {}, SECRET)
        assert len(refs) == n_series, refs
        rounds = {"n": 0}

        def through_lungseg() -> None:
            rounds["n"] += 1
            archive = work / f"archive{rounds['n']}"
            results = retrieve_series(pacs, refs, archive, SECRET, progress=False)
            assert sum(r.slices for r in results) == n_series * slices
            shutil.rmtree(archive)

        def bare(save: bool) -> None:
            folder = work / "bare"
            folder.mkdir(exist_ok=True)
            n = 0
            for ref in refs:
                for ds in pacs.client.retrieve_series(ref.study_uid, ref.series_uid):
                    n += 1
                    if save:
                        pydicom.dcmwrite(folder / f"{n:05d}.dcm", ds, enforce_file_format=True)
            assert n == n_series * slices
            shutil.rmtree(folder)

        times = best_times({"lungseg": through_lungseg, "bare": lambda: bare(False), "bare_save": lambda: bare(True),
                            "query": lambda: query_ct_series(pacs, {}, SECRET)}, repeats)
    finally:
        stop_orthanc(work / "orthanc")
    total = n_series * slices
    wall, cpu = times["wall"], times["cpu"]
    rate = {name: round(total / wall[name], 1) for name in ("lungseg", "bare", "bare_save")}
    return {
        "series": n_series,
        "slices_per_series": slices,
        "matrix": [size, size],
        "repeats": repeats,
        "orthanc": "Orthanc + DICOMweb plugin on 127.0.0.1 (lungseg pacs start's config)",
        "slices_per_s": rate,
        "wall_s": {name: round(v, 3) for name, v in wall.items()},
        "cpu_s": {name: round(v, 3) for name, v in cpu.items()},
        "ratio_lungseg_vs_bare": round(rate["lungseg"] / rate["bare"], 2),
        "ratio_lungseg_vs_bare_save": round(rate["lungseg"] / rate["bare_save"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=3, help="demo CT series in the PACS (default 3)")
    parser.add_argument("--slices", type=int, default=64, help="slices per series (default 64)")
    parser.add_argument("--size", type=int, default=256, help="rows and columns (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each is kept (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dicomweb.json")
    args = parser.parse_args()
    find_orthanc()  # a clear error when Orthanc or its DICOMweb plugin is missing
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        result = benchmark(Path(tmp), args.series, args.slices, args.size, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["slices_per_s"]), f"lungseg/bare {result['ratio_lungseg_vs_bare']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
