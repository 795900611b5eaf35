"""RTSTRUCT rasterisation time per case against the same case's ingest read, one core.

On a planning CT with its structure set (default: ../shared/data/nsclc-radiomics/LUNG1-001, 134 slices
of 512 x 512, ROIs Lung-Right, Lung-Left, GTV-1, Spinal-Cord), taking turns in each round
(:func:`timing.best_times`, best CPU and wall time of ``--repeats``):

- ``ingest_read``: lungseg's read of the series (``lungseg.ingest.scan.read_source``: every slice decoded
  to HU on its grid), what ``lungseg ingest`` spends before any label;
- ``rtstruct``: ``read_rtstruct_labels`` on that grid (parse the file, rasterise every mapped ROI, combine
  into ``lung`` 1/2 and ``tumour``);
- ``rtstruct_parse``: the parse alone (``read_rtstruct``).

Goal: ``ratio_rtstruct_vs_read`` (CPU) <= 0.5. Writes ``benchmarks/results/rtstruct.json`` (or ``--out``).
Run: ``.venv/bin/python benchmarks/bench_rtstruct.py [--case DIR --repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_times  # noqa: E402

from lungseg.ingest.rtstruct import read_rtstruct, read_rtstruct_labels  # noqa: E402
from lungseg.ingest.scan import read_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO.parent / "shared" / "data" / "nsclc-radiomics" / "LUNG1-001"
GOAL = 0.5


def benchmark(case: Path, repeats: int) -> dict:
    image, rtstruct = case / "image", next(iter(sorted((case / "rtstruct").glob("*.dcm"))))
    scan = read_source(image)
    args = (rtstruct, scan.geometry, scan.hu.shape, scan.series_uid)
    labels, notes = read_rtstruct_labels(*args)
    times = best_times(
        {
            "ingest_read": lambda: read_source(image),
            "rtstruct": lambda: read_rtstruct_labels(*args),
            "rtstruct_parse": lambda: read_rtstruct(rtstruct, scan.series_uid),
        },
        repeats,
    )
    rois = read_rtstruct(rtstruct, None)
    litres = float(np.prod(scan.geometry.spacing)) / 1e6
    cpu, wall = times["cpu"], times["wall"]
    return {
        "case": case.name,
        "slices": int(scan.hu.shape[0]),
        "matrix": [int(v) for v in scan.hu.shape[1:]],
        "rois": len(rois),
        "contours": sum(len(r.contours) for r in rois),
        "repeats": repeats,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "wall_s": {k: round(v, 4) for k, v in wall.items()},
        "ratio_rtstruct_vs_read": round(cpu["rtstruct"] / cpu["ingest_read"], 3),
        "wall_ratio_rtstruct_vs_read": round(wall["rtstruct"] / wall["ingest_read"], 3),
        "goal_ratio_at_most": GOAL,
        "volumes_litres": {
            "lung_right": round(float((labels["lung"] == 1).sum()) * litres, 3),
            "lung_left": round(float((labels["lung"] == 2).sum()) * litres, 3),
            "tumour": round(float(labels["tumour"].sum()) * litres, 4),
        },
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="folder with image/ (the series) and rtstruct/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rtstruct.json")
    args = parser.parse_args(argv)
    if not (args.case / "image").is_dir() or not list((args.case / "rtstruct").glob("*.dcm")):
        print(f"bench_rtstruct: no image/ and rtstruct/*.dcm under {args.case} (real data: ../shared/data)", file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    result = {"pinned_to_one_core": hasattr(os, "sched_setaffinity"), **benchmark(args.case, args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu_s", "ratio_rtstruct_vs_read", "volumes_litres")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
