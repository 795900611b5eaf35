"""The chest X-ray demo: synthetic PA radiographs projected from the CT phantoms, their lung-field masks,
the PNG / DICOM DX layout, determinism by seed, and that no global threshold already solves it."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import DigitalXRayImageStorageForPresentation
from scipy import ndimage

from lungseg.cli import main
from lungseg.demo.radiograph import make_radiograph
from lungseg.demo.xray_files import SHEET_COLUMNS

SEED = 2026


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xray") / "demo"
    assert main(["demo-xray", "--out", str(out), "--n-cases", "4", "--size", "96", "--dicom-every", "2",
                 "--seed", str(SEED), "--no-progress"]) == 0
    return out


def read_sheet(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


def test_layout_image_and_mask_folders_labels_dicom_and_sheet(demo: Path) -> None:
    rows = read_sheet(demo / "patients.tsv")
    assert list(rows[0]) == list(SHEET_COLUMNS)
    assert [r["case_id"] for r in rows] == ["cxr001", "cxr002", "cxr003", "cxr004"]
    assert len({r["patient_id"] for r in rows}) == 4 and all(r["patient_id"].startswith("pat-") for r in rows)
    assert [r["dicom"] for r in rows] == ["", "dicom/cxr002.dcm", "", "dicom/cxr004.dcm"]
    for row in rows:
        image = np.asarray(Image.open(demo / row["image"]))
        mask = np.asarray(Image.open(demo / row["mask"]))
        labels = np.asarray(Image.open(demo / row["labels"]))
        assert Image.open(demo / row["image"]).mode == "L" and image.shape == mask.shape == labels.shape == (96, 96)
        assert row["mask"] == f"masks/{row['case_id']}_mask.png" and row["image"] == f"images/{row['case_id']}.png"
        assert set(np.unique(mask)) == {0, 255} and set(np.unique(labels)) == {0, 1, 2}
        assert np.array_equal(mask == 255, labels > 0)
        dpi = Image.open(demo / row["image"]).info["dpi"][0]  # pHYs: whole pixels per metre
        assert dpi == pytest.approx(25.4 / float(row["pixel_mm"]), rel=1e-2)


def test_radiograph_looks_like_a_pa_chest_film() -> None:
    r = make_radiograph("cxr001", SEED, 128)
    rows, cols = np.indices(r.labels.shape)
    # patient's right lung (1) on the image's left, the left lung (2) on its right; lungs in the upper part
    assert cols[r.labels == 1].mean() < 64 < cols[r.labels == 2].mean()
    assert rows[r.labels > 0].mean() < 80
    # lungs dark, the mediastinum between them and the abdomen below them bright
    lung = r.image[r.labels > 0].mean()
    lung_rows = slice(int(rows[r.labels > 0].min()) + 10, int(rows[r.labels > 0].max()) - 10)
    between = r.image[lung_rows, 60:68].mean()
    below = r.image[int(rows[r.labels > 0].max()) + 8:int(rows[r.labels > 0].max()) + 20, 40:88].mean()
    assert lung < 0.8 * between and lung < 0.8 * below
    assert r.image.dtype == np.uint16 and r.image.max() <= 4095 and 1.0 < r.pixel_mm < 4.0


def test_dicom_dx_header_and_monochrome1_inversion(demo: Path) -> None:
    for case, photometric in [("cxr002", "MONOCHROME1"), ("cxr004", "MONOCHROME2")]:
        ds = pydicom.dcmread(demo / "dicom" / f"{case}.dcm")
        assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation and ds.Modality == "DX"
        assert ds.PhotometricInterpretation == photometric and ds.ViewPosition == "PA"
        assert ds.BitsStored == 12 and float(ds.ImagerPixelSpacing[0]) > 0
        png = np.asarray(Image.open(demo / "images" / f"{case}.png")).astype(float)
        stored = ds.pixel_array.astype(float)
        shown = 4095 - stored if photometric == "MONOCHROME1" else stored
        assert np.abs(shown * 255 / 4095 - png).max() <= 0.5 + 1e-9  # the same picture, 12 vs 8 bits


def test_identity_only_inside_the_dicom_files(demo: Path) -> None:
    r = make_radiograph("cxr002", SEED, 96)
    secrets = [v.encode() for v in r.identity.values()]
    assert all(s in (demo / "dicom" / "cxr002.dcm").read_bytes() for s in secrets[:2])
    for path in demo.rglob("*"):
        if path.is_file() and path.suffix != ".dcm":
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path


def test_deterministic_by_seed(demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["demo-xray", "--out", str(again), "--n-cases", "4", "--size", "96", "--dicom-every", "2",
                 "--seed", str(SEED), "--no-progress"]) == 0
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all(filecmp.cmp(demo / f, again / f, shallow=False) for f in files)
    a, b = make_radiograph("cxr001", SEED, 96), make_radiograph("cxr001", SEED + 1, 96)
    assert not np.array_equal(a.image, b.image) and not np.array_equal(a.labels, b.labels)


def test_no_global_threshold_segments_the_lungs() -> None:
    """Heart, mediastinum, ribs, clavicles, domes, opacities and noise overlap the lungs' grey levels: even the
    best threshold chosen with the answer known (inside the body, on a smoothed image) stays far from a network."""
    best = []
    for case in ("cxr001", "cxr002", "cxr003"):
        r = make_radiograph(case, SEED, 128)
        image = ndimage.gaussian_filter(r.image.astype(float), 1.5)
        body = ndimage.binary_fill_holes(r.image > 0.1 * r.image.max())
        lungs = r.labels > 0
        dices = [2 * (body & (image < t) & lungs).sum() / ((body & (image < t)).sum() + lungs.sum())
                 for t in np.linspace(0, 4095, 128)]
        best.append(max(dices))
    assert max(best) < 0.8, best


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--n-cases >= 1"):
        main(["demo-xray", "--out", str(tmp_path), "--n-cases", "0"])
    with pytest.raises(SystemExit, match="--lung-fraction"):
        main(["demo-xray", "--out", str(tmp_path), "--lung-fraction", "1.5"])
    with pytest.raises(ValueError, match="size must be >= 32"):
        make_radiograph("cxr001", SEED, 16)
