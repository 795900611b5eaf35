"""``lungseg diagnose``: nodules of a known mask measured, sided, cut into the nodule table's patches and classified
as ``lungseg classify`` would; an empty mask; the command end to end on a case file and a DICOM folder (a real tiny
segmentation model: shapes, columns and no identifier in the outputs)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from ingest_data import demo_case
from PIL import Image

from lungseg.api import Segmenter
from lungseg.casefile import CaseVolume, write_case
from lungseg.classification.cli import SETTINGS, nodule_patches
from lungseg.classification.diagnose import COLUMNS, diagnose_mask, find_nodules, write_overlay, write_table
from lungseg.classification.labels import LabelProtocol
from lungseg.classification.nodule_table import read_nodule_table
from lungseg.classification.patches import read_patches
from lungseg.classification.predict import load_classifiers, predict_probabilities
from lungseg.classification.synthetic import write_synthetic_cases
from lungseg.cli import main
from lungseg.geometry import Geometry
from lungseg.training.checkpoint import model_file_state, save_checkpoint
from lungseg.training.models import UNet
from lungseg.training.preprocess import to_model_input
from lungseg.training.train import TrainConfig, train

# x index runs towards the patient's right (LPS x = 100 - 0.8 i): index-left is not patient-left
GEOMETRY = Geometry((0.8, 0.7, 1.5), (100.0, -50.0, -200.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
SHAPE = (24, 64, 64)
#: (centre index z, y, x, radius mm): A at low x index = the patient's left, B = the patient's right
SPHERES = ((12, 30, 16, 5.0), (10, 34, 46, 3.5))
PATCH = {"patch_mm": 20.0, "patch_size": 32}  # inside the 36 mm high phantom


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (air, a body symmetric about x index 31.5, two lungs), the two spheres' mask and a lung mask."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    hu = np.full(SHAPE, -1000, np.int16)
    hu[((y - 32) / 26.0) ** 2 + ((x - 31.5) / 28.0) ** 2 <= 1] = 40
    lungs = (((y - 32) / 20.0) ** 2 + ((np.abs(x - 31.5) - 14) / 10.0) ** 2 <= 1)
    hu[lungs] = -850
    mask = np.zeros(SHAPE, np.uint8)
    sx, sy, sz = GEOMETRY.spacing
    for cz, cy, cx, r in SPHERES:
        mask[(((z - cz) * sz) ** 2 + ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2) <= r * r] = 1
    hu[mask > 0] = 30
    return hu, mask, lungs.astype(np.uint8)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-task classifier (image + pathology heads) trained one epoch on synthetic patches: a real model file."""
    d = tmp_path_factory.mktemp("cls")
    config = TrainConfig(task="classification", arch="resnet18", image_size=32, epochs=1, batch_size=8, lr=1e-3, seed=0,
                         threads=1, device="cpu", norm="group")
    return train(replace(config, cls_task="both"), write_synthetic_cases(d / "train", 2, 4, seed=1, pathology_share=1.0),
                 write_synthetic_cases(d / "val", 1, 4, seed=2, prefix="VAL", pathology_share=1.0), d / "run")


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random U-Net labelled 'nodule', biased so that about 2% of the phantom's voxels are foreground."""
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    with torch.no_grad():
        model.head.bias -= model(to_model_input(_phantom()[0], 32, (-1000.0, 400.0))).quantile(0.98)
    path = tmp_path_factory.mktemp("seg") / "nodule.pt"
    save_checkpoint(path, model_file_state(model, arch="unet", model_kwargs={"base_channels": 2, "depth": 2}, label="nodule",
                                           image_size=32, hu_window=(-1000.0, 400.0), epoch=1, val_dice=0.5))
    return path


def test_known_mask_is_measured_sided_cut_and_classified_as_the_nodule_table(classifier: Path, tmp_path: Path) -> None:
    hu, mask, _ = _phantom()
    models, meta = load_classifiers([classifier])
    nodules, side_from = diagnose_mask(hu, GEOMETRY, mask, models, meta, **PATCH)
    assert side_from == "body centre" and [n.nodule for n in nodules] == [1, 2]
    voxel = max(GEOMETRY.spacing)
    for nodule, (cz, cy, cx, r), side in zip(nodules, SPHERES, ("left", "right")):
        truth = GEOMETRY.index_to_physical(np.array([cx, cy, cz], float))
        assert np.linalg.norm(np.asarray(nodule.centre_mm) - truth) < voxel
        assert abs(nodule.diameter_mm - 2 * r) < voxel and abs(nodule.axial_extent_mm - 2 * r) < voxel
        assert nodule.side == side and nodule.mean_seg_probability == 1.0 and not nodule.at_edge
    # the nodule table of the same mask as a case's nodule label: same centres, same patches, same probabilities
    write_case(tmp_path / "c.h5", CaseVolume("c0001", hu, GEOMETRY, labels={"nodule": mask}))
    table_rows, _ = nodule_patches(tmp_path / "c.h5", tmp_path / "c.patches.h5", tmp_path / "c.nodules.tsv",
                                   {**SETTINGS, **PATCH}, LabelProtocol())
    table, (patches, _) = read_nodule_table(tmp_path / "c.nodules.tsv"), read_patches(tmp_path / "c.patches.h5")
    order = [min(range(len(table)), key=lambda i: abs(table[i]["volume_mm3"] - n.volume_mm3)) for n in nodules]
    for nodule, i in zip(nodules, order):
        np.testing.assert_allclose(nodule.centre_mm, [table[i][f"centre_{a}_mm"] for a in "xyz"], atol=0.01)
    from lungseg.classification.diagnose import nodule_patches as diagnose_patches

    ours = diagnose_patches(hu, GEOMETRY, nodules, **PATCH)
    np.testing.assert_array_equal(ours, patches[order])
    expected = predict_probabilities(models, meta, patches[order])
    assert set(expected) == {"image", "pathology"}
    for head, p in expected.items():
        np.testing.assert_allclose([n.probabilities[head] for n in nodules], p, rtol=0, atol=1e-12)


def test_lung_mask_gives_the_midline_and_small_components_are_dropped(classifier: Path) -> None:
    hu, mask, _ = _phantom()
    lung = np.zeros(SHAPE, np.uint8)
    lung[:, 20:50, 40:60] = 1  # midline at x index 49.5: both nodules lie on the patient's left of it
    models, meta = load_classifiers([classifier])
    nodules, side_from = diagnose_mask(hu, GEOMETRY, mask, models, meta, lung=lung, **PATCH)
    assert side_from == "lung mask" and [n.side for n in nodules] == ["left", "left"]
    speck = mask.copy()
    speck[0, 0, 0:2] = 1  # 2 voxels: under the default 3
    assert len(find_nodules(speck, GEOMETRY)) == 2 and len(find_nodules(speck, GEOMETRY, min_voxels=1)) == 3
    smaller = 4 / 3 * np.pi * 3.5 ** 3 * 1.2
    assert [n.nodule for n in find_nodules(mask, GEOMETRY, min_volume_mm3=smaller)] == [1]


def test_empty_mask_gives_a_header_only_table_and_a_no_nodules_overlay(classifier: Path, tmp_path: Path) -> None:
    hu, _, _ = _phantom()
    models, meta = load_classifiers([classifier])
    nodules, _ = diagnose_mask(hu, GEOMETRY, np.zeros(SHAPE, np.uint8), models, meta, **PATCH)
    assert nodules == []
    heads = list(meta["classification"]["heads"])
    write_table(tmp_path / "nodules.tsv", [], heads)
    assert (tmp_path / "nodules.tsv").read_text().splitlines() == ["\t".join([*COLUMNS, "p_malignant", "p_pathology_malignant"])]
    assert write_overlay(tmp_path / "overlay.png", hu, GEOMETRY, np.zeros(SHAPE, np.uint8), [], heads, "study") == ["no nodules"]
    assert Image.open(tmp_path / "overlay.png").info["Description"] == "no nodules"


def _outputs(out: Path) -> tuple[list[dict[str, str]], dict, str]:
    with open(out / "nodules.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows, json.loads((out / "nodules.json").read_text()), Image.open(out / "overlay.png").info["Description"]


def test_cli_end_to_end_on_a_case_file(seg_model: Path, classifier: Path, tmp_path: Path) -> None:
    hu, _, lung = _phantom()
    write_case(tmp_path / "c.h5", CaseVolume("c0042", hu, GEOMETRY, labels={"lung": lung}))
    out = tmp_path / "out"
    assert main(["diagnose", str(tmp_path / "c.h5"), "--seg-model", str(seg_model), "--cls-model", str(classifier),
                 "--out-dir", str(out), "--patch-mm", "20", "--patch-size", "32"]) == 0
    rows, summary, description = _outputs(out)
    # the rows are those of the mask `lungseg predict` writes with the same model
    predicted = Segmenter(seg_model).predict(tmp_path / "c.h5")
    expected = find_nodules(predicted, GEOMETRY)
    assert expected and len(rows) == len(expected) == len(summary["nodules"])
    assert list(rows[0]) == [*COLUMNS, "p_malignant", "p_pathology_malignant"]
    assert {r["study"] for r in rows} == {"c0042"} and summary["study"] == "c0042" and summary["side_from"] == "lung mask"
    assert [int(r["nodule"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [float(r["volume_mm3"]) for r in rows] == [round(n.volume_mm3, 1) for n in expected]
    assert all(0.5 < float(r["mean_seg_probability"]) <= 1 and 0 <= float(r["p_malignant"]) <= 1 for r in rows)
    assert description.startswith(f"#1 {float(rows[0]['diameter_mm']):.0f} mm p={float(rows[0]['p_malignant']):.2f}")


def test_cli_on_a_dicom_folder_writes_no_identifier(seg_model: Path, classifier: Path, tmp_path: Path, capsys) -> None:
    demo = demo_case(tmp_path, slices=12, size=64)
    folder = demo.dicom_dir.rename(tmp_path / "DOE_JANE_1234567")
    header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    secrets = {str(header.PatientName), str(header.PatientID), str(header.StudyInstanceUID),
               str(header.SeriesInstanceUID), str(header.SOPInstanceUID), folder.name}
    assert main(["diagnose", str(folder), "--seg-model", str(seg_model), "--cls-model", str(classifier),
                 "--out-dir", str(tmp_path / "out"), "--patch-mm", "20", "--patch-size", "32"]) == 0
    rows, summary, _ = _outputs(tmp_path / "out")
    assert rows and summary["study"] == "study" and all(r["study"] == "study" for r in rows)  # captions in the PNG too
    assert summary["side_from"] == "body centre"
    logged = capsys.readouterr()
    for path in (tmp_path / "out").iterdir():
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets if s), path
    assert not any(s in logged.err + logged.out for s in secrets - {folder.name} if s)


def test_cli_refuses_a_classifier_as_segmentation_model(classifier: Path, tmp_path: Path, capsys) -> None:
    hu, _, _ = _phantom()
    write_case(tmp_path / "c.h5", CaseVolume("c0001", hu, GEOMETRY))
    assert main(["diagnose", str(tmp_path / "c.h5"), "--seg-model", str(classifier), "--cls-model", str(classifier),
                 "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "is a classification model file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
