"""``lungseg demo-cohort``: write synthetic chest CT cases (DICOM series + NIfTI labels).

``--layout lidc_archive`` writes the same cases as a TCIA-style LIDC-IDRI archive with reader XML
(:mod:`lungseg.demo.lidc_archive`). Output names only case ids and paths, never the fake patient
identity inside the DICOM files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from lungseg.demo.cohort import demo_case_ids, write_demo_cohort
from lungseg.demo.lidc_archive import diagnosis_row, update_diagnosis_table, write_lidc_archive_case
from lungseg.demo.phantom import NODULE_EDGES, NODULE_KINDS, NODULE_POSITIONS, NoduleSettings

DEFAULT_SEED = 2026
LAYOUTS = ("cases", "lidc_archive")
_NODULES = NoduleSettings()  # the defaults: the cohort as it has always been drawn


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
    parser.add_argument(
        "--nodules-per-case", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(_NODULES.per_case),
        help="number of nodules drawn per case, uniformly from MIN to MAX inclusive (a case gets fewer when "
             f"there is no room left) (default {_NODULES.per_case[0]} {_NODULES.per_case[1]})",
    )
    parser.add_argument(
        "--nodule-diameter-mm", type=float, nargs=2, metavar=("MIN", "MAX"), default=list(_NODULES.diameter_mm),
        help="nodule diameters (mm), drawn uniformly from MIN to MAX "
             f"(default {_NODULES.diameter_mm[0]:g} {_NODULES.diameter_mm[1]:g})",
    )
    parser.add_argument(
        "--nodule-kinds", nargs="+", metavar="KIND", default=list(_NODULES.kinds),
        help=f"nodule kinds to draw, comma- or space-separated, from {', '.join(NODULE_KINDS)} "
             "(solid: soft tissue; part_solid: ground glass around a solid core; ground_glass: -750..-450 HU) "
             f"(default {','.join(_NODULES.kinds)})",
    )
    parser.add_argument(
        "--nodule-positions", nargs="+", metavar="POSITION", default=list(_NODULES.positions),
        help=f"nodule positions to draw, comma- or space-separated, from {', '.join(NODULE_POSITIONS)} "
             "(juxta_pleural: touching the chest wall; juxta_vascular: abutting a vessel) "
             f"(default {','.join(_NODULES.positions)})",
    )
    parser.add_argument(
        "--nodule-edges", metavar="EDGES", default=_NODULES.edges,
        help=f"nodule edges: {' or '.join(NODULE_EDGES)} (partial_volume: each voxel painted by the fraction of "
             "it the nodule covers, the label is the voxels at least half covered) "
             f"(default {_NODULES.edges})",
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="cases",
        help="cases: <out>/<case>/dicom + labels/ (the default); lidc_archive: <out> is a TCIA-style LIDC-IDRI "
             "archive (<out>/LIDC-DEMO-<case>/<study>/<series>/ with 1-NNN.dcm slices and the reader XML of four "
             "simulated readers with ratings; folder names with spaces, an apostrophe and brackets)",
    )
    parser.add_argument(
        "--truth", type=Path, metavar="DIR",
        help="with --layout lidc_archive: also write the ground truth to DIR/<case>/labels/ (lung.nii.gz, "
             "nodule.nii.gz, nodules.json with each nodule's malignancy and the readers' ratings)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _names(values: list[str]) -> tuple[str, ...]:
    """``["a,b", "c"]`` -> ``("a", "b", "c")``."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def nodule_settings(args: argparse.Namespace) -> NoduleSettings:
    """The :class:`NoduleSettings` of the options; a bad value exits with one line naming its option."""
    options = [
        ("--nodules-per-case", {"per_case": tuple(args.nodules_per_case)}),
        ("--nodule-diameter-mm", {"diameter_mm": tuple(args.nodule_diameter_mm)}),
        ("--nodule-kinds", {"kinds": _names(args.nodule_kinds)}),
        ("--nodule-positions", {"positions": _names(args.nodule_positions)}),
        ("--nodule-edges", {"edges": args.nodule_edges}),
    ]
    chosen: dict = {}
    for option, value in options:
        try:
            NoduleSettings(**value)  # this option alone, against the defaults
        except ValueError as exc:
            raise SystemExit(f"lungseg demo-cohort: {option}: {exc}") from None
        chosen.update(value)
    return NoduleSettings(**chosen)


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise SystemExit("lungseg demo-cohort: --seed must be >= 0")
    if args.cases is None and args.n_cases < 1:
        raise SystemExit("lungseg demo-cohort: --n-cases must be >= 1")
    settings = nodule_settings(args)
    case_ids = args.cases if args.cases is not None else demo_case_ids(args.n_cases)
    if args.layout == "lidc_archive":
        return _run_lidc_archive(args, case_ids, settings)
    if args.truth is not None:
        raise SystemExit("lungseg demo-cohort: --truth needs --layout lidc_archive (the cases layout holds its labels)")
    try:
        cases = write_demo_cohort(
            args.out, len(case_ids), args.seed, n_slices=args.slices, size=args.size,
            case_ids=case_ids, progress=not args.no_progress and len(case_ids) > 1, nodule_settings=settings,
        )
    except ValueError as exc:
        raise SystemExit(f"lungseg demo-cohort: {exc}") from exc
    for case in cases:
        print(f"{case.case_id}\t{case.case_dir}", flush=True)
    return 0


def _run_lidc_archive(args: argparse.Namespace, case_ids: list[str], settings: NoduleSettings) -> int:
    """Write the cases into the archive ``args.out`` (and its TCIA-style diagnosis table); print each case id and
    its series folder."""
    diagnoses = []
    for case_id in tqdm(case_ids, desc="demo cases", unit="case", disable=args.no_progress or len(case_ids) < 2):
        try:
            case = write_lidc_archive_case(
                case_id, args.out, args.seed, n_slices=args.slices, size=args.size, nodule_settings=settings,
                truth_root=args.truth,
            )
        except ValueError as exc:
            raise SystemExit(f"lungseg demo-cohort: {exc}") from exc
        diagnoses.append(diagnosis_row(case, args.seed))
        print(f"{case.case_id}\t{case.paths.series_dir}", flush=True)
    update_diagnosis_table(args.out, diagnoses)
    return 0
