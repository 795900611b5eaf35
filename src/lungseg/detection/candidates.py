"""``lungseg candidates``: the nodule candidates of a segmentation network's probability map, as a nodule table and
2.5-D patches (the files ``lungseg nodule-patches`` writes, so the classification core trains on them and
``lungseg classify`` scores them).

A candidate is a 26-connected component of p >= ``--threshold`` of the map (:func:`lungseg.evaluation.detection.
candidate_labels`, the FROC's candidates), numbered 1..n in that order: row i of the table (``nodule`` = i + 1) and
patch i belong to candidate i + 1. Centre: the mean position of its voxels (LPS mm); diameter: equivalent sphere.
Label: ``nodule`` when it overlaps a reference nodule of the case's nodule label (the one it overlaps most, as the
FROC matches), ``non_nodule`` when it overlaps none, ``""`` when the case has no nodule label. Source: ``candidate``.

``--with-reference`` (the cases a classifier trains and validates on) appends a row and patch per reference
nodule of the case (the nodules ``lungseg nodule-patches`` finds: LIDC consensus, LUNA16 spheres or the nodule
label), labelled ``nodule``, numbered on from n + 1: the classifier also learns from nodules the first stage
missed (workflow: ``detection.reference_nodules``; on the nodule demo it did worse, see the how-to).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lungseg.casefile import open_ingested
from lungseg.classification.cli import parse_settings
from lungseg.classification.dataset import CANDIDATE_CLASSES
from lungseg.classification.labels import LabelProtocol
from lungseg.classification.nodule_table import ReferenceNodule, reference_nodules, table_row, write_nodule_table
from lungseg.classification.patches import extract_patch, write_patches
from lungseg.evaluation.cli import read_probabilities
from lungseg.evaluation.detection import DEFAULT_CANDIDATE_THRESHOLD, candidate_hits, candidate_labels, label_nodules
from lungseg.geometry import Geometry

log = logging.getLogger("lungseg.detection")
NON_NODULE, NODULE = CANDIDATE_CLASSES
SOURCE = "candidate"


def candidate_nodules(labels: np.ndarray, n: int, geometry: Geometry) -> list[ReferenceNodule]:
    """Centre (mean voxel position, LPS mm), equivalent-sphere diameter and volume of candidates 1..n."""
    if not n:
        return []
    index = np.arange(1, n + 1)
    inside = labels > 0  # one byte per voxel (a float32 volume of ones is 300 MB on a 512 x 512 x 300 scan)
    counts = ndimage.sum_labels(inside, labels, index)
    centres = ndimage.center_of_mass(inside, labels, index)
    voxel_mm3 = float(np.prod(geometry.spacing))
    out = []
    for number, count, centre_zyx in zip(index, counts, centres):
        volume = float(count) * voxel_mm3
        centre = tuple(float(v) for v in geometry.index_to_physical(np.asarray(centre_zyx[::-1])))
        out.append(ReferenceNodule(int(number), centre, (6.0 * volume / math.pi) ** (1.0 / 3.0), volume, SOURCE))
    return out


@dataclass
class ScanCandidates:
    """A scan's candidates (:func:`scan_candidates`)."""

    case_id: str
    geometry: Geometry
    volume: np.ndarray  # the probability map, p * scale
    scale: float
    labels: np.ndarray  # candidate numbers 1..n, 0 outside every candidate
    n: int
    hits: np.ndarray | None  # per candidate number 0..n: the reference nodule it overlaps most or -1; None: no label
    n_reference: int


def scan_candidates(case_path: Path, probabilities_path: Path, threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
                    match_reference: bool = True) -> ScanCandidates:
    """The candidates of a case's probability map (:func:`lungseg.evaluation.detection.candidate_labels`), and
    with ``match_reference`` the reference nodule each overlaps (when the case has a nodule label)."""
    with open_ingested(case_path) as case:
        case_id, geometry, shape = str(case.attrs["case_id"]), Geometry.from_attrs(case.attrs), case["image"].shape
        labelled = match_reference and "labels" in case and "nodule" in case["labels"]
        reference, n_reference = label_nodules(case["labels/nodule"][()]) if labelled else (None, 0)
    volume, scale = read_probabilities(probabilities_path, case_path, shape, geometry)
    labels, n = candidate_labels(volume, threshold, scale)
    hits = candidate_hits(labels, n, reference) if reference is not None else None
    return ScanCandidates(case_id, geometry, volume, scale, labels, n, hits, n_reference)


def write_candidates(case_path: Path, probabilities_path: Path, out_patches: Path, out_table: Path, settings: dict,
                     threshold: float = DEFAULT_CANDIDATE_THRESHOLD, patient: str | None = None,
                     with_reference: bool = False) -> list[dict[str, str]]:
    """Write the candidate patches and table of one scan (see the module docstring); the table rows."""
    patch_mm, size = float(settings["patch_mm"]), int(settings["patch_size"])
    found = scan_candidates(case_path, probabilities_path, threshold)
    geometry, n, hits = found.geometry, found.n, found.hits
    nodules = candidate_nodules(found.labels, n, geometry)
    labels_of = ["" if hits is None else (NODULE if hits[i + 1] >= 0 else NON_NODULE) for i in range(n)]
    with open_ingested(case_path) as case:
        if with_reference:
            references = reference_nodules(case, geometry)
            nodules += [ReferenceNodule(n + 1 + k, r.centre_mm, r.diameter_mm, r.volume_mm3, r.source)
                        for k, r in enumerate(references)]
            labels_of += [NODULE] * len(references)
        patches = np.zeros((len(nodules), 3, size, size), dtype=np.int16)
        rows = []
        protocol = LabelProtocol()
        for i, (nodule, label) in enumerate(zip(nodules, labels_of)):
            patches[i], at_edge = extract_patch(case["image"], geometry, nodule.centre_mm, patch_mm, size)
            row = table_row(found.case_id, patient or found.case_id, nodule, protocol, "", at_edge)
            row["label"] = label
            rows.append(row)
    write_patches(out_patches, patches, patch_mm, size)
    write_nodule_table(out_table, rows)
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", type=Path, help="ingested case file (.h5, from `lungseg ingest`)")
    parser.add_argument("--probabilities", type=Path, required=True, metavar="PROB",
                        help="the network's probability map of the case (`lungseg predict --probabilities`: uint8 255 p)")
    parser.add_argument("--out-patches", type=Path, required=True, metavar="H5", help="patches to write (<case>.patches.h5)")
    parser.add_argument("--out-table", type=Path, required=True, metavar="TSV",
                        help="candidate table to write (<case>.nodules.tsv, beside the patches)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD, metavar="P",
                        help=f"probability at or above which voxels form candidates (default {DEFAULT_CANDIDATE_THRESHOLD})")
    parser.add_argument("--settings", default="{}", metavar="JSON",
                        help="JSON object with patch_mm and / or patch_size (as `lungseg nodule-patches`)")
    parser.add_argument("--patient", default=None, help="patient pseudonym for the table (default: the case id)")
    parser.add_argument("--with-reference", action="store_true",
                        help="also a row and patch per reference nodule of the case, labelled nodule (training cases)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 0 < args.threshold < 1:
        raise SystemExit(f"lungseg candidates: error: --threshold must be in (0, 1), got {args.threshold}")
    try:
        settings = parse_settings(args.settings)
    except ValueError as exc:
        raise SystemExit(f"lungseg candidates: error: {exc}") from None
    start = time.perf_counter()
    rows = write_candidates(args.case, args.probabilities, args.out_patches, args.out_table, settings, args.threshold,
                            args.patient, args.with_reference)
    found = [r for r in rows if r["source"] == SOURCE]
    hits = sum(r["label"] == NODULE for r in found)
    log.info("%d candidate(s) at p >= %g, %d on a reference nodule%s, in %.2f s -> %s", len(found), args.threshold, hits,
             f", + {len(rows) - len(found)} reference nodule(s)" if args.with_reference else "",
             time.perf_counter() - start, args.out_table)
    return 0
