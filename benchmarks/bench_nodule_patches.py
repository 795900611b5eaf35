"""Nodule patch extraction time per case against the same case's ingest time, in one run.

Cases: ``--cases`` LIDC-style demo cases (``lungseg demo-cohort --layout lidc_archive``: DICOM series plus four
simulated readers' XML, ``--slices`` x ``--size``^2, 3-6 nodules of 4-30 mm) and, with ``--lidc DIR``, the
LIDC-IDRI series folders (with reader XML) in DIR. Per case, one process each, as the workflow runs them:

- ``ingest_s``: ``lungseg ingest SERIES --lidc-xml XML`` (DICOM read, LIDC consensus, HDF5 write)
- ``patches_s``: ``lungseg nodule-patches CASE.h5`` (nodule table + three 64 x 64 planes of 50 mm per nodule)

both as wall seconds of the whole command (interpreter start included), and in-process (``ingest_scan`` +
``write_case`` against :func:`lungseg.classification.cli.nodule_patches`), best of ``--repeats``, the two taking
turns. Prints the ratio patches / ingest per case (the issue's bar: a small fraction).
Writes ``benchmarks/results/nodule_patches.json`` (or ``--out``).
Run: ``.venv/bin/python benchmarks/bench_nodule_patches.py [--cases 3 --slices 120 --size 512 --lidc ../shared/data/lidc-idri]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from lungseg.casefile import write_case  # noqa: E402
from lungseg.classification.cli import SETTINGS, nodule_patches  # noqa: E402
from lungseg.classification.labels import LabelProtocol  # noqa: E402
from lungseg.demo.lidc_archive import write_lidc_archive_case  # noqa: E402
from lungseg.demo.phantom import NoduleSettings  # noqa: E402
from lungseg.docs_reference import machine  # noqa: E402
from lungseg.ingest.scan import IngestOptions, ingest_scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LUNGSEG = [sys.executable, "-m", "lungseg"]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def time_case(name: str, series: Path, xml: Path, work: Path, repeats: int) -> dict:
    """Ingest and nodule-patch times of one series (best of ``repeats``, taking turns)."""
    case = work / f"{name}.h5"
    out = {"patches": work / f"{name}.patches.h5", "table": work / f"{name}.nodules.tsv"}
    protocol = LabelProtocol()
    timings: dict[str, list[float]] = {k: [] for k in ("ingest_cli_s", "patches_cli_s", "ingest_s", "patches_s")}
    rows: list = []
    for _ in range(repeats):
        timings["ingest_cli_s"].append(_wall([*LUNGSEG, "ingest", str(series), "--case-id", name, "--lidc-xml", str(xml),
                                              "-o", str(case)]))
        timings["patches_cli_s"].append(_wall([*LUNGSEG, "nodule-patches", str(case), "--out-patches", str(out["patches"]),
                                               "--out-table", str(out["table"])]))
        start = time.perf_counter()
        write_case(case, ingest_scan(name, series, options=IngestOptions(lidc_xml=xml)))
        timings["ingest_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        rows, _ = nodule_patches(case, out["patches"], out["table"], SETTINGS, protocol)
        timings["patches_s"].append(time.perf_counter() - start)
    best = {k: round(min(v), 4) for k, v in timings.items()}
    n_slices = sum(1 for p in series.iterdir() if p.suffix == ".dcm")
    return {"case": name, "slices": n_slices, "nodules": len(rows), "at_edge": sum(r["at_edge"] == "true" for r in rows),
            **best, "ratio_cli": round(best["patches_cli_s"] / best["ingest_cli_s"], 3),
            "ratio_in_process": round(best["patches_s"] / best["ingest_s"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="LIDC-style demo cases (default 3)")
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lidc", type=Path, help="folder of LIDC-IDRI series folders, each with its reader XML")
    parser.add_argument("--out", type=Path, default=RESULTS / "nodule_patches.json")
    args = parser.parse_args()
    nodules = NoduleSettings(per_case=(3, 6), diameter_mm=(4.0, 30.0), kinds=("solid", "part_solid", "ground_glass"))
    per_case = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(1, args.cases + 1):
            demo = write_lidc_archive_case(f"bench{i:03d}", work / "archive", 7, args.slices, args.size, nodules)
            per_case.append(time_case(demo.case_id, demo.paths.series_dir, demo.paths.xml, work, args.repeats))
            print(json.dumps(per_case[-1]), flush=True)
        for folder in sorted(p for p in (args.lidc.iterdir() if args.lidc else []) if p.is_dir()):
            xml = next(folder.glob("*.xml"), None)
            if xml is not None:
                per_case.append(time_case(folder.name, folder, xml, work, args.repeats))
                print(json.dumps(per_case[-1]), flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"patch_mm": SETTINGS["patch_mm"], "patch_size": SETTINGS["patch_size"], "demo_slices": args.slices,
                     "demo_size": args.size, "repeats": args.repeats},
        "max_ratio_cli": max(c["ratio_cli"] for c in per_case),
        "max_ratio_in_process": max(c["ratio_in_process"] for c in per_case),
        "cases": {c["case"]: {k: v for k, v in c.items() if k != "case"} for c in per_case},
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"patches / ingest, worst case: {result['max_ratio_in_process']:.3f} in process, "
          f"{result['max_ratio_cli']:.3f} as commands -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
