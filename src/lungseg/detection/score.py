"""The two-stage detector's candidate score, and ``lungseg choose-detection-score``: which score, chosen on the
validation scans' candidates.

A candidate's score is one of :data:`SCORES`:

- ``classifier``: the candidate classifier's ``p_nodule``;
- ``product``: ``p_nodule`` times the first stage's mean probability over the candidate (two independent
  judgements of the same component: the classifier sees the patches around it, the network its own voxels).

``first_stage`` (the network's highest probability in the candidate, the one-stage FROC's score) is measured
beside them for reference, never chosen: the two-stage method uses the classifier.

``lungseg choose-detection-score`` computes the FROC of each score on validation candidates (k folds: every
non-test scan, each with its out-of-fold map and scored by the classifier of the fold that did not train on it;
one fold: the validation scans) and writes the one with the highest CPM (ties: the earlier in :data:`SCORES`),
with every score's FROC, to a JSON file that ``lungseg rescore-candidates --score-choice`` reads. The test scans
are never looked at. Without a validation nodule there is nothing to choose on: the file says so and names
``classifier``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from lungseg.detection.candidates import scan_candidates
from lungseg.evaluation.detection import DEFAULT_CANDIDATE_THRESHOLD, candidate_maxima
from lungseg.evaluation.froc import froc_summary
from lungseg.ingest.errors import IngestError

log = logging.getLogger("lungseg.detection")
#: the candidate scores a two-stage detector can use, in the order ties are broken
SCORES = ("classifier", "product")
#: measured beside :data:`SCORES` on the validation candidates, for reference (the one-stage detector's score)
FIRST_STAGE = "first_stage"
DEFAULT_SCORE = SCORES[0]
FIX = "score the candidates of this case's `lungseg candidates` table with `lungseg classify`, at the same threshold"


class ClassifierScores:
    """``lungseg classify`` tables of a candidate classifier, read once: p_nodule per case and candidate."""

    def __init__(self, paths: Sequence[Path]):
        self._rows: dict[str, list[dict[str, str]]] = {}
        self._source: dict[str, Path] = {}
        self._first = paths[0] if paths else Path("-")
        for path in paths:
            with open(path, newline="") as f:
                reader = csv.DictReader(f, delimiter="\t")
                if not {"case", "nodule", "p_nodule"} <= set(reader.fieldnames or ()):
                    raise IngestError(path, "has no case / nodule / p_nodule columns (not the scores of a candidate "
                                      "classifier)", FIX)
                for row in reader:
                    self._rows.setdefault(row["case"], []).append(row)
                    self._source[row["case"]] = path

    def of(self, case_id: str, n: int) -> np.ndarray:
        """p_nodule of candidates 1..n of ``case_id`` (index 0 unused, 0.0); a count or numbering other than 1..n
        is refused in one line naming the table."""
        rows = self._rows.get(case_id, [])
        numbers = sorted(int(r["nodule"]) for r in rows)
        if numbers != list(range(1, n + 1)):
            raise IngestError(self._source.get(case_id, self._first),
                              f"scores {len(rows)} candidate(s) of case {case_id}, its probability map has {n}", FIX)
        scores = np.zeros(n + 1, dtype=np.float64)
        for r in rows:
            scores[int(r["nodule"])] = float(r["p_nodule"])
        return scores


def first_stage_means(volume: np.ndarray, labels: np.ndarray, n: int, scale: float) -> np.ndarray:
    """The first stage's mean probability over candidates 1..n (index 0 unused, 0.0)."""
    means = np.zeros(n + 1, dtype=np.float64)
    if n:
        means[1:] = np.asarray(ndimage.mean(volume, labels, np.arange(1, n + 1)), dtype=np.float64) / scale
    return means


def combine(score: str, p_nodule: np.ndarray, first_stage_mean: np.ndarray) -> np.ndarray:
    """The candidate score ``score`` (one of :data:`SCORES`) from the classifier's and the first stage's."""
    if score == "classifier":
        return np.asarray(p_nodule, dtype=np.float64)
    if score == "product":
        return np.asarray(p_nodule, dtype=np.float64) * np.asarray(first_stage_mean, dtype=np.float64)
    raise ValueError(f"unknown candidate score {score!r}; choose one of {', '.join(SCORES)}")


def read_choice(path: Path) -> str:
    """The score a ``lungseg choose-detection-score`` file names (refused in one line if it names none)."""
    try:
        chosen = json.loads(Path(path).read_text()).get("chosen")
    except (OSError, ValueError, AttributeError) as exc:
        raise IngestError(path, f"cannot be read as a score choice ({exc})",
                          "write it with `lungseg choose-detection-score`") from None
    if chosen not in SCORES:
        raise IngestError(path, f"names the score {chosen!r}, not one of {', '.join(SCORES)}",
                          "write it with `lungseg choose-detection-score`")
    return str(chosen)


def validation_candidates(case_path: Path, probabilities_path: Path, scores: ClassifierScores,
                          threshold: float = DEFAULT_CANDIDATE_THRESHOLD) -> tuple[dict[str, list[list[float]]], int] | None:
    """One validation scan: ``({score name: [[score, reference nodule index or -1], ...]}, reference nodules)`` for
    :data:`FIRST_STAGE` and every name of :data:`SCORES` (the FROC's scan entries); None for a scan without a
    nodule label (nothing to measure on)."""
    found = scan_candidates(case_path, probabilities_path, threshold)
    if found.hits is None:
        log.warning("%s has no nodule label: left out of the choice", case_path)
        return None
    volume, labels, n, scale = found.volume, found.labels, found.n, found.scale
    means = first_stage_means(volume, labels, n, scale)
    by_score = {FIRST_STAGE: candidate_maxima(volume, labels, n, scale)}
    by_score |= {name: combine(name, scores.of(found.case_id, n), means)[1:] for name in SCORES}
    hits = found.hits[1:]
    return {name: [[float(s), int(h)] for s, h in zip(values, hits)] for name, values in by_score.items()}, found.n_reference


def choose(scans: Sequence[tuple[dict[str, list[list[float]]], int]], samples: int = 200) -> dict:
    """The choice from validation scans (:func:`validation_candidates` each): ``{"chosen", "reason", "n_scans",
    "n_nodules", "froc": {name: FROC summary or None}}``; the highest CPM among :data:`SCORES` (ties: the earlier)."""
    names = (FIRST_STAGE, *SCORES)
    froc = {name: froc_summary([(scan[name], n_ref) for scan, n_ref in scans], samples=samples) for name in names}
    n_nodules = int(sum(n_ref for _scan, n_ref in scans))
    result = {"n_scans": len(scans), "n_nodules": n_nodules, "froc": froc}
    if not n_nodules:
        return {"chosen": DEFAULT_SCORE, "reason": f"no validation nodule to choose on: {DEFAULT_SCORE} by default",
                **result}
    cpm = {name: froc[name]["cpm"] for name in SCORES}
    chosen = max(SCORES, key=lambda name: (cpm[name], -SCORES.index(name)))
    reason = "the highest CPM on the validation candidates (" + ", ".join(f"{k} {v:.3f}" for k, v in cpm.items()) + ")"
    return {"chosen": chosen, "reason": reason, **result}


def write_choice(path: Path, choice: dict) -> None:
    """Write the choice as JSON atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(choice, indent=1) + "\n")
    os.replace(partial, path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=Path, nargs="*", required=True, metavar="H5",
                        help="the validation scans' ingested case files (.h5; scans without a nodule label are skipped)")
    parser.add_argument("--probabilities", type=Path, nargs="*", required=True, metavar="PROB",
                        help="each case's first-stage probability map its candidates came from, in the order of --case")
    parser.add_argument("--scores", type=Path, nargs="*", required=True, metavar="TSV",
                        help="`lungseg classify` tables of the candidate classifier on these cases' candidates")
    parser.add_argument("--out", type=Path, required=True, metavar="JSON", help="the choice to write (.json)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD, metavar="P",
                        help=f"the candidate threshold `lungseg candidates` used (default {DEFAULT_CANDIDATE_THRESHOLD})")
    parser.add_argument("--score", choices=("auto", *SCORES), default="auto",
                        help="auto (default): the highest validation CPM; a name: that score (the FROCs are still written)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(args.case) != len(args.probabilities):
        raise SystemExit(f"lungseg choose-detection-score: error: {len(args.case)} --case file(s) but "
                         f"{len(args.probabilities)} --probabilities map(s); give one map per case, in the same order")
    if not 0 < args.threshold < 1:
        raise SystemExit(f"lungseg choose-detection-score: error: --threshold must be in (0, 1), got {args.threshold}")
    scores = ClassifierScores(args.scores)
    scans = [validation_candidates(c, p, scores, args.threshold) for c, p in zip(args.case, args.probabilities)]
    choice = choose([scan for scan in scans if scan is not None])
    if args.score != "auto":
        choice = {**choice, "chosen": args.score, "reason": f"set in the configuration (detection.score: {args.score})"}
    write_choice(args.out, choice)
    log.info("%s: %s (%d validation scan(s), %d nodule(s)) -> %s", choice["chosen"], choice["reason"],
             choice["n_scans"], choice["n_nodules"], args.out)
    return 0
