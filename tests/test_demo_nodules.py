"""Nodule variety of the demo phantom (issue 13): kinds, positions, sizes, partial volume, sidecar, CLI options,
and the default cohort unchanged bit for bit."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from lungseg.demo import phantom as phantom_module
from lungseg.demo.cohort import demo_case_ids, generate_demo_scan, write_demo_case
from lungseg.demo.phantom import NODULE_KINDS, NODULE_POSITIONS, NoduleSettings
from lungseg.demo.shapes import Grid

RICH = NoduleSettings(per_case=(3, 5), diameter_mm=(3.0, 30.0), kinds=NODULE_KINDS, positions=NODULE_POSITIONS,
                      edges="partial_volume")
SIZE = {"n_slices": 48, "size": 128}

# sha256 of the default output, taken before nodule kinds/positions existed: (case, seed, slices, size) -> digest
DEFAULT_DIGESTS = {
    ("case000", 2026, 48, 128): "31e8e27be54a9b47ca84dffcc0a9ec976fe20a0a8ce1a0c77def176b9a739dd6",
    ("demo001", 7, 32, 128): "9f3b918c437a7424374d536f6a001b4100be17ac8c2b46addee53c835aca62a4",
}


def scan_digest(scan) -> str:
    """HU, labels, nodules (centre, diameter, side), grid, storage and the rng that goes on into UIDs."""
    h = hashlib.sha256()
    p = scan.phantom
    for a in (p.hu, p.lung, p.nodule):
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr([(tuple(n.center_zyx), n.diameter_mm, n.side) for n in p.nodules]).encode())
    h.update(repr(scan.geometry).encode())
    h.update(scan.storage.encode())
    h.update(str(scan.descending_instances).encode())
    h.update(scan.rng.integers(0, 2**63, size=4).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", sorted(DEFAULT_DIGESTS))
def test_default_cohort_is_unchanged(key):
    case_id, seed, n_slices, size = key
    assert scan_digest(generate_demo_scan(case_id, seed, n_slices, size)) == DEFAULT_DIGESTS[key]
    explicit = generate_demo_scan(case_id, seed, n_slices, size, nodule_settings=NoduleSettings())
    assert scan_digest(explicit) == DEFAULT_DIGESTS[key]
    assert all(n.kind == "solid" and n.position in ("isolated", "juxta_pleural") for n in explicit.phantom.nodules)


def test_default_cohort_keeps_its_juxta_pleural_flag():
    nodules = generate_demo_scan("case000", 2026, 48, 128).phantom.nodules
    assert [(n.position, n.juxta_pleural) for n in nodules] == [("isolated", False), ("juxta_pleural", True)]


@pytest.fixture(scope="module")
def rich():
    """Eight 48 x 128 x 128 cases with every kind and position, and each case's visible-vessel mask."""
    vessels = []
    original = phantom_module._paint_nodules

    def spy(hu, grid, rng, lung, cavity, count, settings=None):
        vessel = (hu == np.float32(phantom_module.BLOOD)) & (lung > 0)
        vessels.append(ndimage.binary_opening(vessel, structure=ndimage.generate_binary_structure(3, 1)[1:2]))
        return original(hu, grid, rng, lung, cavity, count, settings)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phantom_module, "_paint_nodules", spy)
        scans = [generate_demo_scan(cid, 2026, nodule_settings=RICH, **SIZE) for cid in demo_case_ids(8)]
    return list(zip(scans, vessels, strict=True))


def blobs(scan):
    """(nodule, its connected component of the label) per nodule."""
    components, n = ndimage.label(scan.phantom.nodule)
    assert n == len(scan.phantom.nodules)  # distinct: one component each, none touching
    return [(nod, components == components[tuple(int(round(v)) for v in nod.center_zyx)])
            for nod in scan.phantom.nodules]


def test_every_kind_and_position_appears(rich):
    nodules = [n for scan, _ in rich for n in scan.phantom.nodules]
    assert set(Counter(n.kind for n in nodules)) == set(NODULE_KINDS)
    assert set(Counter(n.position for n in nodules)) == set(NODULE_POSITIONS)
    requested = sum(scan.phantom.nodules_requested for scan, _ in rich)
    assert len(nodules) >= 0.9 * requested and all(3 <= scan.phantom.nodules_requested <= 5 for scan, _ in rich)


def test_nodules_inside_the_lung_and_where_they_say(rich):
    for scan, visible_vessel in rich:
        p = scan.phantom
        assert not (p.nodule.astype(bool) & (p.lung == 0)).any()
        for nod, blob in blobs(scan):
            centre = tuple(int(round(v)) for v in nod.center_zyx)
            assert p.nodule[centre] == 1 and p.lung[centre] == nod.side
            ring = ndimage.binary_dilation(blob) & ~blob
            if nod.position == "juxta_pleural":
                assert (p.lung[ring] == 0).any()  # reaches the edge of the lung
            else:
                assert not (p.lung[ring] == 0).any()
            if nod.position == "juxta_vascular":
                assert (visible_vessel & (ring | blob)).any()  # abuts a vessel of the tree
            if nod.position == "isolated":
                assert not (visible_vessel & (ring | blob)).any()


def test_diameters_within_the_range(rich):
    for scan, _ in rich:
        sx, sy, sz = scan.geometry.spacing
        for nod, blob in blobs(scan):
            assert 3.0 <= nod.diameter_mm <= 30.0
            if nod.position != "juxta_pleural" and nod.diameter_mm >= 8:  # whole, and several voxels across
                equivalent = (6 * blob.sum() * sx * sy * sz / np.pi) ** (1 / 3)
                assert 0.75 * nod.diameter_mm <= equivalent <= 1.25 * nod.diameter_mm, (nod, equivalent)


def test_hu_by_kind(rich):
    seen = Counter()
    for scan, _ in rich:
        for nod, blob in blobs(scan):
            if nod.diameter_mm < 12 or nod.position == "juxta_pleural":
                continue
            hu = scan.phantom.hu[blob]
            if nod.kind == "solid":  # coarse voxels: many of the label's voxels are partial
                assert np.percentile(hu, 90) > -100
            elif nod.kind == "ground_glass":
                assert -800 <= np.median(hu) <= -400
                if nod.position == "isolated":  # no vessel through it either
                    assert np.percentile(hu, 98) < -300
            else:  # ground glass with a solid core
                assert -800 <= np.median(hu) <= -300
                assert np.percentile(hu, 98) > -150
            seen[nod.kind] += 1
    assert set(seen) == set(NODULE_KINDS)


def test_ground_glass_is_textured_not_flat():
    grid = Grid((24, 48, 48), (1.0, 1.0, 1.0))
    hu = np.full(grid.shape, -860.0, dtype=np.float32)
    lung = np.ones(grid.shape, dtype=np.uint8)
    nodule = np.zeros(grid.shape, dtype=np.uint8)
    painted = phantom_module._paint_one(hu, nodule, grid, np.random.default_rng(0), lung,
                                        np.array([0.0, 0.0, 12.0]), 8.0, "ground_glass", "partial_volume")
    assert painted
    core = ndimage.binary_erosion(nodule > 0, iterations=3)
    assert core.sum() > 100
    assert -760 <= hu[core].mean() <= -440
    assert hu[core].std() > 8  # a texture, not a plateau (no scanner noise added here)
    edge = (nodule > 0) & ~ndimage.binary_erosion(nodule > 0)
    assert hu[edge].mean() > -860 and hu[edge].mean() < hu[core].mean()  # fainter edges


def test_label_is_the_half_covered_contour():
    """Partial volume: voxels just inside the label are above the half-way HU, those just outside below it."""
    rng = np.random.default_rng(4)
    settings = NoduleSettings(per_case=(3, 3), diameter_mm=(14.0, 20.0), kinds=("solid",),
                              positions=("isolated",), edges="partial_volume")
    p = phantom_module.make_phantom(rng, 40, 160, (1.5, 1.5, 2.5), nodule_settings=settings)
    assert len(p.nodules) >= 2
    body = p.nodule > 0
    inner = body & ~ndimage.binary_erosion(body)
    outer = ndimage.binary_dilation(body) & ~body & (p.lung > 0)
    lung_hu = np.median(p.hu[(p.lung > 0) & ~ndimage.binary_dilation(body, iterations=4)])
    halfway = (lung_hu + 40.0) / 2
    assert np.median(p.hu[inner]) > halfway > np.median(p.hu[outer])
    assert np.median(p.hu[outer]) > lung_hu + 50  # a partial-volume rim, not a step


def test_sidecar(tmp_path):
    case = write_demo_case("demo003", tmp_path, 2026, nodule_settings=RICH, n_slices=24, size=96)
    assert case.nodules_path == tmp_path / "demo003" / "labels" / "nodules.json"
    records = json.loads(case.nodules_path.read_text())
    assert records == [n.as_dict() for n in case.nodules] and records
    for record in records:
        assert list(record) == ["center_zyx", "diameter_mm", "kind", "position", "side"]
        assert len(record["center_zyx"]) == 3 and record["side"] in (1, 2)
        assert record["kind"] in NODULE_KINDS and record["position"] in NODULE_POSITIONS
    default = write_demo_case("demo001", tmp_path, 2026, n_slices=12, size=64)
    assert json.loads(default.nodules_path.read_text()) == [n.as_dict() for n in default.nodules]


def test_settings_validate_and_ignore_order():
    assert NoduleSettings(kinds=("ground_glass", "solid")).kinds == ("solid", "ground_glass")
    for bad in ({"per_case": (4, 2)}, {"per_case": (-1, 2)}, {"diameter_mm": (30.0, 3.0)}, {"kinds": ("glass",)},
                {"kinds": ()}, {"positions": ("hilar",)}, {"edges": "soft"}):
        with pytest.raises(ValueError):
            NoduleSettings(**bad)


def test_cli_options(tmp_path, capsys):
    from lungseg.cli import main

    assert main(["demo-cohort", "--out", str(tmp_path), "--case", "demo003", "--slices", "16", "--size", "64",
                 "--nodules-per-case", "4", "4", "--nodule-diameter-mm", "6", "12",
                 "--nodule-kinds", "ground_glass,part_solid", "--nodule-positions", "isolated", "juxta_vascular",
                 "--nodule-edges", "partial_volume"]) == 0
    records = json.loads((tmp_path / "demo003" / "labels" / "nodules.json").read_text())
    assert records and all(r["kind"] in ("ground_glass", "part_solid") for r in records)
    assert all(r["position"] in ("isolated", "juxta_vascular") and 6 <= r["diameter_mm"] <= 12 for r in records)
    capsys.readouterr()
    for args, option in ((["--nodules-per-case", "5", "2"], "--nodules-per-case"),
                         (["--nodule-diameter-mm", "30", "3"], "--nodule-diameter-mm"),
                         (["--nodule-kinds", "solid,glass"], "--nodule-kinds"),
                         (["--nodule-positions", "hilar"], "--nodule-positions"),
                         (["--nodule-edges", "soft"], "--nodule-edges")):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo-cohort", "--out", str(tmp_path / "bad"), "--case", "demo001", *args])
        message = str(exit_info.value.code)
        assert message.startswith(f"lungseg demo-cohort: {option}: ") and "\n" not in message, message
    assert not (tmp_path / "bad").exists()
