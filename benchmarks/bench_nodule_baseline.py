"""The classical nodule baseline on demo phantoms: per-nodule sensitivity, false-positive components per
scan, IoU of the found nodules, an FROC, and the run time on one full-size scan.

Phantoms come from :func:`lungseg.demo.phantom.make_phantom` (64 slices of 256 x 256 by default, the demo
cohort's field of view and lung height, 3-5 nodules, seeds 0..N-1); the lung mask is the classical one
(``threshold_3d``, as ``lungseg lung-mask`` writes it). The baseline's mask is its score >= threshold, and
it is scored by the pipeline's own nodule evaluation (:mod:`lungseg.evaluation.detection`): a reference
nodule (a 26-connected component of the nodule label) is found when a mask component overlaps it; every
mask component that overlaps no nodule is one false positive (``detection_counts``); the IoU of a found
nodule is that with the mask voxels given to it (``match_nodules``: a component touching several nodules
is split between them by nearest nodule); per-nodule IoU lists hold 0 for a missed nodule.

``--full-size`` also times one 300 x 512 x 512 phantom; ``--lidc DIR`` also runs on the LIDC-IDRI series
folders (with reader XML) in DIR. Prints the figures (without the per-case rows) and writes them all to
``benchmarks/results/nodule_baseline.json`` (or ``--out``).
Run: ``.venv/bin/python benchmarks/bench_nodule_baseline.py [--cases 10 --full-size --lidc ../shared/data/lidc-idri]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lungseg.docs_reference import machine
from lungseg.evaluation.detection import detection_counts, label_nodules, match_nodules
from lungseg.nodules.classical import NoduleBaselineParams, classical_nodule_candidates, paint_scores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FROC_THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def evaluate(reference: np.ndarray, scores: np.ndarray, spacing: tuple[float, float, float],
          threshold: float = 0.5) -> dict:
    """The mask ``scores >= threshold`` against the reference nodules (``reference > 0``; ``spacing`` x, y, z
    in mm): ``found`` and ``iou`` (0 when missed) per nodule in label order, and ``false_positives``."""
    pred = scores >= threshold
    ref_labels, n_ref = label_nodules(reference)
    nodules = match_nodules(pred, ref_labels, n_ref, tuple(float(s) for s in spacing[::-1]))["nodules"]
    return {"found": [bool(n["detected"]) for n in nodules],
            "iou": [float(n["iou"]) if n["detected"] else 0.0 for n in nodules],
            "false_positives": int(detection_counts(pred, reference)["n_false_positives"])}


def phantom_case(seed: int, n_slices: int = 64, size: int = 256):
    """A demo-like phantom (the cohort's field of view and lung height), its spacing and classical lung mask."""
    from lungseg.demo.phantom import make_phantom
    from lungseg.geometry import Geometry
    from lungseg.lungmask.cli import compute_mask

    rng = np.random.default_rng(seed)
    pixel = round(float(rng.uniform(330.0, 400.0)) / size, 4)
    spacing = (pixel, pixel, round(float(rng.uniform(195.0, 245.0)) / 0.87 / n_slices, 2))
    phantom = make_phantom(rng, n_slices, size, spacing, n_nodules=3 + seed % 3)
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return phantom, spacing, compute_mask(phantom.hu, geometry).mask


def _diameters(phantom) -> list[float]:
    """Drawn diameter of each reference nodule (label order; by the nodule whose centre lies in it, else NaN)."""
    truth, n = label_nodules(phantom.nodule)
    out = []
    for label in range(1, n + 1):
        drawn = [nd.diameter_mm for nd in phantom.nodules if truth[tuple(int(round(v)) for v in nd.center_zyx)] == label]
        out.append(float(max(drawn)) if drawn else float("nan"))
    return out


def benchmark(cases: int, n_slices: int = 64, size: int = 256, min_diameter_mm: float = 5.0,
              params: NoduleBaselineParams | None = None) -> dict:
    """Figures on ``cases`` phantoms (seeds 0 .. cases-1)."""
    per_case, froc = [], {t: {"found": 0, "nodules": 0, "fp": 0} for t in FROC_THRESHOLDS}
    found_all, found_big, ious, fps, seconds = [], [], [], [], []
    for seed in range(cases):
        phantom, spacing, lung = phantom_case(seed, n_slices, size)
        start = time.perf_counter()
        candidates = classical_nodule_candidates(phantom.hu, lung, spacing, params)
        seconds.append(time.perf_counter() - start)
        scores = paint_scores(candidates, phantom.hu.shape)
        diameters = _diameters(phantom)
        m = evaluate(phantom.nodule, scores, spacing, 0.5)
        big = [d >= min_diameter_mm for d in diameters]
        found_all += m["found"]
        found_big += [f for f, b in zip(m["found"], big) if b]
        ious += [i for i, f in zip(m["iou"], m["found"]) if f]
        fps.append(m["false_positives"])
        per_case.append({"seed": seed, "spacing_mm": list(spacing), "diameters_mm": [round(d, 2) for d in diameters],
                         "found": m["found"], "iou": [round(i, 3) for i in m["iou"]],
                         "false_positives": m["false_positives"], "candidates": len(candidates),
                         "seconds": round(seconds[-1], 2)})
        for t in FROC_THRESHOLDS:
            mt = evaluate(phantom.nodule, scores, spacing, t)
            froc[t]["found"] += sum(f for f, b in zip(mt["found"], big) if b)
            froc[t]["nodules"] += sum(big)
            froc[t]["fp"] += mt["false_positives"]
    return {
        "phantoms": f"{cases} x make_phantom({n_slices} slices x {size}^2, n_nodules 3-5, seeds 0..{cases - 1})",
        "nodules": len(found_all),
        f"nodules_ge_{min_diameter_mm:g}mm": len(found_big),
        "sensitivity_all": round(float(np.mean(found_all)), 3) if found_all else None,
        f"sensitivity_ge_{min_diameter_mm:g}mm": round(float(np.mean(found_big)), 3) if found_big else None,
        "false_positives_per_scan": round(float(np.mean(fps)), 2),
        "iou_found_mean": round(float(np.mean(ious)), 3) if ious else None,
        "iou_found_median": round(float(np.median(ious)), 3) if ious else None,
        "seconds_per_scan": round(float(np.mean(seconds)), 2),
        f"froc_ge_{min_diameter_mm:g}mm": [
            {"threshold": t, "sensitivity": round(v["found"] / max(v["nodules"], 1), 3),
             "false_positives_per_scan": round(v["fp"] / cases, 2)} for t, v in froc.items()],
        "cases": per_case,
    }


def full_size_runtime(seed: int = 2026) -> dict:
    """Seconds for one 300 x 512 x 512 phantom (0.7 x 0.7 x 0.8 mm), with what it found."""
    from lungseg.demo.phantom import make_phantom
    from lungseg.geometry import Geometry
    from lungseg.lungmask.cli import compute_mask

    spacing = (0.7, 0.7, 0.8)
    phantom = make_phantom(np.random.default_rng(seed), 300, 512, spacing, n_nodules=5)
    lung = compute_mask(phantom.hu, Geometry(spacing, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))).mask
    start, cpu = time.perf_counter(), time.process_time()
    candidates = classical_nodule_candidates(phantom.hu, lung, spacing)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = evaluate(phantom.nodule, paint_scores(candidates, phantom.hu.shape), spacing, 0.5)
    return {"shape": list(phantom.hu.shape), "spacing_mm": list(spacing), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1), "diameters_mm": [round(d, 2) for d in _diameters(phantom)],
            "found": m["found"], "iou": [round(i, 3) for i in m["iou"]], "false_positives": m["false_positives"],
            "cpu_count": os.cpu_count()}


def lidc_cases(root: str) -> list[dict]:
    """Each LIDC-IDRI series folder under ``root`` with its reader XML: ingested with the readers' consensus
    (``lungseg ingest``'s default), classical lung mask, baseline; found / IoU per consensus nodule, FPs."""
    from lungseg.ingest.scan import IngestOptions, ingest_scan
    from lungseg.lungmask.cli import compute_mask

    rows = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and any(p.glob("*.xml"))):
        case = ingest_scan(folder.name, folder, options=IngestOptions(lidc_xml=next(folder.glob("*.xml"))))
        lung = compute_mask(case.image, case.geometry).mask
        start = time.perf_counter()
        candidates = classical_nodule_candidates(case.image, lung, case.geometry.spacing)
        seconds = time.perf_counter() - start
        m = evaluate(case.labels["nodule"], paint_scores(candidates, case.image.shape), case.geometry.spacing)
        rows.append({"series": folder.name, "shape": list(case.image.shape), "spacing_mm": list(case.geometry.spacing),
                     "found": m["found"], "iou": [round(i, 3) for i in m["iou"]],
                     "false_positives": m["false_positives"], "seconds": round(seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="number of phantoms (default 10)")
    parser.add_argument("--slices", type=int, default=64, help="slices per phantom (default 64)")
    parser.add_argument("--size", type=int, default=256, help="in-plane matrix (default 256)")
    parser.add_argument("--full-size", action="store_true", help="also time one 300 x 512 x 512 phantom")
    parser.add_argument("--lidc", metavar="DIR", help="also run on the LIDC-IDRI series folders (with reader XML) in DIR")
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "nodule_baseline.json",
                        help="write the figures as JSON here (default benchmarks/results/nodule_baseline.json)")
    args = parser.parse_args(argv)
    result = benchmark(args.cases, args.slices, args.size)
    if args.full_size:
        result["full_size"] = full_size_runtime()
    if args.lidc:
        result["lidc"] = lidc_cases(args.lidc)
    result["provenance"] = {
        "command": " ".join([".venv/bin/python benchmarks/bench_nodule_baseline.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
