"""``lungseg nodule-patches``: the reference nodules of an ingested case as a table (TSV) and 2.5-D patches (HDF5).

Row i of ``--out-table`` describes patch i of ``--out-patches`` (formats: docs/reference/nodule-table.md,
:mod:`lungseg.classification.nodule_table`, :mod:`lungseg.classification.patches`). A case without nodules
gives a header-only table and an empty (0, 3, S, S) patch set. ``--settings`` is a JSON object with any of
:data:`SETTINGS` (the workflow passes its ``classification`` section); ``--pathology`` is the patient's
pathology-confirmed diagnosis (benign | malignant | empty; TCIA codes 0-3 accepted).

``lungseg nodule-table OUT.tsv CASE.nodules.tsv ...`` (:mod:`lungseg.classification.nodule_table`) concatenates
per-case tables into one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from lungseg.casefile import open_ingested
from lungseg.classification.labels import LabelProtocol, parse_pathology
from lungseg.classification.nodule_table import reference_nodules, table_row, write_nodule_table
from lungseg.classification.patches import extract_patch, write_patches
from lungseg.geometry import Geometry

log = logging.getLogger("lungseg.classification")
#: settings keys and defaults: patch side (mm), pixels per side, the label protocol
SETTINGS = {"patch_mm": 50.0, "patch_size": 64, "benign_max": 2.0, "malignant_min": 4.0, "indeterminate": "exclude"}
#: keys of the workflow's classification section that are not patch settings (ignored here)
OTHER_KEYS = {"enabled", "pathology_column"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", type=Path, help="ingested case file (.h5, from `lungseg ingest`)")
    parser.add_argument("--out-patches", type=Path, required=True, metavar="H5", help="patches to write (<case>.patches.h5)")
    parser.add_argument("--out-table", type=Path, required=True, metavar="TSV", help="nodule table to write (<case>.nodules.tsv)")
    parser.add_argument("--settings", default="{}", metavar="JSON",
                        help=f"JSON object with any of {', '.join(SETTINGS)} (defaults: {json.dumps(SETTINGS)})")
    parser.add_argument("--patient", default=None, help="patient pseudonym for the table (default: the case id)")
    parser.add_argument("--pathology", default="", help="patient-level pathology: benign, malignant or empty (unknown)")
    parser.add_argument("--pathology-source", default="--pathology", metavar="NAME",
                        help="where --pathology came from (case sheet / diagnosis table), named in errors")


def parse_settings(text: str) -> dict:
    """The settings JSON merged over :data:`SETTINGS`; a ValueError naming a bad key or value."""
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--settings is not JSON ({exc})") from None
    if not isinstance(given, dict):
        raise ValueError("--settings must be a JSON object")
    unknown = set(given) - set(SETTINGS) - OTHER_KEYS
    if unknown:
        raise ValueError(f"--settings: unknown key(s) {sorted(unknown)} (known: {', '.join(SETTINGS)})")
    settings = {**SETTINGS, **{k: v for k, v in given.items() if k in SETTINGS}}
    if not float(settings["patch_mm"]) > 0 or int(settings["patch_size"]) < 2:
        raise ValueError("--settings: patch_mm must be > 0 and patch_size >= 2")
    return settings


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = parse_settings(args.settings)
        protocol = LabelProtocol(float(settings["benign_max"]), float(settings["malignant_min"]), settings["indeterminate"])
    except ValueError as exc:
        raise SystemExit(f"lungseg nodule-patches: error: {exc}") from None
    pathology = parse_pathology(args.pathology, source=args.pathology_source, column="pathology")
    start = time.perf_counter()
    rows, sources = nodule_patches(args.case, args.out_patches, args.out_table, settings, protocol,
                                   patient=args.patient, pathology=pathology)
    at_edge = sum(r["at_edge"] == "true" for r in rows)
    log.info("case %s: %d nodule(s) (%s), %d at the volume edge, in %.2f s -> %s", rows[0]["case"] if rows else args.case,
             len(rows), ", ".join(sources) or "none", at_edge, time.perf_counter() - start, args.out_table)
    return 0


def nodule_patches(
    case_path: Path, out_patches: Path, out_table: Path, settings: dict, protocol: LabelProtocol, *,
    patient: str | None = None, pathology: str = "",
) -> tuple[list[dict[str, str]], list[str]]:
    """Write the patches and the table of one case file; its table rows and the nodule sources used."""
    patch_mm, size = float(settings["patch_mm"]), int(settings["patch_size"])
    with open_ingested(case_path) as case:
        case_id = str(case.attrs["case_id"])
        geometry = Geometry.from_attrs(case.attrs)
        nodules = reference_nodules(case, geometry)
        patches = np.zeros((len(nodules), 3, size, size), dtype=np.int16)
        rows = []
        for i, nodule in enumerate(nodules):
            patches[i], at_edge = extract_patch(case["image"], geometry, nodule.centre_mm, patch_mm, size)
            rows.append(table_row(case_id, patient or case_id, nodule, protocol, pathology, at_edge))
    write_patches(out_patches, patches, patch_mm, size)
    write_nodule_table(out_table, rows)
    return rows, sorted({n.source for n in nodules})
