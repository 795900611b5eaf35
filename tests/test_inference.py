"""lungseg predict: test-time flips, batching, post-processing, clear errors for a wrong model or study."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.inference.model import load_predictor
from lungseg.inference.postprocess import keep_largest_components, restrict_to
from lungseg.inference.predict import predict_logits, predict_probabilities, predict_volume
from lungseg.ingest.errors import IngestError
from lungseg.lungmask.default import lung_mask_threshold_3d
from lungseg.training.checkpoint import CHECKPOINT_FORMAT, model_file_state, save_checkpoint
from lungseg.training.dataset import roi_box
from lungseg.training.models import UNet, build_model
from lungseg.training.preprocess import logits_to_mask, to_model_input

META = {"image_size": 64, "hu_window": (-1000.0, 400.0)}


def smooth_volume(shape=(6, 100, 90), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.integers(-1000, 400, size=shape).astype(float), 3).astype(np.int16)


def balanced_model(hu: np.ndarray, image_size: int = 64, seed: int = 0) -> UNet:
    """A random small U-Net whose head bias puts the threshold at its median logit on ``hu``: about
    half the voxels are foreground, in an image-dependent (not flip-symmetric) pattern."""
    torch.manual_seed(seed)
    model = UNet(base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.head.bias -= model(to_model_input(hu, image_size, META["hu_window"])).median()
    return model


def save_model(model: UNet, path, image_size: int = 64) -> None:
    save_checkpoint(path, model_file_state(model, arch="unet", model_kwargs={"base_channels": 4, "depth": 2}, label="lung",
                                           image_size=image_size, hu_window=META["hu_window"], epoch=1, val_dice=0.5))


@pytest.mark.parametrize("flips, axis", [("x", 2), ("y", 1), ("xy", 1), ("xy", 2)])
def test_flips_make_the_prediction_mirror_symmetric(flips, axis):
    hu = smooth_volume()
    model = balanced_model(hu)
    plain = predict_volume(model, META, hu, progress=False)
    assert 0.2 < plain.mean() < 0.8
    mirrored = np.ascontiguousarray(np.flip(hu, axis))
    # without flips a 2-D CNN is not mirror-equivariant: the check below could fail
    assert (np.flip(predict_volume(model, META, mirrored, progress=False), axis) != plain).mean() > 0.1
    with_flips = predict_volume(model, META, hu, flips=flips, progress=False)
    of_mirror = np.flip(predict_volume(model, META, mirrored, flips=flips, progress=False), axis)
    assert (with_flips != of_mirror).mean() < 0.005  # float rounding at the threshold only
    assert (with_flips != plain).mean() > 0.01  # the flipped views really change the result


def test_batch_size_does_not_change_the_result():
    hu = smooth_volume(shape=(7, 48, 52))
    model = balanced_model(hu)
    reference = predict_volume(model, META, hu, batch_size=7, progress=False)
    for batch_size in (1, 3):
        np.testing.assert_array_equal(predict_volume(model, META, hu, batch_size=batch_size, progress=False), reference)
    with pytest.raises(ValueError, match="unknown flip mode"):
        predict_volume(model, META, hu, flips="z", progress=False)


def test_keep_largest_components_and_restrict():
    mask = np.zeros((10, 30, 30), np.uint8)
    mask[1:8, 2:12, 2:12] = 1  # 700 voxels
    mask[1:8, 15:22, 15:22] = 1  # 343
    mask[9, 28, 28] = 1  # speck
    mask[5, 25:27, 2:4] = 1  # 4 voxels
    two = keep_largest_components(mask, 2)
    assert two.sum() == 700 + 343 and two[9, 28, 28] == 0 and two[5, 25, 2] == 0
    assert keep_largest_components(mask, 1).sum() == 700
    assert keep_largest_components(mask, 10).sum() == mask.sum()
    assert not keep_largest_components(np.zeros_like(mask), 2).any()
    region = np.zeros_like(mask)
    region[:, :, :10] = 1
    np.testing.assert_array_equal(restrict_to(mask, region), mask * region)
    with pytest.raises(ValueError):
        keep_largest_components(mask, 0)


def _geometry_flipped_y(geometry: Geometry, shape) -> Geometry:
    d = geometry.direction_matrix.copy()
    origin = geometry.index_to_physical(np.array([0, shape[1] - 1, 0]))
    d[:, 1] *= -1
    return Geometry(geometry.spacing, tuple(origin.tolist()), tuple(d.ravel().tolist()))


def test_predict_cli_writes_the_inputs_own_geometry_even_with_flipped_axes(tmp_path, capsys):
    hu = smooth_volume(shape=(5, 80, 72))
    geometry = Geometry((0.7, 0.8, 2.5), (-120.0, -90.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    flipped_geometry = _geometry_flipped_y(geometry, hu.shape)
    write_volume(str(tmp_path / "ct.nii.gz"), hu, geometry)
    write_volume(str(tmp_path / "ct_flipped.nii.gz"), np.ascontiguousarray(hu[:, ::-1]), flipped_geometry)
    save_model(balanced_model(hu), tmp_path / "model.pt")
    for name in ("ct", "ct_flipped"):
        assert main(["predict", str(tmp_path / f"{name}.nii.gz"), "--model", str(tmp_path / "model.pt"), "--flips", "y",
                     "--threads", "1", "-o", str(tmp_path / f"{name}_mask.nii.gz")]) == 0
        src, out = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")), sitk.ReadImage(str(tmp_path / f"{name}_mask.nii.gz"))
        assert out.GetSize() == src.GetSize()
        np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), atol=1e-6)
    plain, _ = read_volume(str(tmp_path / "ct_mask.nii.gz"))
    flipped, _ = read_volume(str(tmp_path / "ct_flipped_mask.nii.gz"))
    assert 0.2 < plain.mean() < 0.8
    assert (flipped[:, ::-1] != plain).mean() < 0.005  # the same voxels in physical space


def test_postprocessing_options_of_the_cli(tmp_path):
    hu = np.full((6, 64, 64), -1000, np.int16)
    hu[:, 4:60, 4:60] = 40  # body
    hu[:, 16:48, 12:30] = -850  # right lung
    hu[:, 16:48, 34:52] = -850  # left lung
    lungs = hu == -850
    hu += np.random.default_rng(0).integers(-20, 21, hu.shape).astype(np.int16)  # noise, as in a scan
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_volume(str(tmp_path / "ct.nii.gz"), hu, geometry)
    model = UNet(base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.head.bias.fill_(50.0)  # predicts everything: post-processing must cut it down
    save_model(model, tmp_path / "model.pt")
    base = ["predict", str(tmp_path / "ct.nii.gz"), "--model", str(tmp_path / "model.pt")]
    assert main([*base, "-o", str(tmp_path / "all.nii.gz")]) == 0
    assert read_volume(str(tmp_path / "all.nii.gz"))[0].all()
    assert main([*base, "--lung-mask", "auto", "-o", str(tmp_path / "lung.nii.gz")]) == 0
    lung = read_volume(str(tmp_path / "lung.nii.gz"))[0]
    np.testing.assert_array_equal(lung > 0, lung_mask_threshold_3d(hu, geometry).mask > 0)  # what `lungseg lung-mask` keeps
    assert lung[lungs].mean() > 0.9 and lung.mean() < 0.5  # everything was predicted: the lungs remain, the rest goes
    upper_half = np.asarray([1, 1, 1, 0, 0, 0], np.uint8)[:, None, None]
    write_volume(str(tmp_path / "region.nii.gz"), lungs.astype(np.uint8) * upper_half, geometry)
    assert main([*base, "--lung-mask", str(tmp_path / "region.nii.gz"), "--largest-components", "1",
                 "-o", str(tmp_path / "one.nii.gz")]) == 0
    one = read_volume(str(tmp_path / "one.nii.gz"))[0]
    assert one.sum() == 3 * 32 * 18 and not one[3:].any()


def test_model_of_another_architecture_is_a_clear_error(tmp_path, capsys):
    hu = smooth_volume(shape=(3, 40, 40))
    write_volume(str(tmp_path / "ct.nii.gz"), hu, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    # lungmask-style file: a bare state_dict of another network
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 3, 1))
    torch.save(other.state_dict(), tmp_path / "other_net.pth")
    # a lungseg model file whose weights belong to a wider U-Net than its settings say
    state = model_file_state(UNet(base_channels=8, depth=2), arch="unet", model_kwargs={"base_channels": 4, "depth": 2},
                             label="lung", image_size=64, hu_window=(-1000, 400), epoch=1, val_dice=0.5)
    save_checkpoint(tmp_path / "mismatch.pt", state)
    save_checkpoint(tmp_path / "unknown_arch.pt", {**state, "arch": "resunet"})
    save_checkpoint(tmp_path / "checkpoint.pt", {"format": CHECKPOINT_FORMAT, "epoch": 3})
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    expected = {
        "other_net.pth": "bare state_dict of another network",
        "mismatch.pt": "has shape \\(8, 1, 3, 3\\), but architecture .unet. .* expects \\(4, 1, 3, 3\\)",
        "unknown_arch.pt": "architecture 'resunet', which this lungseg does not have",
        "checkpoint.pt": "training checkpoint",
        "garbage.pt": "not a PyTorch weights file",
        "missing.pt": "model file not found",
    }
    for name, reason in expected.items():
        with pytest.raises(IngestError, match=reason):
            load_predictor(tmp_path / name)
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "ct.nii.gz"), "--model", str(tmp_path / name),
                     "-o", str(tmp_path / "m.nii.gz")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err  # one line, no traceback
        assert str(tmp_path / name) in err and "Fix: pass the model.pt written by `lungseg train`" in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_study_that_fails_ingest_is_a_clear_error(tmp_path, capsys):
    model = UNet(base_channels=4, depth=2)
    save_model(model, tmp_path / "model.pt")
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\x00" * 300)  # not DICOM
    (tmp_path / "not_a_case.h5").write_bytes(b"junk")
    (tmp_path / "scan.txt").write_text("not a volume")
    for study in (series, tmp_path / "not_a_case.h5", tmp_path / "scan.txt", tmp_path / "missing"):
        assert main(["predict", str(study), "--model", str(tmp_path / "model.pt"), "-o", str(tmp_path / "m.nii.gz")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Fix:" in err and str(study) in err, err
    assert not (tmp_path / "m.nii.gz").exists()


def test_model_trained_on_a_region_of_interest_gets_the_same_region(tmp_path, capsys):
    hu = smooth_volume(shape=(4, 60, 60))
    model = balanced_model(hu)
    region = np.zeros(hu.shape, np.uint8)
    region[1:3, 20:30, 15:40] = 1
    crop = {**META, "roi": {"mode": "crop", "label": "lung", "margin": 2}}
    cropped = predict_volume(model, crop, hu, roi_mask=region, progress=False)
    # the square box training crops to (29 px: the region's 25 px width + 2 px margin each side), predicted alone
    y0, y1, x0, x1 = roi_box(region, 2)
    assert (y0, y1, x0, x1) == (11, 40, 13, 42)
    expected = np.zeros_like(cropped)
    expected[:, y0:y0 + 29, x0:x0 + 29] = predict_volume(model, META, hu[:, y0:y0 + 29, x0:x0 + 29], progress=False)
    np.testing.assert_array_equal(cropped, expected)
    assert cropped.any() and not cropped[:, :, 45:].any()
    masked = predict_volume(model, {**META, "roi": {"mode": "mask", "label": "lung", "margin": 0}}, hu, roi_mask=region,
                            progress=False)
    np.testing.assert_array_equal(masked, predict_volume(model, META, np.where(region > 0, hu, np.int16(-1000)), progress=False))
    with pytest.raises(ValueError, match="trained on a 'lung' region"):
        predict_volume(model, crop, hu, progress=False)
    # through the CLI: a model file that says it was trained on a nodule-box region needs an explicit --roi-mask
    state = model_file_state(model, arch="unet", model_kwargs={"base_channels": 4, "depth": 2}, label="nodule",
                             image_size=64, hu_window=META["hu_window"], epoch=1, val_dice=0.5)
    save_checkpoint(tmp_path / "roi.pt", {**state, "roi": {"mode": "crop", "label": "nodule", "margin": 4}})
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_volume(str(tmp_path / "ct.nii.gz"), hu, geometry)
    write_volume(str(tmp_path / "region.nii.gz"), region, geometry)
    base = ["predict", str(tmp_path / "ct.nii.gz"), "--model", str(tmp_path / "roi.pt"), "-o", str(tmp_path / "m.nii.gz")]
    capsys.readouterr()
    assert main(base) == 1
    assert "trained on a 'nodule' region" in capsys.readouterr().err
    assert main([*base, "--roi-mask", str(tmp_path / "region.nii.gz")]) == 0
    np.testing.assert_array_equal(read_volume(str(tmp_path / "m.nii.gz"))[0],
                                  predict_volume(model, {**META, "roi": {"mode": "crop", "margin": 4}}, hu, roi_mask=region,
                                                 progress=False))


ENSEMBLE = (("unet", {"base_channels": 4, "depth": 2}, 0), ("unet", {"base_channels": 4, "depth": 2}, 1),
            ("dense_unet", {"base_channels": 4, "depth": 2, "dense_layers": 2}, 2))


def _fold_model(path, hu, arch, kwargs, seed, label="lung", roi=None) -> None:
    """A random model built by the training code, biased so that about half of ``hu`` is foreground."""
    torch.manual_seed(seed)
    model = build_model(arch, **kwargs).eval()
    with torch.no_grad():
        model.head.bias -= model(to_model_input(hu, 64, META["hu_window"])).median()
    save_checkpoint(path, model_file_state(model, arch=arch, model_kwargs=kwargs, label=label, image_size=64,
                                           hu_window=META["hu_window"], epoch=1, val_dice=0.5, roi=roi))


def test_fold_ensemble_is_the_mean_of_the_models_probabilities(tmp_path, capsys):
    hu = smooth_volume(shape=(5, 56, 60), seed=3)
    geometry = Geometry((0.8, 0.7, 2.0), (-30.0, 12.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_case(tmp_path / "c1.h5", CaseVolume("c1", hu, geometry))
    paths = [tmp_path / f"fold{i}.pt" for i in range(len(ENSEMBLE))]
    for path, (arch, kwargs, seed) in zip(paths, ENSEMBLE):
        _fold_model(path, hu, arch, kwargs, seed)
    models, metas = zip(*(load_predictor(p) for p in paths))
    singles = [predict_probabilities(m, meta, hu, flips="x", progress=False) for m, meta in zip(models, metas)]
    ensemble = predict_probabilities(list(models), list(metas), hu, flips="x", progress=False)
    assert ensemble.dtype == np.float32 and ensemble.shape == hu.shape
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), rtol=0, atol=1e-6)
    # one model: its probabilities are exactly those the single-model mask thresholds (the pre-ensemble path)
    old_mask = logits_to_mask(predict_logits(models[0], to_model_input(hu, 64, META["hu_window"]), "x"), hu.shape[1:])
    np.testing.assert_array_equal(singles[0] > 0.5, old_mask.astype(bool))
    # through the CLI, from a case file: the written mask is the thresholded mean, in the scan's geometry
    cmd = ["predict", str(tmp_path / "c1.h5"), "--flips", "x", "--threads", "1"]
    assert main([*cmd, *(a for p in paths for a in ("--model", str(p))), "-o", str(tmp_path / "ens.nii.gz")]) == 0
    written, written_geometry = read_volume(str(tmp_path / "ens.nii.gz"))
    np.testing.assert_array_equal(written, (ensemble > 0.5).astype(np.uint8))
    np.testing.assert_allclose(written_geometry.origin, geometry.origin, atol=1e-4)
    exact_mean = np.mean(np.asarray(singles, dtype=np.float64), axis=0)
    differ = (written > 0) != (exact_mean > 0.5)
    assert np.all(np.abs(exact_mean[differ] - 0.5) < 1e-6)  # only float rounding at the threshold
    for single in singles:  # a real ensemble: no single model gives its mask
        assert ((single > 0.5) != (written > 0)).mean() > 0.01
    # one --model: exactly today's single-model mask
    assert main([*cmd, "--model", str(paths[0]), "-o", str(tmp_path / "one.nii.gz")]) == 0
    np.testing.assert_array_equal(read_volume(str(tmp_path / "one.nii.gz"))[0], old_mask)


def test_ensemble_of_models_that_do_not_agree_is_a_clear_error(tmp_path, capsys):
    hu = smooth_volume(shape=(3, 40, 40))
    write_case(tmp_path / "c1.h5", CaseVolume("c1", hu, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))))
    arch, kwargs, _ = ENSEMBLE[0]
    _fold_model(tmp_path / "lung.pt", hu, arch, kwargs, 0)
    _fold_model(tmp_path / "nodule.pt", hu, arch, kwargs, 1, label="nodule")
    _fold_model(tmp_path / "crop.pt", hu, arch, kwargs, 2, roi={"mode": "crop", "label": "lung", "margin": 4})
    _fold_model(tmp_path / "crop8.pt", hu, arch, kwargs, 3, roi={"mode": "crop", "label": "lung", "margin": 8})
    expected = {("lung.pt", "nodule.pt"): "segments 'nodule', but the first model segments 'lung'",
                ("lung.pt", "crop.pt"): "trained with roi crop of 'lung' with margin 4, but the first model with roi none",
                ("crop.pt", "crop8.pt"): "margin 8, but the first model with roi crop of 'lung' with margin 4"}
    for (first, second), reason in expected.items():
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "c1.h5"), "--model", str(tmp_path / first), "--model",
                     str(tmp_path / second), "-o", str(tmp_path / "m.nii.gz")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and str(tmp_path / second) in err, err
    assert not (tmp_path / "m.nii.gz").exists()
    models, metas = zip(*(load_predictor(tmp_path / n) for n in ("lung.pt", "nodule.pt")))
    with pytest.raises(ValueError, match="model 2 of the ensemble segments 'nodule'"):
        predict_probabilities(list(models), list(metas), hu, progress=False)


def test_device_option_auto_equals_cpu_here_and_a_missing_cuda_is_refused(tmp_path):
    """``--device``: ``auto`` picks CUDA only where there is one (the GPU check compares the two there)."""
    hu = smooth_volume(shape=(4, 48, 48))
    geometry = Geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_volume(str(tmp_path / "ct.nii.gz"), hu, geometry)
    save_model(balanced_model(hu), tmp_path / "model.pt")
    base = ["predict", str(tmp_path / "ct.nii.gz"), "--model", str(tmp_path / "model.pt"), "--threads", "1"]
    assert main([*base, "--device", "cpu", "-o", str(tmp_path / "cpu.nii.gz")]) == 0
    assert main([*base, "--device", "auto", "-o", str(tmp_path / "auto.nii.gz")]) == 0
    cpu, _ = read_volume(str(tmp_path / "cpu.nii.gz"))
    auto, _ = read_volume(str(tmp_path / "auto.nii.gz"))
    if torch.cuda.is_available():
        assert (cpu != auto).mean() < 0.001
    else:
        assert (cpu == auto).all()
        with pytest.raises(SystemExit, match="no usable CUDA device"):
            main([*base, "--device", "cuda", "-o", str(tmp_path / "cuda.nii.gz")])
    with pytest.raises(SystemExit, match="is not a torch device"):
        main([*base, "--device", "gpu0", "-o", str(tmp_path / "bad.nii.gz")])
