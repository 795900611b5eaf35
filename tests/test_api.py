"""The Python API (lungseg.api, re-exported at the top level): the same scans, masks, predictions and metrics
as the command-line tools, voxel for voxel; and read_scan + lung_mask on a real chest CT in ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ingest_data import demo_case

import lungseg
from lungseg import api
from lungseg.cli import main
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.ingest.errors import IngestError
from lungseg.training.checkpoint import model_file_state, save_checkpoint
from lungseg.training.models import UNet
from lungseg.training.preprocess import to_model_input

HU_WINDOW = (-1000.0, 400.0)


def _geometry_close(a: Geometry, b: Geometry) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def _save_model(path, hu: np.ndarray, seed: int, roi: dict | None = None) -> None:
    """A random small U-Net whose head bias puts the threshold at its median logit on ``hu`` (about half the
    voxels foreground, in an image-dependent pattern), saved as `lungseg train` saves a model file."""
    torch.manual_seed(seed)
    model = UNet(base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.head.bias -= model(to_model_input(hu, 48, HU_WINDOW)).median()
    save_checkpoint(path, model_file_state(model, arch="unet", model_kwargs={"base_channels": 4, "depth": 2}, label="lung",
                                           image_size=48, hu_window=HU_WINDOW, epoch=1, val_dice=0.5, roi=roi))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The demo case as a DICOM folder, the same scan as NIfTI, and as an ingested case file with its lung label."""
    root = tmp_path_factory.mktemp("api")
    demo = demo_case(root, slices=12, size=64)
    assert main(["ingest", str(demo.dicom_dir), "-o", str(root / "case.h5"), "--case-id", "c0001",
                 "--label", f"lung={demo.lung_path}"]) == 0
    scan = api.read_scan(demo.dicom_dir)
    write_volume(str(root / "ct.nii.gz"), scan.hu, scan.geometry)
    return demo, root


def test_top_level_reexports_without_importing_torch():
    code = ("import sys, lungseg; assert 'torch' not in sys.modules and 'lungseg.api' not in sys.modules; "
            "lungseg.read_scan; lungseg.lung_mask; lungseg.Segmenter; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(api.__all__) == set(lungseg.__all__) - {"__version__"}
    for name in api.__all__:
        assert getattr(lungseg, name) is getattr(api, name)
    with pytest.raises(AttributeError):
        lungseg.no_such_name  # noqa: B018


def test_read_scan_dicom_folder_volume_and_case_file_agree(case):
    demo, root = case
    from_dicom = api.read_scan(demo.dicom_dir)
    assert from_dicom.hu.dtype == np.int16 and from_dicom.shape == demo.shape and from_dicom.case_id == ""
    _geometry_close(from_dicom.geometry, demo.geometry)
    for other in (api.read_scan(str(root / "ct.nii.gz")), api.read_scan(root / "case.h5")):
        np.testing.assert_array_equal(other.hu, from_dicom.hu)
        _geometry_close(other.geometry, from_dicom.geometry)
    assert api.read_scan(root / "case.h5").case_id == "c0001"
    with pytest.raises(IngestError, match="does not exist"):
        api.read_scan(root / "missing.nii.gz")


@pytest.mark.parametrize("source", ["dicom", "nifti"])
def test_lung_mask_equals_the_lung_mask_command(case, tmp_path, source):
    demo, root = case
    path = demo.dicom_dir if source == "dicom" else root / "ct.nii.gz"
    assert main(["lung-mask", str(path), "-o", str(tmp_path / "cli.nii.gz")]) == 0
    expected, geometry = read_volume(str(tmp_path / "cli.nii.gz"))
    mask = api.lung_mask(api.read_scan(path))
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 2}  # the command's default method: right 1, left 2
    np.testing.assert_array_equal(api.lung_mask(path), expected)  # a path works too
    api.write_mask(mask, api.read_scan(path), tmp_path / "api.nii.gz")
    written, written_geometry = read_volume(str(tmp_path / "api.nii.gz"))
    np.testing.assert_array_equal(written, expected)
    assert written_geometry == geometry


def test_lung_mask_other_method_is_the_commands_too(case, tmp_path):
    import argparse

    from lungseg.lungmask import cli as lung_mask_cli

    parser = argparse.ArgumentParser()
    lung_mask_cli.configure(parser)
    choices = parser._option_string_actions["--method"].choices
    other = next(m for m in choices if m != api.default_lung_mask_method())
    demo, _ = case
    assert main(["lung-mask", str(demo.dicom_dir), "--method", other, "-o", str(tmp_path / "cli.nii.gz")]) == 0
    np.testing.assert_array_equal(api.lung_mask(demo.dicom_dir, method=other), read_volume(str(tmp_path / "cli.nii.gz"))[0])
    with pytest.raises(ValueError):
        api.lung_mask(demo.dicom_dir, method="no-such-method")


@pytest.mark.parametrize("setting", ["one model", "ensemble, flips, lung mask, components", "roi crop"])
def test_segmenter_equals_the_predict_command(case, tmp_path, setting):
    demo, root = case
    hu = api.read_scan(demo.dicom_dir).hu
    roi = {"mode": "crop", "label": "lung", "margin": 4} if setting == "roi crop" else None
    models = [tmp_path / "m0.pt", tmp_path / "m1.pt"]
    for seed, path in enumerate(models):
        _save_model(path, hu, seed, roi=roi)
    if setting == "one model":
        models, options, flags = models[:1], {}, []
    elif setting == "roi crop":
        options, flags = {}, []
    else:
        options = {"flips": "x", "lung_mask": "auto", "largest_components": 2}
        flags = ["--flips", "x", "--lung-mask", "auto", "--largest-components", "2"]
    for source in (demo.dicom_dir, root / "ct.nii.gz", root / "case.h5"):
        cli_out, api_out = tmp_path / "cli.nii.gz", tmp_path / "api.nii.gz"
        assert main(["predict", str(source), *(a for m in models for a in ("--model", str(m))), *flags,
                     "-o", str(cli_out)]) == 0
        segmenter = api.Segmenter(models if len(models) > 1 else models[0], **options)
        returned = segmenter.predict_file(source, api_out)
        expected, expected_geometry = read_volume(str(cli_out))
        got, got_geometry = read_volume(str(api_out))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(returned, expected)
        assert got.dtype == expected.dtype and got_geometry == expected_geometry
        np.testing.assert_array_equal(segmenter.predict(api.read_scan(source)), expected)
    assert 0.005 < expected.mean() < 0.9  # a real, partial mask: the comparison above is not trivial
    assert segmenter.label == "lung"


def test_segmenter_refuses_models_that_cannot_be_averaged(case, tmp_path):
    demo, _ = case
    hu = api.read_scan(demo.dicom_dir).hu
    _save_model(tmp_path / "plain.pt", hu, 0)
    _save_model(tmp_path / "crop.pt", hu, 1, roi={"mode": "crop", "label": "lung", "margin": 4})
    with pytest.raises(IngestError, match="roi"):
        api.Segmenter([tmp_path / "plain.pt", tmp_path / "crop.pt"])
    with pytest.raises(IngestError, match="not found"):
        api.Segmenter(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="flip"):
        api.Segmenter(tmp_path / "plain.pt", flips="z")


def test_metrics_equal_the_evaluate_command(case, tmp_path):
    demo, root = case
    scan = api.read_scan(root / "case.h5")
    prediction = api.lung_mask(scan)
    api.write_mask(prediction > 0, scan.geometry, tmp_path / "pred.nii.gz")  # a boolean mask is written as uint8
    assert main(["evaluate", "--case", str(root / "case.h5"), "--label", "lung",
                 "--pred", f"classical={tmp_path / 'pred.nii.gz'}", "--no-baseline", "-o", str(tmp_path / "metrics.json")]) == 0
    (row,) = json.loads((tmp_path / "metrics.json").read_text())
    reference, _ = read_volume(str(demo.lung_path))
    got = api.metrics(prediction, reference, scan.geometry)
    assert got == {k: row[k] for k in got}
    assert 0.9 < got["dice"] < 1.0 and got["hd95_mm"] >= 0
    assert api.metrics(prediction, reference, scan) == got  # a scan's geometry works too


@pytest.mark.realdata
def test_read_scan_and_lung_mask_on_a_real_chest_ct(shared_data):
    """NSCLC-Radiomics LUNG1-001: the whole chest, 134 slices of 512 x 512, 0.977 x 0.977 x 3 mm."""
    scan = api.read_scan(shared_data / "nsclc-radiomics" / "LUNG1-001" / "image")
    assert scan.shape == (134, 512, 512)
    np.testing.assert_allclose(scan.geometry.spacing, (0.977, 0.977, 3.0), atol=2e-3)
    mask = api.lung_mask(scan)
    voxel_ml = float(np.prod(scan.geometry.spacing)) / 1000
    right, left = (float(np.count_nonzero(mask == side)) * voxel_ml for side in (1, 2))
    assert 2000 < right + left < 8000, (right, left)  # an adult's lungs: 2-8 L
    assert right > 500 and left > 500  # both lungs found
    assert np.median(scan.hu[mask > 0]) < -600  # parenchyma, not soft tissue
