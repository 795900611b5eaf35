"""``lungseg rescore-candidates``: a scan's nodule mask and probability map with every candidate scored by the
false-positive classifier.

The candidates are found again in the network's probability map with the threshold ``lungseg candidates`` used
(the same components, numbered alike), and each takes its classifier probability ``p_nodule`` from the ``lungseg
classify`` table (rows of this case, ``nodule`` = candidate number; a count or numbering that differs is refused).
Its score p_c is ``--score`` of :mod:`lungseg.detection.score` (``classifier``: p_nodule; ``product``: p_nodule
times the network's mean probability over the candidate), or the one ``--score-choice`` names (the file ``lungseg
choose-detection-score`` wrote from the validation scans).

- probability map (uint8, round(255 p), at least 1): every voxel of candidate c holds p_c, the rest 0. Read at
  :data:`lungseg.detection.settings.RESCORED_THRESHOLD` (the lowest non-zero value) it gives the FROC the same
  candidates, each scored by the classifier; no candidate drops out, so the two-stage curve reaches the
  sensitivity of the first stage.
- mask: the network's mask where it lies in a candidate with p_c >= ``--mask-threshold``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from lungseg.detection.candidates import scan_candidates
from lungseg.detection.score import DEFAULT_SCORE, SCORES, ClassifierScores, combine, first_stage_means, read_choice
from lungseg.evaluation.detection import DEFAULT_CANDIDATE_THRESHOLD
from lungseg.geometry import read_volume, write_volume
from lungseg.ingest.errors import IngestError

log = logging.getLogger("lungseg.detection")
def rescore(case_path: Path, mask_path: Path, probabilities_path: Path, scores_path: Path, out_mask: Path,
            out_probabilities: Path, threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
            mask_threshold: float = 0.5, score: str = DEFAULT_SCORE) -> tuple[int, int]:
    """Write the rescored mask and probability map (see the module docstring); (candidates, candidates kept)."""
    found = scan_candidates(case_path, probabilities_path, threshold, match_reference=False)
    geometry, labels, n = found.geometry, found.labels, found.n
    mask, _ = read_volume(str(mask_path))
    if mask.shape != labels.shape:
        raise IngestError(mask_path, f"is not on the grid of {case_path} (shape {mask.shape} vs {labels.shape})",
                          "give the mask `lungseg predict` wrote with the probability map")
    p_nodule = ClassifierScores([scores_path]).of(found.case_id, n)
    scores = combine(score, p_nodule, first_stage_means(found.volume, labels, n, found.scale))
    value = np.maximum(np.rint(255.0 * scores), 1.0).astype(np.uint8)
    value[0] = 0  # outside every candidate
    painted = value[labels]
    kept = scores >= mask_threshold
    kept[0] = False
    write_volume(str(out_probabilities), painted, geometry)
    write_volume(str(out_mask), ((mask > 0) & kept[labels]).astype(np.uint8), geometry)
    return n, int(kept.sum())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", type=Path, help="ingested case file (.h5): the scan's id and grid")
    parser.add_argument("--mask", type=Path, required=True, help="the network's mask of the case (`lungseg predict -o`)")
    parser.add_argument("--probabilities", type=Path, required=True, metavar="PROB",
                        help="the network's probability map the candidates came from (`lungseg predict --probabilities`)")
    parser.add_argument("--scores", type=Path, required=True, metavar="TSV",
                        help="`lungseg classify` output of the candidate classifier (p_nodule per case and candidate)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="MASK", help="rescored mask to write (.nii.gz)")
    parser.add_argument("--out-probabilities", type=Path, required=True, metavar="PROB",
                        help="rescored probability map to write (.nii.gz, uint8 round(255 p_nodule) per candidate)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD, metavar="P",
                        help=f"the candidate threshold `lungseg candidates` used (default {DEFAULT_CANDIDATE_THRESHOLD})")
    parser.add_argument("--mask-threshold", type=float, default=0.5, metavar="P",
                        help="candidate score at or above which a candidate stays in the mask (default 0.5)")
    score = parser.add_mutually_exclusive_group()
    score.add_argument("--score", choices=SCORES, default=None,
                       help=f"the candidate score: classifier (p_nodule) or product (p_nodule x the network's mean "
                       f"probability over the candidate); default {DEFAULT_SCORE}")
    score.add_argument("--score-choice", type=Path, default=None, metavar="JSON",
                       help="the score named by this `lungseg choose-detection-score` file (chosen on validation scans)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("threshold", "mask_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise SystemExit(f"lungseg rescore-candidates: error: --{name.replace('_', '-')} must be in [0, 1]")
    score = read_choice(args.score_choice) if args.score_choice else (args.score or DEFAULT_SCORE)
    n, kept = rescore(args.case, args.mask, args.probabilities, args.scores, args.output, args.out_probabilities,
                      args.threshold, args.mask_threshold, score)
    log.info("%d candidate(s) scored by %s, %d with a score >= %g kept in the mask -> %s", n, score, kept,
             args.mask_threshold, args.output)
    return 0
