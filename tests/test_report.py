"""Report sections: cohort table, metrics tables, distribution plot, worst/best montages, workflow pages."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.evaluation.aggregate import rows_to_csv, summarise
from lungseg.geometry import Geometry, write_volume
from lungseg.report import html
from lungseg.report.extremes import error_slices, rank_cases
from lungseg.report.workflow_info import read_benchmarks, runtime_rows

GEOM = Geometry((0.8, 0.8, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _case(tmp_path, case_id: str, shift: int) -> tuple:
    """A case file with a lung label and a prediction shifted by ``shift`` voxels (larger shift, lower Dice)."""
    image = np.full((8, 40, 40), -1000, np.int16)
    lung = np.zeros(image.shape, np.uint8)
    lung[1:7, 10:30, 8:32] = 1
    nodule = np.zeros(image.shape, np.uint8)
    nodule[3:5, 12:14, 12:14] = 1
    image[lung > 0] = -850
    write_case(tmp_path / f"{case_id}.h5", CaseVolume(case_id, image, GEOM, labels={"lung": lung, "nodule": nodule},
                                                      provenance={"source_kind": "dicom"}))
    write_volume(str(tmp_path / f"{case_id}.nii.gz"), np.roll(lung, shift, axis=2), GEOM)
    return tmp_path / f"{case_id}.h5", tmp_path / f"{case_id}.nii.gz"


def test_html_table_escapes_and_formats():
    out = html.table(["a<b", "x"], [["<script>", 0.12345], [None, float("nan")], ["n", 3]])
    assert "<script>" not in out and "&lt;script&gt;" in out and "a&lt;b" in out
    assert "0.123" in out and out.count("–") == 2 and '<td class="num">3</td>' in out
    assert html.page("T", out).startswith("<!DOCTYPE html>")


def test_cohort_section(tmp_path):
    pairs = [_case(tmp_path, c, 0) for c in ("c1", "c2", "c3")]
    (tmp_path / "split.tsv").write_text("case_id\tpatient_id\tsplit\nc1\tp1\ttrain\nc2\tp2\ttrain\nc3\tp3\ttest\n")
    assert main(["report", "cohort", *(str(p) for p, _ in pairs), "--split", str(tmp_path / "split.tsv"),
                 "-o", str(tmp_path / "cohort.html")]) == 0
    page = (tmp_path / "cohort.html").read_text()
    lung_ml = 6 * 20 * 24 * 0.8 * 0.8 * 2.0 / 1000
    assert f"{lung_ml:.3f}" in page and "lung (mL)" in page and "nodules" in page
    assert "<td>c3</td><td>test</td>" in page and "<td>train</td><td class=\"num\">2</td>" in page


def _metric_rows(tmp_path):
    rows = []
    for case_id, shift in (("c1", 0), ("c2", 2), ("c3", 6)):
        case_path, pred_path = _case(tmp_path, case_id, shift)
        from lungseg.evaluation.cli import evaluate_case

        rows += evaluate_case(case_path, "lung", {"unet": pred_path})
    return rows


def test_metrics_and_distribution_sections(tmp_path):
    rows = _metric_rows(tmp_path)
    (tmp_path / "metrics.csv").write_text(rows_to_csv(rows))
    (tmp_path / "summary.json").write_text(json.dumps(summarise(rows, samples=200, seed=0)))
    assert main(["report", "metrics", "--summary", str(tmp_path / "summary.json"), "--csv", str(tmp_path / "metrics.csv"),
                 "-o", str(tmp_path / "metrics.html")]) == 0
    page = (tmp_path / "metrics.html").read_text()
    dice = summarise(rows, samples=200, seed=0)["unet"]["metrics"]["dice"]
    assert f"{dice['mean']:.3f} [{dice['ci95'][0]:.3f}, {dice['ci95'][1]:.3f}]" in page
    assert page.count("<td>c2</td>") == 2  # per-case table: unet and all_background
    assert main(["report", "distribution", str(tmp_path / "metrics.csv"), "-o", str(tmp_path / "dist.png")]) == 0
    assert mpimg.imread(tmp_path / "dist.png").shape[1] > 800


def test_worst_and_best_cases(tmp_path):
    rows = _metric_rows(tmp_path)
    csv_rows = [{k: str(v) for k, v in r.items()} for r in rows]
    worst, best = rank_cases(csv_rows, "unet", "dice", 2)
    assert [c for c, _ in worst] == ["c3", "c2"] and [c for c, _ in best] == ["c1", "c2"]
    worst_hd, best_hd = rank_cases(csv_rows, "unet", "hd95_mm", 1)  # lower is better
    assert worst_hd[0][0] == "c3" and best_hd[0][0] == "c1"
    with pytest.raises(ValueError, match="no per-case rows for method 'nnunet'"):
        rank_cases(csv_rows, "nnunet", "dice", 1)
    reference = np.zeros((6, 10, 10), np.uint8)
    prediction = reference.copy()
    prediction[4, :5] = 1
    prediction[1, :2] = 1
    assert error_slices(reference, prediction, 1) == [4] and error_slices(reference, prediction, 3) == [1, 4]
    (tmp_path / "metrics.csv").write_text(rows_to_csv(rows))
    pairs = [f"--pair={tmp_path / c}.h5={tmp_path / c}.nii.gz" for c in ("c1", "c2", "c3")]
    assert main(["report", "extremes", "--csv", str(tmp_path / "metrics.csv"), *pairs, "--cases", "2", "--slices", "3",
                 "--worst", str(tmp_path / "worst.png"), "--best", str(tmp_path / "best.png")]) == 0
    worst_png, best_png = mpimg.imread(tmp_path / "worst.png"), mpimg.imread(tmp_path / "best.png")
    assert worst_png.shape[0] > 300 and best_png.shape[0] > 300  # two rows of slices each
    # the worst case's montage shows its disagreement: red pixels (prediction only)
    red = (worst_png[..., 0] > 0.4) & (worst_png[..., 1] < 0.15) & (worst_png[..., 2] < 0.15)
    assert red.sum() > 50


def test_workflow_pages(tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "ingest").mkdir(parents=True)
    (bench / "train").mkdir()
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench / "ingest/c1.tsv").write_text(header + "1.5\t0:00:01\t100.0\t1\t1\t1\t0\t0\t50\t1.2\n")
    (bench / "ingest/c2.tsv").write_text(header + "2.5\t0:00:02\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t2.0\n")
    (bench / "train/lung.tsv").write_text(header + "60.0\t0:01:00\t1500.0\t1\t1\t1\t0\t0\t180\t110.0\n")
    rows = runtime_rows(read_benchmarks(bench))
    assert rows[0][:3] == ["train", 1, 60.0]
    assert rows[1][:6] == ["ingest", 2, 4.0, 2.0, 2.5, "c2"] and rows[1][6] == pytest.approx(3.2) and rows[1][7] == 100.0
    config = {"results": "results", "train": {"label": "lung", "note": "<b>"}}
    assert main(["report", "workflow", "--config-json", json.dumps(config), "--benchmarks", str(bench),
                 "--config-out", str(tmp_path / "c.html"), "--versions-out", str(tmp_path / "v.html"),
                 "--runtimes-out", str(tmp_path / "r.html")]) == 0
    assert "label: lung" in (tmp_path / "c.html").read_text() and "&lt;b&gt;" in (tmp_path / "c.html").read_text()
    versions = (tmp_path / "v.html").read_text()
    from importlib.metadata import version

    assert f"<td>torch</td><td>{version('torch')}</td>" in versions
    assert f"<td>SimpleITK</td><td>{version('SimpleITK')}" in versions
    assert "3 jobs, 64.0 s" in (tmp_path / "r.html").read_text()


def test_froc_section_for_the_lung_target_writes_a_notice(tmp_path):
    """The lung target has no nodules: no Nodules table, and the FROC figure says why it is empty."""
    rows = _metric_rows(tmp_path)
    summary = summarise(rows, samples=50, seed=0)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.csv").write_text(rows_to_csv(rows))
    assert main(["report", "metrics", "--summary", str(tmp_path / "summary.json"), "--csv", str(tmp_path / "metrics.csv"),
                 "-o", str(tmp_path / "metrics.html")]) == 0
    page = (tmp_path / "metrics.html").read_text()
    assert "<caption>Nodules</caption>" not in page and "no reference nodule" not in page
    assert main(["report", "froc", "--summary", str(tmp_path / "summary.json"), "-o", str(tmp_path / "froc.png")]) == 0
    assert mpimg.imread(tmp_path / "froc.png").shape[0] < 200
