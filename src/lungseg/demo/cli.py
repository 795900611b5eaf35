"""``lungseg demo-cohort``: write synthetic chest CT cases (DICOM series + NIfTI labels).

Output names only case ids and paths, never the fake patient identity inside the DICOM files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.demo.cohort import demo_case_ids, write_demo_cohort

DEFAULT_SEED = 2026


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one sub-folder per case")
    parser.add_argument(
        "--case", dest="cases", action="extend", nargs="+", metavar="ID",
        help="write only these case ids (e.g. demo003); default: demo001..demo<N>",
    )
    parser.add_argument("--n-cases", type=int, default=8, help="number of cases when --case is not given (default 8)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"cohort seed (default {DEFAULT_SEED})")
    parser.add_argument("--slices", type=int, default=48, help="slices per case (default 48)")
    parser.add_argument("--size", type=int, default=256, help="rows and columns per slice (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise SystemExit("lungseg demo-cohort: --seed must be >= 0")
    if args.cases is None and args.n_cases < 1:
        raise SystemExit("lungseg demo-cohort: --n-cases must be >= 1")
    case_ids = args.cases if args.cases is not None else demo_case_ids(args.n_cases)
    try:
        cases = write_demo_cohort(
            args.out, len(case_ids), args.seed, n_slices=args.slices, size=args.size,
            case_ids=case_ids, progress=not args.no_progress and len(case_ids) > 1,
        )
    except ValueError as exc:
        raise SystemExit(f"lungseg demo-cohort: {exc}") from exc
    for case in cases:
        print(f"{case.case_id}\t{case.case_dir}", flush=True)
    return 0
