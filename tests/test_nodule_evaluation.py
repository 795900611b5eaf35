"""Nodule evaluation (issue 13): per-nodule matching, FROC candidates, the FROC itself (LUNA16 rules),
their aggregation, the no-nodule test set, the CLIs end to end and the report's Nodules table and FROC figure."""

from __future__ import annotations

import csv
import io
import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.evaluation.aggregate import rows_to_csv, summarise
from lungseg.evaluation.detection import detection_counts, find_candidates, label_nodules, match_nodules
from lungseg.evaluation.froc import FP_RATES, froc_curve, froc_lists, froc_summary, sensitivity_at
from lungseg.geometry import Geometry, write_volume
from lungseg.report.metrics_table import NO_NODULES, metrics_html

GEOM = Geometry((0.7, 0.7, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SPACING_ZYX = (1.5, 0.7, 0.7)
VOXEL_MM3 = 0.7 * 0.7 * 1.5
SHAPE = (20, 48, 48)


def box(z, y, x, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[slice(*z), slice(*y), slice(*x)] = 1
    return m


def _match(pred, ref):
    labels, n = label_nodules(ref)
    return match_nodules(pred, labels, n, SPACING_ZYX)


# ---------------------------------------------------------------- per-nodule matching


def test_one_nodule_exact_one_half_found_and_a_false_positive():
    a, b = box((2, 6), (5, 10), (5, 10)), box((12, 16), (30, 38), (30, 38))  # 100 and 256 voxels
    pred = a | box((12, 16), (30, 38), (30, 34)) | box((10, 12), (40, 44), (2, 6))  # a, the half of b, a blob
    m = _match(pred, a | b)
    first, second = m["nodules"]
    assert first["detected"] and first["dice"] == 1.0 and first["iou"] == 1.0 and first["volume_error_mm3"] == 0.0
    assert second["dice"] == pytest.approx(2 / 3) and second["iou"] == pytest.approx(0.5)
    assert second["volume_error_mm3"] == pytest.approx(-128 * VOXEL_MM3) and second["volume_error_pct"] == -50.0
    assert second["volume_mm3"] == pytest.approx(256 * VOXEL_MM3)
    assert second["diameter_mm"] == pytest.approx((6 * 256 * VOXEL_MM3 / math.pi) ** (1 / 3))
    assert m["nodule_dice"] == pytest.approx((1 + 2 / 3) / 2) and m["nodule_iou"] == pytest.approx(0.75)
    assert m["nodule_volume_error_pct"] == pytest.approx(25.0)  # mean absolute: (0 + 50) / 2
    assert m["voxels"] == {"tp": 228, "fp": 32, "fn": 128}
    # the blob is a false positive of the mask's own detection counts, which keep their meaning
    assert detection_counts(pred, a | b)["n_false_positives"] == 1


def test_missed_nodule_has_no_segmentation_scores():
    a, b = box((2, 6), (5, 10), (5, 10)), box((12, 16), (30, 38), (30, 38))
    m = _match(a, a | b)
    assert m["nodules"][1] == {**m["nodules"][1], "detected": False, "dice": None, "iou": None,
                               "volume_error_mm3": None, "volume_error_pct": None}
    assert m["nodule_dice"] == 1.0  # the mean over the found nodule only; the miss counts in the sensitivity
    nothing = _match(np.zeros(SHAPE, np.uint8), a)
    assert math.isnan(nothing["nodule_dice"]) and math.isnan(nothing["nodule_iou"])
    assert math.isnan(nothing["nodule_volume_error_pct"])
    empty = _match(a, np.zeros(SHAPE, np.uint8))
    assert empty["nodules"] == [] and math.isnan(empty["nodule_dice"]) and empty["voxels"]["fp"] == 100


def test_blob_over_two_nodules_is_split_by_nearest_nodule():
    a, b = box((8, 12), (20, 24), (10, 14)), box((8, 12), (20, 24), (20, 24))  # 64 voxels each, x gap 14..19
    bridge = box((8, 12), (20, 24), (10, 24))  # one component over both
    m = _match(bridge, a | b)
    # x = 14, 15, 16 are nearer a (last column 13), x = 17, 18, 19 nearer b (first column 20): 7 columns each
    for nodule in m["nodules"]:
        assert nodule["detected"] and nodule["dice"] == pytest.approx(2 * 64 / (112 + 64))
        assert nodule["iou"] == pytest.approx(64 / 112) and nodule["volume_error_mm3"] == pytest.approx(48 * VOXEL_MM3)
    # a component touching a single nodule gives it all its voxels, however far they reach
    tail = a | box((8, 12), (20, 22), (14, 19))
    lone = _match(tail, a | b)["nodules"]
    assert lone[0]["iou"] == pytest.approx(64 / (64 + 40)) and not lone[1]["detected"]
    # touching only at a corner is one component (26-connectivity)
    corner = np.zeros(SHAPE, np.uint8)
    corner[5, 5, 5] = corner[6, 6, 6] = 1
    one = box((5, 6), (5, 6), (5, 6))
    assert _match(corner, one)["nodules"][0]["dice"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- candidates


def test_candidates_are_components_above_the_threshold_scored_by_their_maximum():
    a, b = box((2, 6), (5, 10), (5, 10)), box((12, 16), (30, 38), (30, 38))
    labels, _ = label_nodules(a | b)
    p = np.zeros(SHAPE, np.float32)
    p[2:6, 5:10, 5:10] = 0.4
    p[3, 7, 7] = 0.95  # candidate on a, scored by its maximum
    p[12:16, 30:38, 28:33] = 0.3  # on b: 3 of its 5 columns overlap b
    p[12:16, 30:38, 26:28] = 0.35  # joins the same component
    p[10:12, 40:44, 2:6] = 0.6  # hits nothing
    p[18, 2, 2] = 0.05  # below the threshold: no candidate
    cands = find_candidates(p, labels, threshold=0.1)
    assert cands == [[pytest.approx(0.95), 0], [pytest.approx(0.6), -1], [pytest.approx(0.35), 1]]
    # the same map as uint8 (round(255 p)), read on the integer grid: the same candidates, scores / 255
    q = np.round(p * 255).astype(np.uint8)
    assert find_candidates(q, labels, threshold=0.1, scale=255.0) == [[242 / 255, 0], [153 / 255, -1], [89 / 255, 1]]
    assert len(find_candidates(q, labels, threshold=0.5, scale=255.0)) == 2
    # a candidate over two nodules hits the one it overlaps most
    wide = np.zeros(SHAPE, np.float32)
    wide[2:6, 5:10, 5:10] = 0.5
    wide[2:6, 5:20, 10:12] = 0.5
    c = box((2, 6), (12, 22), (10, 14))  # overlap with the candidate: 4 * 8 * 2 = 64 voxels vs a's 100
    labels2, _ = label_nodules(a | c)
    assert find_candidates(wide, labels2) == [[0.5, 0]]
    assert find_candidates(np.zeros(SHAPE, np.float32), labels) == []


# ---------------------------------------------------------------- FROC

SCANS = [
    # scan 0: two nodules; 0.7 is a second hit on nodule 0 (ignored), 0.8 and 0.3 hit nothing
    ([[0.9, 0], [0.8, -1], [0.7, 0], [0.6, 1], [0.3, -1]], 2),
    ([[0.95, -1], [0.5, 0], [0.2, -1]], 1),
    ([[0.85, -1], [0.4, -1]], 0),  # a scan without nodules: only false positives
]


def test_froc_lists_follow_the_luna16_rules():
    scores, truth, owner, nodules = froc_lists(SCANS)
    assert sorted(zip(scores.tolist(), truth.tolist())) == sorted(
        [(0.9, True), (0.6, True), (0.8, False), (0.3, False), (0.95, False), (0.5, True), (0.2, False),
         (0.85, False), (0.4, False)])  # 0.7 left out: neither true nor false positive
    assert owner.tolist().count(0) == 4 and nodules.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="hits nodule 3"):
        froc_lists([([[0.5, 3]], 1)])


def test_froc_sensitivities_and_cpm_on_known_candidates():
    fps, sens = froc_curve(SCANS)
    # thresholds 0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2 after the origin
    assert fps.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 4 / 3, 5 / 3, 2])
    assert sens.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1])
    s = froc_summary(SCANS, samples=300, seed=0)
    # 1/8, 1/4: before the first true positive; 1/2: after it; 1 FP per scan: all three (the vertical step at
    # exactly 1 is read at its top, the threshold 0.5 giving 3 false positives); beyond the end: the last value
    assert s["fp_per_scan"] == list(FP_RATES)
    assert s["sensitivity"] == pytest.approx([0, 0, 1 / 3, 1, 1, 1, 1])
    assert s["cpm"] == pytest.approx(13 / 21)
    assert s["n_scans"] == 3 and s["n_nodules"] == 3 and s["max_sensitivity"] == 1.0
    assert s["max_fp_per_scan"] == pytest.approx(2.0) and s["n_false_positive_candidates"] == 6
    lo, hi = s["cpm_ci95"]
    assert 0 <= lo <= hi <= 1 and all(c is None or c[0] <= c[1] for c in s["ci95"])
    assert froc_summary(SCANS, samples=300, seed=0) == s  # seeded
    curve = s["curve"]
    assert curve["fp_per_scan"][0] == 0.125 and curve["fp_per_scan"][-1] == pytest.approx(8.0)
    assert curve["sensitivity"][curve["fp_per_scan"].index(1.0)] == pytest.approx(1.0)
    assert len(curve["ci95_low"]) == len(curve["fp_per_scan"]) == len(curve["sensitivity"])


def test_froc_interpolation_ties_and_edge_cases():
    # a true and a false positive of equal score enter together: linear between (0, 0) and (1, 1)
    tie = froc_summary([([[0.5, 0], [0.5, -1]], 1)], samples=10)
    assert tie["sensitivity"] == pytest.approx([0.125, 0.25, 0.5, 1, 1, 1, 1])
    assert tie["ci95"] == [None] * 7 and tie["cpm_ci95"] is None  # one scan: no interval
    # no false positive at all: every rate reads the highest sensitivity; a missed nodule is never reached
    perfect = froc_summary([([[0.9, 0]], 2), ([], 0)], samples=50)
    assert perfect["sensitivity"] == [0.5] * 7 and perfect["max_fp_per_scan"] == 0.0
    assert sensitivity_at(np.array([0, 1, 1, 2.0]), np.array([0, 0.2, 0.6, 0.8]), [0.5, 1, 1.5, 3]).tolist() == \
        pytest.approx([0.1, 0.6, 0.7, 0.8])
    assert froc_summary([([[0.9, -1]], 0)]) is None and froc_summary([]) is None  # no nodules: no FROC


# ---------------------------------------------------------------- aggregation


def _nodule(dice, iou, err, detected=True):
    return {"volume_mm3": 100.0, "diameter_mm": 5.76, "detected": detected, "dice": dice if detected else None,
            "iou": iou if detected else None, "volume_error_mm3": err if detected else None,
            "volume_error_pct": err if detected else None}


def _row(case, nodules, candidates=None, fp=0, voxels=(10, 2, 3), **extra):
    found = [n for n in nodules if n["detected"]]
    row = {"case_id": case, "label": "nodule", "method": "unet", "dice": 0.8, "iou": 0.7, "precision": 0.9,
           "recall": 0.8, "fscore": 0.8, "accuracy": 0.99, "hd95_mm": 1.0, "volume_diff_ml": 0.0,
           "n_nodules": len(nodules), "n_detected": len(found), "n_pred_components": len(found) + fp,
           "n_false_positives": fp, "sensitivity": len(found) / len(nodules) if nodules else math.nan,
           "nodule_dice": np.mean([n["dice"] for n in found]) if found else math.nan,
           "nodule_iou": np.mean([n["iou"] for n in found]) if found else math.nan,
           "nodule_volume_error_pct": np.mean([abs(n["volume_error_pct"]) for n in found]) if found else math.nan,
           "nodules": nodules, "voxels": dict(zip(("tp", "fp", "fn"), voxels)), **extra}
    if candidates is not None:
        row.update(candidates=candidates, candidate_threshold=0.1)
    return row


def test_aggregate_pools_detected_nodules_and_adds_the_froc():
    rows = [_row("c0", [_nodule(0.9, 0.8, -10), _nodule(0.5, 0.4, 30)], SCANS[0][0]),
            _row("c1", [_nodule(0.7, 0.6, 20), _nodule(0, 0, 0, detected=False)], [[0.95, -1], [0.5, 0]], fp=1),
            _row("c2", [], SCANS[2][0], fp=2, voxels=(0, 50, 0))]
    s = summarise(rows, samples=300, seed=1)["unet"]
    nod = s["nodules"]
    assert nod["n_nodules"] == 4 and nod["n_detected"] == 3
    assert nod["dice"]["mean"] == pytest.approx(0.7) and nod["dice"]["n"] == 3  # pooled over nodules, not cases
    assert nod["iou"]["mean"] == pytest.approx(0.6) and nod["volume_error_pct"]["mean"] == pytest.approx(20.0)
    assert nod["dice"]["ci95"][0] <= 0.7 <= nod["dice"]["ci95"][1]
    # voxel IoU pooled over the cases with nodules only: c2 (no nodule, 50 false-positive voxels) left out
    assert nod["n_cases_with_nodules"] == 2 and nod["voxel_iou_pooled"] == pytest.approx(20 / 30)
    froc = s["froc"]
    assert froc["n_scans"] == 3 and froc["n_nodules"] == 4 and froc["candidate_threshold"] == 0.1
    assert len(froc["sensitivity"]) == 7 and froc["cpm"] == pytest.approx(np.mean(froc["sensitivity"]))
    assert "no_reference_nodules" not in s and s["detection"]["sensitivity"] == pytest.approx(3 / 4)
    table = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert list(table[0])[-3:] == ["nodule_dice", "nodule_iou", "nodule_volume_error_pct"]
    assert list(table[0])[:16] == ["case_id", "label", "method", "dice", "iou", "precision", "recall", "fscore",
                                   "accuracy", "hd95_mm", "volume_diff_ml", "n_nodules", "n_detected",
                                   "n_pred_components", "n_false_positives", "sensitivity"]
    assert table[0]["nodule_dice"] == "0.7" and table[2]["nodule_dice"] == ""
    assert "candidates" not in table[0] and "nodules" not in table[0]
    # candidates for some cases of a method only: an error, not a FROC of a subset
    with pytest.raises(ValueError, match="FROC candidates for 2 of 3"):
        summarise([*rows[:2], _row("c2", [])], samples=10)


def test_test_set_without_nodules_is_flagged_not_scored():
    rows = [_row("c0", [], [[0.4, -1]], fp=1, dice=1.0), _row("c1", [], [], dice=1.0)]
    s = summarise(rows, samples=100)["unet"]
    assert s["no_reference_nodules"] is True
    assert s["detection"]["sensitivity"] is None and s["detection"]["sensitivity_ci95"] is None
    assert "froc" not in s and s["nodules"]["dice"]["mean"] is None and s["nodules"]["voxel_iou_pooled"] is None
    page = metrics_html({"unet": s}, [])
    assert NO_NODULES.split(":")[0] in page and "measures nothing" in page


# ---------------------------------------------------------------- CLIs end to end and the report


def _write_case(tmp_path, case_id, nodules):
    ref = np.zeros(SHAPE, np.uint8)
    for n in nodules:
        ref |= n
    write_case(tmp_path / f"{case_id}.h5", CaseVolume(case_id, np.zeros(SHAPE, np.int16), GEOM, labels={"nodule": ref}))
    return tmp_path / f"{case_id}.h5"


def test_evaluate_aggregate_report_end_to_end(tmp_path, capsys):
    a, b = box((2, 6), (5, 10), (5, 10)), box((12, 16), (30, 38), (30, 38))
    cases = [_write_case(tmp_path, "c1", [a, b]), _write_case(tmp_path, "c2", [a]), _write_case(tmp_path, "c3", [])]
    outputs = []
    for case in cases:
        p = np.zeros(SHAPE, np.float32)
        p[2:6, 5:10, 5:10] = 0.9  # a found in every case (an FP in c3)
        p[12:16, 30:38, 30:34] = 0.7  # half of b
        p[10:12, 40:44, 2:6] = 0.3  # a weak blob: a candidate, not in the mask
        stem = tmp_path / case.stem
        write_volume(f"{stem}.nii.gz", (p >= 0.5).astype(np.uint8), GEOM)
        write_volume(f"{stem}.probabilities.nii.gz", np.round(p * 255).astype(np.uint8), GEOM)
        out = tmp_path / f"{case.stem}.json"
        assert main(["evaluate", "--case", str(case), "--label", "nodule", "--pred", f"unet={stem}.nii.gz",
                     "--probabilities", f"unet={stem}.probabilities.nii.gz", "--detection", "-o", str(out)]) == 0
        outputs.append(str(out))
    rows = {r["method"]: r for r in json.loads((tmp_path / "c1.json").read_text())}
    unet = rows["unet"]
    assert unet["n_detected"] == 2 and unet["n_false_positives"] == 0  # the mask's own counts
    assert unet["nodule_dice"] == pytest.approx((1 + 2 / 3) / 2) and unet["nodules"][1]["iou"] == pytest.approx(0.5)
    scores = [float(np.round(np.float32(v) * 255)) / 255 for v in (0.9, 0.7, 0.3)]  # uint8 on disk: round(255 p)
    assert unet["candidates"] == [[scores[0], 0], [scores[1], 1], [scores[2], -1]]
    assert unet["candidate_threshold"] == 0.1
    assert "candidates" not in rows["all_background"] and rows["all_background"]["nodule_dice"] is None
    assert not any(n["detected"] for n in rows["all_background"]["nodules"])
    assert main(["aggregate", *outputs, "--csv", str(tmp_path / "m.csv"), "--json", str(tmp_path / "s.json"),
                 "--bootstrap-samples", "200"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    froc = summary["unet"]["froc"]
    # 3 scans, 3 nodules; marks at 0.9: 2 TP (a in c1, c2) + 1 FP (c3), at 0.7: 1 TP (b in c1) + 2 FP (c2, c3),
    # at 0.3: 3 FP -> vertices (0, 0), (1/3, 2/3), (1, 1), (2, 1); ties interpolate linearly
    assert froc["n_scans"] == 3 and froc["n_nodules"] == 3
    assert froc["sensitivity"] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1]) and froc["cpm"] == pytest.approx(5.5 / 7)
    assert froc["max_fp_per_scan"] == pytest.approx(2.0)
    assert "froc" not in summary["all_background"] and summary["unet"]["nodules"]["n_detected"] == 3
    assert "no_reference_nodules" not in summary["unet"]
    assert main(["report", "metrics", "--summary", str(tmp_path / "s.json"), "--csv", str(tmp_path / "m.csv"),
                 "-o", str(tmp_path / "metrics.html")]) == 0
    page = (tmp_path / "metrics.html").read_text()
    assert "<caption>Nodules</caption>" in page and f"{froc['cpm']:.3f} [" in page and "FROC: sensitivity" in page
    assert "nodule Dice" in page and NO_NODULES.split(":")[0] not in page
    assert main(["report", "froc", "--summary", str(tmp_path / "s.json"), "-o", str(tmp_path / "froc.png")]) == 0
    assert mpimg.imread(tmp_path / "froc.png").shape[1] >= 600

    # wrong inputs: one clear line each
    capsys.readouterr()
    stem = tmp_path / "c1"
    write_volume(str(tmp_path / "small.nii.gz"), np.zeros((10, 48, 48), np.uint8), GEOM)
    args = ["evaluate", "--case", str(cases[0]), "--label", "nodule", "--pred", f"unet={stem}.nii.gz", "--detection",
            "-o", str(tmp_path / "x.json")]
    assert main([*args, "--probabilities", f"unet={tmp_path / 'small.nii.gz'}"]) == 1
    err = capsys.readouterr().err
    assert "small.nii.gz: is not on the grid of" in err and "probabilities.nii.gz" in err and err.count("\n") == 1
    write_volume(str(tmp_path / "big.nii.gz"), np.full(SHAPE, 2.5, np.float32), GEOM)
    assert main([*args, "--probabilities", f"unet={tmp_path / 'big.nii.gz'}"]) == 1
    assert "outside the probability range" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="without a --pred"):
        main([*args, "--probabilities", f"other={stem}.probabilities.nii.gz"])
    with pytest.raises(SystemExit, match="add --detection"):
        main([a for a in args if a != "--detection"] + ["--probabilities", f"unet={stem}.probabilities.nii.gz"])
    # a float map in [0, 1] is read as probabilities too
    p = np.zeros(SHAPE, np.float32)
    p[2:6, 5:10, 5:10] = 0.8
    write_volume(str(tmp_path / "float.nii.gz"), p, GEOM)
    assert main([*args, "--probabilities", f"unet={tmp_path / 'float.nii.gz'}", "--no-baseline"]) == 0
    assert json.loads((tmp_path / "x.json").read_text())[0]["candidates"] == [[pytest.approx(0.8), 0]]


def test_froc_figure_without_froc_data_says_why(tmp_path):
    rows = [_row("c0", [], [], dice=1.0), _row("c1", [], [], dice=1.0)]
    (tmp_path / "s.json").write_text(json.dumps(summarise(rows, samples=10)))
    assert main(["report", "froc", "--summary", str(tmp_path / "s.json"), "-o", str(tmp_path / "f.png")]) == 0
    png = mpimg.imread(tmp_path / "f.png")
    assert png.shape[0] < 200 and (png[..., :3] < 0.5).any()  # a small figure with text on it
    from lungseg.report.froc import _why_empty

    assert "no reference nodule" in _why_empty(json.loads((tmp_path / "s.json").read_text()))
    assert "lung target" in _why_empty({"unet": {"metrics": {}}})
