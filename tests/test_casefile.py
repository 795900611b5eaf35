import numpy as np
import pytest

from lungseg.casefile import CaseVolume, open_case, read_case, write_case
from lungseg.geometry import Geometry, read_volume, write_volume

GEOM = Geometry((0.7, 0.8, 2.5), (-150.0, -170.0, -300.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(-1024, 3000, size=(5, 16, 12)).astype(np.int16)
    lung = (rng.random((5, 16, 12)) > 0.5).astype(np.uint8)
    write_case(tmp_path / "c.h5", CaseVolume("c001", image, GEOM, {"lung": lung}, {"n_slices": 5}))
    case = read_case(tmp_path / "c.h5")
    assert case.case_id == "c001" and case.geometry == GEOM
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.labels["lung"], lung)
    assert case.provenance["n_slices"] == 5
    with open_case(tmp_path / "c.h5") as f:
        assert f["image"].chunks == (1, 16, 12)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_label_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="resample the label"):
        CaseVolume("c", np.zeros((2, 3, 4), np.int16), GEOM, {"lung": np.zeros((2, 3, 5), np.uint8)})


def test_not_a_case_file(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(ValueError, match="not a lungseg case file"):
        open_case(tmp_path / "x.h5")


def test_volume_round_trip_keeps_geometry(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_volume(str(tmp_path / "m.nii.gz"), array, GEOM)
    back, geom = read_volume(str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(geom.spacing, GEOM.spacing, rtol=1e-6)
    np.testing.assert_allclose(geom.origin, GEOM.origin, atol=1e-4)
    np.testing.assert_allclose(geom.direction, GEOM.direction, atol=1e-6)
