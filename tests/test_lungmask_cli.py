"""``lungseg lung-mask`` and ``lungseg lung-mask-qa``: inputs (DICOM folder, volume, case file), outputs in the
input's own geometry, QA table, bad input; and the real LIDC / abdominal slices in ../shared/data."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.demo.cohort import write_demo_case
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.ingest.scan import read_scan
from lungseg.lungmask.cli import compute_mask
from lungseg.lungmask.io import read_mask_h5
from lungseg.lungmask.methods import DEPRECATED_METHODS, METHODS, baseline_name

SEED = 2026


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _geometry_of(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory):
    return write_demo_case("demo004", tmp_path_factory.mktemp("demo"), SEED, n_slices=32, size=160)


def test_dicom_folder_in_its_own_geometry(demo_case, tmp_path):
    out = tmp_path / "out"
    rc = main(["lung-mask", str(demo_case.dicom_dir), "-o", str(out / "mask.nii.gz"), "--qa", str(out / "qa.json"),
               "--h5", str(out / "mask.h5"), "--case-id", "c0004"])
    assert rc == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(demo_case.dicom_dir)))
    series = reader.Execute()
    mask_image = sitk.ReadImage(str(out / "mask.nii.gz"))
    size, spacing, origin, direction = _geometry_of(series)
    m_size, m_spacing, m_origin, m_direction = _geometry_of(mask_image)
    assert m_size == size
    np.testing.assert_allclose(m_spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(m_origin, origin, atol=1e-3)
    np.testing.assert_allclose(m_direction, direction, atol=1e-6)
    mask = sitk.GetArrayFromImage(mask_image)
    truth = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(demo_case.lung_path)), mask_image,
                                                 sitk.Transform(), sitk.sitkNearestNeighbor))
    assert dice(mask == 1, truth == 1) >= 0.95 and dice(mask == 2, truth == 2) >= 0.95
    h5_mask, h5_geometry, attrs = read_mask_h5(out / "mask.h5")
    assert np.array_equal(h5_mask, mask) and h5_mask.dtype == np.uint8
    assert attrs["case_id"] == "c0004" and attrs["method"] == "threshold_3d" and "right lung" in attrs["label_values"]
    np.testing.assert_allclose(h5_geometry.origin, origin, atol=1e-3)
    qa = json.loads((out / "qa.json").read_text())
    assert qa["case_id"] == "c0004" and qa["plausible"] and qa["n_slices"] == 32
    identity = demo_case.identity
    secrets = [identity.patient_name, identity.patient_id, identity.birth_date, *identity.patient_name.split("^")[1:]]
    for path in out.iterdir():
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
        for secret in secrets:
            assert secret.encode() not in data, (path.name, secret)


def test_volume_input_keeps_its_flipped_geometry(demo_case, tmp_path):
    hu, geometry, _ = read_scan(demo_case.dicom_dir)
    far = geometry.index_to_physical(np.array([hu.shape[2] - 1, hu.shape[1] - 1, 0]))
    flipped = Geometry(geometry.spacing, (float(far[0]), float(far[1]), geometry.origin[2]),
                       (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    volume = tmp_path / "ct.nii.gz"
    write_volume(str(volume), hu[:, ::-1, ::-1].copy(), flipped)
    assert main(["lung-mask", str(volume), "-o", str(tmp_path / "m.nii.gz"), "--qa", str(tmp_path / "qa.json")]) == 0
    image = sitk.ReadImage(str(tmp_path / "m.nii.gz"))
    np.testing.assert_allclose(image.GetDirection(), flipped.direction, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), flipped.origin, atol=1e-3)
    direct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz")))[:, ::-1, ::-1]
    assert main(["lung-mask", str(demo_case.dicom_dir), "-o", str(tmp_path / "ref.nii.gz")]) == 0
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref.nii.gz")))
    assert dice(direct == 1, reference == 1) >= 0.97 and dice(direct == 2, reference == 2) >= 0.97  # same sides
    assert json.loads((tmp_path / "qa.json").read_text())["case_id"] == ""


def test_case_file_input_per_slice_otsu_and_qa_table(demo_case, tmp_path):
    hu, geometry, _ = read_scan(demo_case.dicom_dir)
    write_case(tmp_path / "c1.h5", CaseVolume(case_id="c1", image=hu, geometry=geometry))
    write_volume(str(tmp_path / "air.nii.gz"), np.full((4, 32, 32), -1000, dtype=np.int16), geometry)
    assert main(["lung-mask", str(tmp_path / "c1.h5"), "-o", str(tmp_path / "c1.nii.gz"),
                 "--qa", str(tmp_path / "c1.qa.json")]) == 0
    assert main(["lung-mask", str(tmp_path / "c1.h5"), "--method", "per_slice_otsu", "-o", str(tmp_path / "s.nii.gz"),
                 "--qa", str(tmp_path / "s.qa.json"), "--case-id", "c1s"]) == 0
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s.nii.gz"))))) <= {0, 1}
    # bad input is a flag, not an error
    assert main(["lung-mask", str(tmp_path / "air.nii.gz"), "-o", str(tmp_path / "air_mask.nii.gz"),
                 "--qa", str(tmp_path / "air.qa.json"), "--case-id", "air"]) == 0
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "air_mask.nii.gz"))).any()
    table = tmp_path / "qa.tsv"
    assert main(["lung-mask-qa", *(str(p) for p in sorted(tmp_path.glob("*.qa.json"))), "-o", str(table)]) == 0
    lines = [line.split("\t") for line in table.read_text().splitlines()]
    header, rows = lines[0], {r[0]: dict(zip(lines[0], r)) for r in lines[1:]}
    assert header[:3] == ["case_id", "method", "n_slices"] and set(rows) == {"air", "c1", "c1s"}
    assert rows["c1"]["plausible"] == "True" and rows["c1"]["method"] == "threshold_3d"
    assert rows["c1s"]["method"] == "per_slice_otsu"
    assert rows["air"]["plausible"] == "False" and "empty mask" in rows["air"]["flags"]
    with h5py.File(tmp_path / "c1.h5") as f:  # the case file is only read
        assert "lung_mask" not in f


def test_deprecated_method_names_still_work_with_one_warning_line(demo_case, tmp_path, capsys):
    """``--method default`` / ``seed001`` (the names before threshold_3d / per_slice_otsu): same mask, new name in
    the outputs, one warning line on stderr; the mapping is lungseg.lungmask.methods'."""
    hu, geometry, _ = read_scan(demo_case.dicom_dir)
    write_case(tmp_path / "c1.h5", CaseVolume(case_id="c1", image=hu, geometry=geometry))
    for old, new in DEPRECATED_METHODS.items():
        for name in (old, new):
            capsys.readouterr()
            assert main(["lung-mask", str(tmp_path / "c1.h5"), "--method", name, "-o", str(tmp_path / f"{name}.nii.gz"),
                         "--h5", str(tmp_path / f"{name}.h5"), "--qa", str(tmp_path / f"{name}.json")]) == 0
            warnings_ = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
            assert warnings_ == ([f"lungseg: warning: --method {old!r} is deprecated, use {new!r} "
                                  "(the old name is accepted until the next release)"] if name == old else [])
            assert json.loads((tmp_path / f"{name}.json").read_text())["method"] == new
            assert read_mask_h5(tmp_path / f"{name}.h5")[2]["method"] == new
        masks = [read_volume(str(tmp_path / f"{name}.nii.gz"))[0] for name in (old, new)]
        assert np.array_equal(*masks)
    with pytest.warns(DeprecationWarning, match="'seed001' is deprecated, use 'per_slice_otsu'"):
        assert compute_mask(hu[:4], geometry, "seed001").mask.max() <= 1
    with pytest.raises(ValueError, match="choose one of threshold_3d, per_slice_otsu"):
        compute_mask(hu[:4], geometry, "lungmask")


def test_deprecated_config_name_is_mapped_at_workflow_start(capsys):
    """The config check (run when the workflow starts) accepts lung_mask.method: default / seed001, prints one
    line and hands the rules the new name; the baseline in the metrics is classical_<new name>."""
    from conftest import REPO

    from lungseg.workflow_config import check_config

    for old, new in DEPRECATED_METHODS.items():
        config = yaml.safe_load((REPO / "config/config.yaml").read_text())
        config["lung_mask"]["method"] = old
        capsys.readouterr()
        check_config(config, REPO / "workflow/schemas/config.schema.yaml")
        assert config["lung_mask"]["method"] == new
        assert capsys.readouterr().err.splitlines() == [
            f"lungseg: warning: lung_mask.method {old!r} is deprecated, use {new!r} "
            "(the old name is accepted until the next release)"]
        assert baseline_name(old) == baseline_name(new) == f"classical_{new}"
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    check_config(config, REPO / "workflow/schemas/config.schema.yaml")
    assert config["lung_mask"]["method"] in METHODS and capsys.readouterr().err == ""


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.qa.json").write_text("{not json")
    assert main(["lung-mask-qa", str(tmp_path / "bad.qa.json"), "-o", str(tmp_path / "t.tsv")]) == 1
    assert main(["lung-mask", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "m.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("lungseg lung-mask") and "Fix:" in line for line in err)


@pytest.mark.realdata
def test_real_lidc_slices_and_abdomen(shared_data, tmp_path):
    for patient in ("LIDC-IDRI-0001", "LIDC-IDRI-0003"):
        out = tmp_path / f"{patient}.nii.gz"
        assert main(["lung-mask", str(shared_data / "lidc-idri" / patient), "-o", str(out), "--qa", f"{out}.json"]) == 0
        qa = json.loads(Path(f"{out}.json").read_text())
        assert qa["plausible"] and qa["n_components"] == 2, qa
        assert 0.8 < qa["right_left_ratio"] < 1.25 and qa["slices_with_lung"] == qa["n_slices"]
        mask, geometry = read_volume(str(out))
        centre = {side: geometry.index_to_physical(np.argwhere(mask == side)[:, ::-1].mean(axis=0))[0] for side in (1, 2)}
        assert centre[1] < centre[2]  # right lung at the patient's right (smaller LPS x)
        hu = sitk.GetArrayFromImage(sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
            str(shared_data / "lidc-idri" / patient))))
        assert np.median(hu[mask > 0]) < -600  # parenchyma, not soft tissue
        assert np.mean(hu[mask > 0] < -950) < 0.2  # the airway lumen stays out
    out = tmp_path / "abdomen.nii.gz"
    assert main(["lung-mask", str(shared_data / "ct-jpeg2000" / "example_ct_dicom"), "-o", str(out), "--qa", f"{out}.json"]) == 0
    qa = json.loads(Path(f"{out}.json").read_text())
    assert not qa["plausible"] and qa["volume_ml"] == 0 and "empty mask" in qa["flags"]


@pytest.mark.slow
def test_workflow_rules_write_masks_and_the_qa_table(tmp_path):
    """``lung_mask`` per case (NIfTI + HDF5 + QA) and ``lung_mask_qa`` on a 3-case demo cohort."""
    from conftest import REPO

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"].update(n_cases=3, slices=16, size=96)
    config["lung_mask"]["method"] = "default"  # the deprecated name of threshold_3d: still runs, with a warning
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "results/lungmask/qa.tsv"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "lungseg: warning: lung_mask.method 'default' is deprecated, use 'threshold_3d'" in proc.stderr
    results = tmp_path / "results"
    rows = (results / "lungmask/qa.tsv").read_text().splitlines()
    assert rows[0].startswith("case_id\tmethod") and [r.split("\t")[0] for r in rows[1:]] == ["demo001", "demo002", "demo003"]
    for case in ("demo001", "demo002", "demo003"):
        mask, _, attrs = read_mask_h5(results / "lungmask" / f"{case}.h5")
        nifti, _ = read_volume(str(results / "lungmask" / f"{case}.nii.gz"))
        assert np.array_equal(mask, nifti) and set(np.unique(mask)) == {0, 1, 2}
        assert attrs["case_id"] == case and attrs["method"] == "threshold_3d"
        assert (tmp_path / "logs/lung_mask" / f"{case}.log").is_file()
        assert (results / "benchmarks/lung_mask" / f"{case}.tsv").is_file()
    assert (results / "benchmarks/lung_mask_qa/lung_mask_qa.tsv").is_file()
