"""`lungseg report external`: the internal and external test set side by side, from hand-made summary.json files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.report.cli import configure, run  # noqa: E402
from lungseg.report.external import comparison_rows, external_html, gap_sentence  # noqa: E402


def _stats(mean, ci=None):
    return {"mean": mean, "std": None, "median": mean, "min": mean, "max": mean, "ci95": ci, "n": 1, "n_undefined": 0}


def _method(dice, iou, n_cases, detection=None, nodules=None, froc=None):
    out = {"n_cases": n_cases, "metrics": {"dice": _stats(dice, [dice - 0.05, dice + 0.05] if dice is not None else None),
                                           "iou": _stats(iou)},
           "bootstrap": {"samples": 100, "seed": 0}}
    if detection:
        out["detection"] = detection
    if nodules:
        out["nodules"] = nodules
    if froc:
        out["froc"] = froc
    return out


def _detection(sens, fp):
    return {"n_nodules": 4, "n_detected": 2, "sensitivity": sens, "sensitivity_ci95": None,
            "false_positives_per_scan": fp, "false_positives_per_scan_ci95": [fp - 1, fp + 1]}


LUNG_INTERNAL = {"unet": _method(0.95, 0.90, 10), "classical_threshold_3d": _method(0.90, 0.82, 10),
                 "all_background": _method(0.0, 0.0, 10)}
LUNG_EXTERNAL = {"unet": _method(0.70, 0.54, 2), "classical_threshold_3d": _method(0.91, 0.83, 2),
                 "all_background": _method(0.0, 0.0, 2)}
NODULE_INTERNAL = {
    "unet_2_5d": _method(0.6, 0.45, 5, _detection(0.8, 1.5), {"iou": _stats(0.5, [0.4, 0.6])},
                         {"cpm": 0.7, "cpm_ci95": [0.6, 0.8]}),
    "classical_nodule": _method(0.2, 0.1, 5, _detection(0.9, 12.0), {"iou": _stats(0.3)}),
}
NODULE_EXTERNAL = {
    "unet_2_5d": _method(0.1, 0.05, 2, _detection(0.5, 30.0), {"iou": _stats(0.2)}, {"cpm": 0.25, "cpm_ci95": None}),
    "classical_nodule": _method(0.15, 0.08, 2, _detection(1.0, 20.0), {"iou": _stats(None)}),
    "unet3d": _method(None, None, 2, _detection(None, 3.0)),  # evaluated on the external set only
}


def test_lung_rows_are_side_by_side_with_the_difference():
    rows = comparison_rows(LUNG_INTERNAL, LUNG_EXTERNAL)
    assert [r[:2] for r in rows[:2]] == [["unet", "Dice"], ["unet", "IoU"]]
    assert rows[0][2:] == ["0.950 [0.900, 1.000]", "0.700 [0.650, 0.750]", "-0.250"]
    assert len(rows) == 6  # three methods x (Dice, IoU): no detection rows for lungs


def test_nodule_rows_add_sensitivity_fp_nodule_iou_and_cpm():
    rows = {(r[0], r[1]): r[2:] for r in comparison_rows(NODULE_INTERNAL, NODULE_EXTERNAL)}
    assert rows[("unet_2_5d", "sensitivity")] == ["0.800", "0.500", "-0.300"]
    assert rows[("unet_2_5d", "FP/scan")] == ["1.500 [0.500, 2.500]", "30.000 [29.000, 31.000]", "+28.500"]
    assert rows[("unet_2_5d", "nodule IoU")] == ["0.500 [0.400, 0.600]", "0.200", "-0.300"]
    assert rows[("unet_2_5d", "CPM")] == ["0.700 [0.600, 0.800]", "0.250", "-0.450"]
    assert rows[("classical_nodule", "CPM")] == ["–", "–", None]  # absent on both sides: a dash, kept
    assert rows[("classical_nodule", "nodule IoU")] == ["0.300", "–", None]
    # a method of one side only is listed, with dashes on the other
    assert rows[("unet3d", "FP/scan")] == ["–", "3.000 [2.000, 4.000]", None]


def test_gap_sentence_names_the_reference_its_numbers_and_the_direction():
    text = gap_sentence(NODULE_INTERNAL, NODULE_EXTERNAL, "unet_2_5d", "lidc")
    assert text.startswith("External test set 'lidc': 2 case(s); internal test set: 5 case(s).")
    assert ("The gap of unet_2_5d: Dice 0.100 on the external set against 0.600 on the internal test set "
            "(0.500 lower, worse)") in text
    assert "FP/scan 30.000 on the external set against 1.500 on the internal test set (28.500 higher, worse)" in text
    assert "CPM 0.250" in text and "confidence intervals are wide" in text
    lung = gap_sentence(LUNG_INTERNAL, LUNG_EXTERNAL, "unet", "real")
    assert "Dice 0.700 on the external set against 0.950" in lung and "FP/scan" not in lung


def test_gap_sentence_without_the_reference_or_a_common_method():
    text = gap_sentence(LUNG_INTERNAL, LUNG_EXTERNAL, "missing", "x")
    assert "The gap of unet (the reference missing was not evaluated on both sets)" in text
    assert "no gap to state" in gap_sentence({"a": _method(0.5, 0.3, 3)}, {"b": _method(0.4, 0.2, 2)}, "a", "x")


def test_undefined_values_are_said_not_computed():
    internal = {"m": _method(None, 0.3, 3, _detection(None, 1.0))}
    external = {"m": _method(0.4, None, 6, _detection(0.5, 2.0))}
    text = gap_sentence(internal, external, "m", "x")
    assert "Dice 0.400 on the external set (undefined on the internal test set)" in text
    assert "IoU undefined on the external set (against 0.300 on the internal test set)" in text
    assert "confidence intervals are wide" not in text  # 6 external cases


def _png(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_page_embeds_overlays_and_escapes_text(tmp_path):
    png = _png(tmp_path / "o.png")
    csv = tmp_path / "metrics.csv"
    csv.write_text("case_id,label,method,dice,iou,precision,n_nodules,n_detected,n_false_positives\n"
                   "lidc001,nodule,unet_2_5d,0.1,0.05,0.2,1,1,12\n")
    page = external_html(NODULE_INTERNAL, NODULE_EXTERNAL, "lidc", "unet_2_5d", label="nodule",
                         overlays=[("unet_2_5d/<lidc001>", png)], external_csv=csv)
    assert page.startswith("<!DOCTYPE html>") and "External test set: lidc" in page
    assert page.count("data:image/png;base64,") == 1 and "unet_2_5d/&lt;lidc001&gt;" in page
    assert "Per case on the external test set" in page and "lidc001" in page and "precision" not in page
    assert "CPM is the mean FROC sensitivity" in page


def test_cli_section(tmp_path):
    import argparse

    internal, external = tmp_path / "internal.json", tmp_path / "external.json"
    internal.write_text(json.dumps(LUNG_INTERNAL))
    external.write_text(json.dumps(LUNG_EXTERNAL))
    png = _png(tmp_path / "unet-ext001.png")
    parser = argparse.ArgumentParser()
    configure(parser)
    out = tmp_path / "page.html"
    args = parser.parse_args(["external", "--internal", str(internal), "--external", str(external), "--name", "real",
                              "--reference", "unet", "--overlay", f"unet/ext001={png}", "-o", str(out)])
    assert run(args) == 0
    page = out.read_text()
    assert "The gap of unet: Dice 0.700 on the external set against 0.950" in page
    assert "unet/ext001" in page and "data:image/png;base64," in page


def test_a_set_without_reference_nodules_is_flagged():
    internal = {"m": {**_method(1.0, 1.0, 1, _detection(None, 0.0)), "no_reference_nodules": True}}
    page = external_html(internal, NODULE_EXTERNAL, "lidc", "m", label="nodule")
    assert "The internal test set holds no reference nodule" in page
    assert "external test set &#x27;lidc&#x27; holds no reference nodule" not in page
