"""Patch training data and sliding-window inference (issue 13): sampling, geometry, reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungseg.casefile import CaseVolume, write_case
from lungseg.geometry import Geometry
from lungseg.inference.sliding_window import (
    gaussian_importance,
    patch_model_probabilities,
    sliding_window_probabilities,
    window_starts,
)
from lungseg.training.config import TrainConfig
from lungseg.training.patches import PatchDataset, PatchSpec, crop, dilate_region, resampled_shape

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def make_case(path: Path, seed: int, shape=(20, 96, 96), spacing=(0.8, 0.8, 2.0), blobs: int = 3) -> str:
    """A case with a 'lung' box and small bright 'nodule' cubes inside it."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    lung = np.zeros(shape, np.uint8)
    lung[2:-2, 16:-16, 16:-16] = 1
    image[lung > 0] = -850
    nodule = np.zeros(shape, np.uint8)
    for _ in range(blobs):
        z, y, x = rng.integers(4, shape[0] - 4), rng.integers(24, shape[1] - 24), rng.integers(24, shape[2] - 24)
        nodule[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 1
    image[nodule > 0] = 40
    write_case(path, CaseVolume(f"case{seed}", image, Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY),
                                labels={"lung": lung, "nodule": nodule}))
    return str(path)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("patch_cases")
    return [make_case(folder / f"c{i}.h5", i) for i in range(3)]


def dataset(cases: list[str], spec: PatchSpec, n: int = 400, rate: float = 0.4, **kwargs) -> PatchDataset:
    return PatchDataset(cases, "nodule", spec, (-1000.0, 400.0), n_items=n, foreground_rate=rate, **kwargs)


def test_foreground_rate_is_met_within_tolerance_and_patches_hold_the_object(cases) -> None:
    ds = dataset(cases, PatchSpec(1, 32, context_slices=1), n=1000, rate=0.4)
    ds.set_epoch_seed(3)
    flags = [ds.centre(i)[2] for i in range(len(ds))]
    assert abs(np.mean(flags) - 0.4) < 0.05  # binomial sd ~0.016
    for i in np.flatnonzero(flags)[:40]:
        image, mask = ds[int(i)]
        assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        assert mask.sum() > 0  # a foreground-centred patch (jitter <= S/4) holds the nodule's centre slice


def test_centres_stay_inside_the_volume_and_region(cases) -> None:
    ds = dataset(cases, PatchSpec(1, 32), n=500, rate=0.3, roi="crop", roi_label="lung", roi_margin=4)
    ds.set_epoch_seed(1)
    grown = dilate_region(np.pad(np.ones((16, 64, 64), bool), ((2, 2), (16, 16), (16, 16))), 4)
    in_region = 0
    for i in range(len(ds)):
        _, (z, y, x), foreground = ds.centre(i)
        assert 0 <= z < 20
        if not foreground:
            assert 2 <= z < 18 and 12 <= y < 84 and 12 <= x < 84  # the box of the lungs grown by the margin
            in_region += int(grown[z, y, x])
    assert in_region > 0


def test_items_are_reproducible_by_seed_and_differ_between_epochs(cases) -> None:
    a, b = dataset(cases, PatchSpec(1, 32, 2), augment=True), dataset(cases, PatchSpec(1, 32, 2), augment=True)
    a.set_epoch_seed(5)
    b.set_epoch_seed(5)
    for i in (0, 7, 123):
        assert all(torch.equal(u, v) for u, v in zip(a[i], b[i]))
    b.set_epoch_seed(6)
    assert any(a.centre(i)[1] != b.centre(i)[1] for i in range(20))


def test_volumetric_patches_and_patch_spacing(cases) -> None:
    ds = dataset(cases, PatchSpec(4, 32), n=20)
    image, mask = ds[0]
    assert image.shape == (1, 4, 32, 32) and mask.shape == (1, 4, 32, 32)
    coarse = dataset(cases, PatchSpec(1, 32, spacing_mm=1.6), n=20, rate=1.0)
    assert resampled_shape((96, 96), (0.8, 0.8), 1.6) == (48, 48)
    image, mask = coarse[0]
    # a 5-pixel nodule at 0.8 mm is ~2.5 pixels at 1.6 mm
    assert image.shape == (1, 32, 32) and 2 <= int(mask.sum()) <= 16


def test_crop_pads_outside_with_zeros() -> None:
    stack = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5) + 1
    out = crop(stack, -2, 3, 4)
    assert out.shape == (1, 4, 4)
    assert torch.equal(out[0, 2:, :2], stack[0, :2, 3:]) and out[0, :2].sum() == 0 and out[0, :, 2:].sum() == 0


@pytest.mark.parametrize("spec", [PatchSpec(1, 16, 0, None, 0.5), PatchSpec(1, 16, 2, None, 0.25),
                                  PatchSpec(4, 16, 0, None, 0.5), PatchSpec(1, 64, 1, None, 0.5)])
def test_sliding_window_with_an_identity_model_reconstructs_the_volume(spec: PatchSpec) -> None:
    volume = torch.rand(9, 37, 50)
    middle = spec.context_slices

    def identity(x: torch.Tensor) -> torch.Tensor:
        return x if spec.volumetric else x[:, middle:middle + 1]

    out = sliding_window_probabilities(identity, volume, spec, batch_size=7)
    assert out.shape == volume.shape
    assert torch.allclose(out, volume, atol=1e-5)


def test_sliding_window_runs_only_near_the_region_and_is_zero_outside() -> None:
    volume = torch.rand(6, 64, 64)
    region = np.zeros(volume.shape, bool)
    region[2, 40:50, 40:50] = True
    calls: list[int] = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    out = sliding_window_probabilities(identity, volume, PatchSpec(1, 16, 0, None, 0.5), region)
    inside = torch.from_numpy(region)
    assert torch.allclose(out[inside], volume[inside], atol=1e-5) and out[~inside].abs().max() == 0
    assert sum(calls) == 9  # the windows of slice 2 that touch the square: starts 32, 40, 48 per axis (of 7 x 7)


def test_window_starts_cover_the_axis_and_gaussian_has_no_zeros() -> None:
    assert window_starts(10, 16, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68 and max(np.diff(starts)) <= 16
    g = gaussian_importance((1, 32, 32))
    assert g.min() > 0 and g.max() > 0.95 and g[0, 15, 15] > g[0, 4, 4] > g[0, 0, 0]


def test_patch_model_probabilities_resamples_back_to_the_scan(cases) -> None:
    class Brightness(torch.nn.Module):  # "foreground" = input above the middle of the window
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x[:, 1:2] - 0.5) * 50 * self.w

    hu = np.full((6, 80, 80), -1000, np.int16)
    hu[3, 30:40, 30:40] = 300
    meta = {"input": {"kind": "patches", "patch_size": [1, 32, 32], "context_slices": 1, "spacing_mm": 1.6,
                      "overlap": 0.5}, "hu_window": (-1000.0, 400.0), "roi": {"mode": "none"}}
    probs = patch_model_probabilities(Brightness(), meta, hu, (0.8, 0.8, 2.0), None, progress=False)
    assert probs.shape == hu.shape
    found = probs > 0.5
    assert found[3, 31:39, 31:39].all() and found.sum() <= 2 * 100 and not found[0].any()


def test_config_checks_patch_settings() -> None:
    TrainConfig(patch_size=64, context_slices=2, depth=3).validate()
    TrainConfig(arch="unet3d", patch_size=48, patch_depth=8, depth=3).validate()
    for bad, words in [({"arch": "unet3d"}, "needs patch training"),
                       ({"context_slices": 2}, "needs patch training"),
                       ({"patch_size": 64, "patch_depth": 4}, "patch_depth is for 3-D"),
                       ({"arch": "unet3d", "patch_size": 32, "context_slices": 1, "depth": 3}, "2-D architectures"),
                       ({"patch_size": 8, "depth": 4}, "too small"),
                       ({"patch_size": 64, "oversample": 5.0, "depth": 3}, "foreground_rate"),
                       ({"patch_size": 64, "overlap": 1.0, "depth": 3}, "overlap")]:
        with pytest.raises(ValueError, match=words):
            TrainConfig(**bad).validate()
    spec = TrainConfig(patch_size=64, context_slices=2, depth=3, patch_spacing=1.0).input_spec()
    assert spec == {"kind": "patches", "patch_size": [1, 64, 64], "context_slices": 2, "spacing_mm": 1.0, "overlap": 0.5}
    assert TrainConfig(patch_size=64, context_slices=2, depth=3).model_kwargs()["in_channels"] == 5


def test_a_patch_is_the_window_of_the_normalised_slices(cases) -> None:
    from lungseg.casefile import read_case
    from lungseg.training.preprocess import normalize_hu

    ds = dataset(cases, PatchSpec(1, 32, context_slices=1), n=60, rate=0.5)
    ds.set_epoch_seed(11)
    for i in range(0, 60, 7):
        case_idx, (z, y, x), _ = ds.centre(i)
        case = read_case(cases[case_idx])
        zs = np.clip([z - 1, z, z + 1], 0, case.image.shape[0] - 1)
        full = normalize_hu(torch.from_numpy(case.image[zs]), (-1000.0, 400.0))
        image, mask = ds[i]
        assert torch.equal(image, crop(full, y - 16, x - 16, 32))
        assert torch.equal(mask, crop(torch.from_numpy(case.labels["nodule"][z:z + 1].astype(np.float32)), y - 16, x - 16, 32))


@pytest.mark.parametrize("settings", [{"arch": "unet", "context_slices": 1},
                                      {"arch": "unet3d", "patch_depth": 4, "base_channels": 4}])
def test_patch_training_writes_a_model_that_predicts_by_sliding_window(cases, tmp_path: Path, settings: dict) -> None:
    from lungseg.inference.model import load_ensemble
    from lungseg.inference.predict import predict_probabilities
    from lungseg.training.checkpoint import load_checkpoint
    from lungseg.training.train import train

    config = TrainConfig(**{"label": "nodule", "patch_size": 32, "depth": 2, "base_channels": 8, "epochs": 2,
                            "batch_size": 8, "patches_per_epoch": 32, "roi": "crop", "roi_margin": 4, "threads": 1,
                            **settings})
    model_path = train(config, cases[:2], cases[2:], tmp_path / "run")
    state = load_checkpoint(model_path)
    assert state["input"] == config.input_spec() and state["roi"]["margin"] == 4
    models, metas = load_ensemble([model_path])
    from lungseg.casefile import read_case

    case = read_case(cases[2])
    probs = predict_probabilities(models, metas, case.image, roi_mask=case.labels["lung"], spacing=case.geometry.spacing,
                                  progress=False)
    assert probs.shape == case.image.shape and np.isfinite(probs).all()
    grown = dilate_region(case.labels["lung"], 4)
    assert (probs[~grown] == 0).all()  # nothing outside the lungs grown by the margin
    with pytest.raises(ValueError, match="region"):
        predict_probabilities(models, metas, case.image, roi_mask=None, spacing=case.geometry.spacing, progress=False)


@pytest.mark.parametrize(("n_in", "n_out"), [(96, 55), (80, 80), (50, 117)])
def test_sampling_a_window_equals_cropping_the_resampled_slices(n_in: int, n_out: int) -> None:
    from lungseg.training.patches import axis_sampling, resample_inplane, sample_window

    rng = np.random.default_rng(n_in)
    stack = torch.from_numpy(rng.random((3, n_in, n_in - 7), dtype=np.float32))
    labels = torch.from_numpy((rng.random((1, n_in, n_in - 7)) > 0.7).astype(np.float32))
    out_w = round(n_out * (n_in - 7) / n_in)
    whole = resample_inplane(stack, (n_out, out_w))
    whole_labels = resample_inplane(labels, (n_out, out_w), "nearest")
    for y0, x0 in [(-10, -3), (0, 0), (n_out - 20, out_w - 5), (n_out // 3, out_w // 2)]:
        for mode, source, reference in (("bilinear", stack, whole), ("nearest", labels, whole_labels)):
            rows, cols = axis_sampling(n_in, n_out, y0, 32, mode), axis_sampling(n_in - 7, out_w, x0, 32, mode)
            window = sample_window(source[:, rows.span, cols.span], rows, cols)
            assert torch.allclose(window, crop(reference, y0, x0, 32), atol=1e-5), (mode, y0, x0)
