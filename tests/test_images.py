"""2-D image datasets as cases: reading images and masks, the folder layouts, ingest, the X-ray baseline, predict to PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.casefile import read_case, read_status
from lungseg.cli import main
from lungseg.images import INTENSITY, ingest_image, is_image_file, read_image
from lungseg.images.baseline import radiograph_lung_mask
from lungseg.images.layouts import LayoutOptions, image_sheet
from lungseg.images.masks import read_mask
from lungseg.ingest.errors import IngestError
from lungseg.training.checkpoint import model_file_state, save_checkpoint
from lungseg.training.models import UNet

SECRET = "test-images-secret"
H, W = 48, 64


def chest(seed: int = 0) -> np.ndarray:
    """A tiny radiograph-like 8-bit image (H, W): black outside, bright body, two dark lungs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    image = np.full((H, W), 10.0)
    image[4:-4, 6:-6] = 200.0
    for cx in (20, 44):  # image-left lung = the patient's right
        image[((yy - 24) / 16) ** 2 + ((xx - cx) / 8) ** 2 < 1] = 60.0
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def lungs(side: str | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    right = ((yy - 24) / 16) ** 2 + ((xx - 20) / 8) ** 2 < 1
    left = ((yy - 24) / 16) ** 2 + ((xx - 44) / 8) ** 2 < 1
    return {"right": right, "left": left, None: right | left}[side].astype(np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def palette_gif(path: Path, mask01: np.ndarray) -> Path:
    im = Image.fromarray(mask01.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def radiograph_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME1", modality: str = "CR",
                     spacing: tuple[float, float] | None = (0.2, 0.3), window: tuple[float, float] | None = None,
                     preamble: bool = True) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-PID-123"
    ds.Modality, ds.PhotometricInterpretation = modality, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    if spacing:
        ds.PixelSpacing = list(spacing)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no preamble, no file meta: an old ACR-NEMA-style file (implicit VR)
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


# ---- reading images ----

def test_8bit_png_is_scaled_to_0_1000_and_spacing_is_declared_unknown(tmp_path):
    image = read_image(save(tmp_path / "x.png", np.array([[0, 255], [51, 102]], np.uint8)))
    assert image.pixels.dtype == np.int16 and image.pixels.tolist() == [[0, 1000], [200, 400]]
    assert image.spacing is None and image.provenance["spacing_known"] == 0
    assert image.provenance["intensity"] == INTENSITY


def test_16bit_png_is_min_max_normalised(tmp_path):
    array = np.array([[1000, 3000], [2000, 1000]], np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(array).save(path)
    image = read_image(path)
    assert image.pixels.tolist() == [[0, 1000], [500, 0]]
    assert "min-max" in image.provenance["intensity_mapping"]


def test_rgb_image_becomes_grey_and_says_so(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: luma 0.587
    image = read_image(save(tmp_path / "c.jpg", rgb))
    assert abs(int(image.pixels.mean()) - round(150 * 1000 / 255)) <= 8
    assert "RGB" in image.provenance["colour_to_grey"]


def test_monochrome1_dicom_is_inverted_and_spacing_comes_from_pixel_spacing(tmp_path):
    stored = np.array([[0, 4000], [2000, 4000]], np.uint16)
    mono1 = read_image(radiograph_dicom(tmp_path / "m1.dcm", stored, spacing=(0.2, 0.3)))
    mono2 = read_image(radiograph_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2"))
    assert mono2.pixels.tolist() == [[0, 1000], [500, 1000]]
    assert mono1.pixels.tolist() == [[1000, 0], [500, 0]]  # bright = dense after inversion
    assert mono1.spacing == (0.3, 0.2)  # PixelSpacing is (rows = y, columns = x); ours is (x, y)
    assert mono1.provenance["spacing_known"] == 1 and "MONOCHROME1 inverted" in mono1.provenance["dicom_pixel_steps"]


def test_voi_window_applied_or_ignored_by_choice(tmp_path):
    stored = np.linspace(0, 4000, 100, dtype=np.uint16).reshape(10, 10)
    path = radiograph_dicom(tmp_path / "w.dcm", stored, photometric="MONOCHROME2", window=(2000, 1000))
    applied, ignored = read_image(path, voi="apply").pixels, read_image(path, voi="ignore").pixels
    assert (applied == 0).sum() > 30 and (applied == 1000).sum() > 30  # clipped outside 1500..2500
    assert (ignored == 0).sum() == 1 and (ignored == 1000).sum() == 1


def test_dicom_without_preamble_is_read_with_force_and_noted(tmp_path):
    path = radiograph_dicom(tmp_path / "old", np.full((4, 5), 7, np.uint16), preamble=False)
    assert path.read_bytes()[128:132] != b"DICM" and is_image_file(path)
    image = read_image(path)
    assert image.pixels.shape == (4, 5) and "force" in image.provenance["dicom_read_note"]


def test_dicom_identifiers_never_reach_the_case(tmp_path):
    path = radiograph_dicom(tmp_path / "id.dcm", np.arange(20, dtype=np.uint16).reshape(4, 5))
    case = ingest_image("c1", path)
    text = json.dumps({k: str(v) for k, v in case.provenance.items()})
    assert "Doe" not in text and "SECRET-PID" not in text and "1.2.826" not in text


# ---- bad input ----

@pytest.mark.parametrize("problem", ["truncated", "not_an_image", "multiframe_tiff", "ct_slice", "missing"])
def test_bad_images_raise_one_line_naming_the_file(tmp_path, problem):
    if problem == "truncated":
        path = save(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:200])
    elif problem == "not_an_image":
        path = tmp_path / "n.png"
        path.write_text("hello")
    elif problem == "multiframe_tiff":
        path = tmp_path / "v.tif"
        frames = [Image.fromarray(chest(k)) for k in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    elif problem == "ct_slice":
        path = radiograph_dicom(tmp_path / "ct.dcm", np.zeros((4, 4), np.uint16), modality="CT")
    else:
        path = tmp_path / "missing.png"
    with pytest.raises(IngestError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "Fix:" in str(info.value) and "\n" not in str(info.value)
    if problem == "multiframe_tiff":
        assert "3-D" in str(info.value)


# ---- masks ----

@pytest.mark.parametrize("kind", ["0_255", "0_1", "palette_gif", "bilevel", "rgb_black_white"])
def test_mask_encodings_read_as_0_1(tmp_path, kind):
    mask = lungs()
    if kind == "0_255":
        path = save(tmp_path / "m.png", mask * 255)
    elif kind == "0_1":
        path = save(tmp_path / "m.png", mask)
    elif kind == "palette_gif":
        path = palette_gif(tmp_path / "m.gif", mask)
    elif kind == "bilevel":
        path = save(tmp_path / "m.png", mask.astype(bool))
    else:
        path = save(tmp_path / "m.png", np.repeat((mask * 255)[..., None], 3, axis=2))
    assert np.array_equal(read_mask(path, (H, W)), mask)


@pytest.mark.parametrize("problem", ["more_colours", "grey_values", "size"])
def test_bad_masks_are_refused_naming_the_file(tmp_path, problem):
    mask = lungs()
    if problem == "more_colours":
        rgb = np.repeat((mask * 255)[..., None], 3, axis=2)
        rgb[:5, :5] = (255, 0, 0)
        path = save(tmp_path / "m.png", rgb)
    elif problem == "grey_values":
        path = save(tmp_path / "m.png", (mask * 200 + 3).astype(np.uint8))
    else:
        path = save(tmp_path / "m.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(IngestError) as info:
        read_mask(path, (H, W))
    assert str(path) in str(info.value)
    expected = {"more_colours": "colours", "grey_values": "outside the label set", "size": "64x49 pixels, its image 64x48"}
    assert expected[problem] in str(info.value)


def test_right_and_left_masks_combine_into_1_right_2_left(tmp_path):
    image = save(tmp_path / "i.png", chest())
    right, left = save(tmp_path / "r.png", lungs("right") * 255), save(tmp_path / "l.png", lungs("left") * 255)
    case = ingest_image("c1", image, {"lung_right": right, "lung_left": left})
    lung = case.labels["lung"][0]
    assert case.image.shape == (1, H, W) and set(np.unique(lung)) == {0, 1, 2}
    assert lung[:, : W // 2].max() == 1 and lung[:, W // 2:].max() == 2  # image left = patient's right
    with pytest.raises(IngestError, match="no left counterpart"):
        ingest_image("c1", image, {"lung_right": right})
    with pytest.raises(IngestError, match="overlaps"):
        ingest_image("c1", image, {"lung_right": right, "lung_left": save(tmp_path / "b.png", lungs() * 255)})


def test_several_masks_of_one_image_are_united(tmp_path):
    image = save(tmp_path / "i.png", chest())
    parts = {"lung": save(tmp_path / "a.png", lungs("right")), "lung_part1": save(tmp_path / "b.png", lungs("left"))}
    assert np.array_equal(ingest_image("c1", image, parts).labels["lung"][0], lungs())


# ---- layouts ----

def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_paired_folders_with_gif_masks_report_orphans(tmp_path):
    root = tmp_path / "set"
    for k in range(3):
        save(root / "images" / f"p{k}_scan.png", chest(k))
    palette_gif(root / "masks" / "p0_scan_mask.gif", lungs())
    save(root / "masks" / "p1_scan-mask.png", lungs() * 255)
    save(root / "masks" / "p9_scan_mask.png", lungs() * 255)  # no image
    sheet = image_sheet(root, SECRET, LayoutOptions(patient_pattern=r"p(?P<patient>\d+)_"))
    assert sheet.layout == "paired_folders" and len(sheet.cases) == 2
    assert {Path(r["label_lung"]).name for r in sheet.cases} == {"p0_scan_mask.gif", "p1_scan-mask.png"}
    reasons = {Path(r["path"]).name: r["reason"] for r in sheet.skipped}
    assert reasons == {"p2_scan.png": "image without mask", "p9_scan_mask.png": "mask without image (no image of this stem)"}
    assert all(r["patient_from"] == "pattern" for r in sheet.cases) and not sheet.warnings
    assert all(r["case_id"].startswith("i") and "p0" not in r["case_id"] for r in sheet.cases)


def test_class_folders_give_a_class_column_and_numbered_masks(tmp_path):
    root = tmp_path / "us"
    for cls in ("benign", "malignant"):
        save(root / cls / f"{cls} (1).png", chest())
        save(root / cls / f"{cls} (1)_mask.png", lungs("right") * 255)
    save(root / "benign" / "benign (1)_mask_1.png", lungs("left") * 255)
    save(root / "benign" / "benign (2).png", chest(2))  # no mask
    sheet = image_sheet(root, SECRET, LayoutOptions(label="tumour"))
    assert sheet.layout == "class_folders"
    by_class = {r["class"]: r for r in sheet.cases}
    assert set(by_class) == {"benign", "malignant"}
    assert Path(by_class["benign"]["label_tumour_part1"]).name == "benign (1)_mask_1.png"
    assert [Path(r["path"]).name for r in sheet.skipped] == ["benign (2).png"]
    assert sheet.warnings and "different splits" in sheet.warnings[0]
    case = ingest_image("c", by_class["benign"]["dicom"], {k[len("label_"):]: Path(v) for k, v in by_class["benign"].items()
                                                             if k.startswith("label_")})
    assert np.array_equal(case.labels["tumour"][0], lungs())


def test_left_right_folders_are_detected_and_one_sided_images_reported(tmp_path):
    root = tmp_path / "mc"
    for k in range(2):
        save(root / "CXR_png" / f"MCU_{k}.png", chest(k))
        save(root / "ManualMask" / "rightMask" / f"MCU_{k}.png", lungs("right") * 255)
    save(root / "ManualMask" / "leftMask" / "MCU_0.png", lungs("left") * 255)
    sheet = image_sheet(root, SECRET)
    assert sheet.layout == "left_right" and len(sheet.cases) == 1
    assert {"label_lung_right", "label_lung_left"} <= set(sheet.cases[0])
    assert [r["reason"] for r in sheet.skipped] == ["image without a left mask"]


def test_a_sheet_with_image_mask_and_patient_columns(tmp_path):
    save(tmp_path / "img" / "a.jpg", chest())
    save(tmp_path / "img" / "b.jpg", chest(1))
    save(tmp_path / "seg" / "1.png", lungs() * 255)
    (tmp_path / "pairs.csv").write_text("image,mask,pid\nimg/a.jpg,seg/1.png,7\nimg/b.jpg,,7\nimg/c.jpg,seg/1.png,8\n")
    sheet = image_sheet(tmp_path / "pairs.csv", SECRET, LayoutOptions(patient_column="pid"))
    assert sheet.layout == "sheet" and len(sheet.cases) == 1 and sheet.cases[0]["patient_from"] == "column"
    assert sorted(r["reason"].split(" (")[0] for r in sheet.skipped) == ["image not found", "image without mask"]


def test_image_sheet_cli_writes_sheet_and_skipped_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", SECRET)
    root = tmp_path / "set"
    save(root / "1.jpg", chest())
    save(root / "1-mask.png", lungs() * 255)
    save(root / "2-mask.png", lungs() * 255)
    (root / "vol.nii.gz").write_bytes(b"\0")
    assert main(["image-sheet", str(root), "-o", str(tmp_path / "out" / "cases.tsv")]) == 0
    cases, skipped = rows(tmp_path / "out" / "cases.tsv"), rows(tmp_path / "out" / "image_skipped.tsv")
    assert len(cases) == 1 and cases[0]["dicom"].endswith("1.jpg") and cases[0]["label_lung"].endswith("1-mask.png")
    assert sorted(Path(r["path"]).name for r in skipped) == ["2-mask.png", "vol.nii.gz"]


# ---- ingest, baseline, predict ----

def test_ingest_cli_writes_a_one_slice_case_and_quarantines_bad_input(tmp_path):
    image, mask = save(tmp_path / "i.png", chest()), save(tmp_path / "m.png", lungs() * 255)
    out = tmp_path / "case.h5"
    assert main(["ingest", "--case-id", "x1", "--label", f"lung={mask}", "-o", str(out), str(image)]) == 0
    case = read_case(out)
    assert case.image.shape == (1, H, W) and case.labels["lung"].shape == (1, H, W)
    assert case.provenance["intensity"] == INTENSITY and case.provenance["spacing_known"] == 0
    with h5py.File(out) as f:
        assert f.attrs["source_kind"] == "image2d"
    small = save(tmp_path / "small.png", lungs()[:-2] * 255)
    status = tmp_path / "bad.status.json"
    assert main(["ingest", "--case-id", "x2", "--label", f"lung={small}", "-o", str(tmp_path / "bad.h5"),
                 "--status", str(status), str(image)]) == 0
    assert read_status(tmp_path / "bad.h5")["status"] == "quarantined"
    assert str(small) in json.loads(status.read_text())["file"]


def test_radiograph_baseline_finds_two_lungs_with_sides(tmp_path):
    normalised = read_image(save(tmp_path / "i.png", chest())).pixels
    mask, notes = radiograph_lung_mask(normalised)
    truth = lungs()
    dice = 2 * ((mask > 0) & (truth > 0)).sum() / ((mask > 0).sum() + truth.sum())
    assert dice > 0.8 and not notes
    assert mask[:, : W // 2].max() == 1 and mask[:, W // 2:].max() == 2


def test_predict_writes_a_png_in_the_images_own_grid(tmp_path):
    image = save(tmp_path / "i.png", chest())
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2).eval()
    save_checkpoint(tmp_path / "m.pt", model_file_state(model, arch="unet", model_kwargs={"base_channels": 4, "depth": 2},
                                                        label="lung", image_size=32, hu_window=(0.0, 1000.0), epoch=1,
                                                        val_dice=0.5))
    out, probabilities = tmp_path / "out" / "mask.png", tmp_path / "out" / "p.png"
    assert main(["predict", str(image), "--model", str(tmp_path / "m.pt"), "-o", str(out),
                 "--probabilities", str(probabilities)]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    p = np.asarray(Image.open(probabilities))
    assert p.shape == (H, W) and np.array_equal(mask > 0, p > 127)


# ---- real radiographs (../shared/data) ----

@pytest.mark.realdata
def test_real_radiographs_read(shared_data):
    folder = shared_data / "dicom-oddities" / "radiographs"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    images = {p.name: read_image(p) for p in sorted(folder.iterdir())}
    assert images["CR-ModalitySequenceLUT.dcm"].spacing == (0.15, 0.15)
    assert "modality LUT" in images["CR-ModalitySequenceLUT.dcm"].provenance["dicom_pixel_steps"]
    assert "force" in images["CR-MONO1-10-chest"].provenance["dicom_read_note"]
    assert images["RG1_J2KI.dcm"].spacing is None  # PixelSpacing 0\0: unknown
    assert images["dx_image.dcm"].provenance["presentation_intent"] == "FOR PRESENTATION"
    for name, image in images.items():
        assert image.pixels.min() == 0 and image.pixels.max() == 1000, name
        h, w = image.pixels.shape  # bright = dense: the (MONOCHROME1) image's centre is brighter than its corners
        centre = image.pixels[h // 3: 2 * h // 3, w // 3: 2 * w // 3].mean()
        assert image.provenance["photometric"] != "MONOCHROME1" or centre > image.pixels[: h // 10, : w // 10].mean(), name


@pytest.mark.realdata
def test_real_chest_xray_sheet_and_masks(shared_data):
    v7 = shared_data / "chest-xray" / "v7-covid" / "pairs.csv"
    if not v7.is_file():
        pytest.skip(f"{v7} not found")
    sheet = image_sheet(v7, SECRET, LayoutOptions(patient_column="source_patientid"))
    assert len(sheet.cases) == 12 and not sheet.skipped and not sheet.warnings
    uiip = image_sheet(shared_data / "chest-xray" / "uiip", SECRET)
    assert uiip.layout == "class_folders" and len(uiip.cases) == 4 and uiip.warnings
    row = sheet.cases[0]
    case = ingest_image(row["case_id"], row["dicom"], {"lung": Path(row["label_lung"])})
    assert case.image.shape[0] == 1 and 0.1 < case.labels["lung"].mean() < 0.6
