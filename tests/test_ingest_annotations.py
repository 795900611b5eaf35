"""LIDC-IDRI XML rasterisation (inclusion semantics, consensus, points, matching) and LUNA16 spheres."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lungseg.casefile import read_case
from lungseg.cli import main
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.lidc import SliceMap, rasterise_lidc
from lungseg.ingest.luna16 import luna16_labels

GEOM = Geometry((0.7, 0.7, 2.5), (-20.0, -30.0, -100.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SHAPE = (6, 40, 40)
UIDS = [f"9.9.{k}" for k in range(SHAPE[0])]
SLICES = SliceMap({uid: k for k, uid in enumerate(UIDS)}, -100.0 + 2.5 * np.arange(SHAPE[0]), 2.5)


def outline(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """A closed, 8-connected rectangle outline (x = column, y = row) as LIDC readers draw it."""
    return (
        [(x, y0) for x in range(x0, x1 + 1)]
        + [(x1, y) for y in range(y0 + 1, y1 + 1)]
        + [(x, y1) for x in range(x1 - 1, x0 - 1, -1)]
        + [(x0, y) for y in range(y1 - 1, y0, -1)]
    )


def roi(k: int, points, *, inclusion: bool = True, uid: str | None = None, z: float | None = None) -> str:
    z = -100.0 + 2.5 * k if z is None else z
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{UIDS[k] if uid is None else uid}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>"
        + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
        + "</roi>"
    )


def nodule(rois: str, malignancy: int | None = 3) -> str:
    chars = f"<characteristics><malignancy>{malignancy}</malignancy></characteristics>" if malignancy else ""
    return f"<unblindedReadNodule><noduleID>n</noduleID>{chars}{rois}</unblindedReadNodule>"


def write_xml(path, readers: list[str]):
    sessions = "".join(
        f"<readingSession><servicingRadiologistID>{i}</servicingRadiologistID>{r}</readingSession>"
        for i, r in enumerate(readers)
    )
    path.write_text(f'<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov">{sessions}</LidcReadMessage>')
    return path


def test_outline_pixels_are_excluded_and_holes_cut(tmp_path):
    xml = write_xml(
        tmp_path / "r.xml", [nodule(roi(2, outline(10, 10, 20, 20)) + roi(2, outline(13, 13, 16, 16), inclusion=False))]
    )
    result = rasterise_lidc(xml, GEOM, SHAPE, SLICES)
    mask = result.consensus[2].astype(bool)
    expected = np.zeros((40, 40), bool)
    expected[11:20, 11:20] = True  # inside the outline, outline excluded
    expected[13:17, 13:17] = False  # the exclusion ROI and its outline
    np.testing.assert_array_equal(mask, expected)
    assert result.consensus.sum() == mask.sum()  # nothing on other slices
    assert result.readers[2, 15, 11] == 1 and result.readers[2, 15, 15] == 0


def test_consensus_follows_the_agreement_level_and_keeps_malignancy(tmp_path):
    # four readers outline the same nodule with growing squares on slices 1-3
    readers = [
        nodule("".join(roi(k, outline(10, 10, 14 + 2 * r, 14 + 2 * r)) for k in (1, 2, 3)), malignancy=r + 2)
        for r in range(4)
    ]
    xml = write_xml(tmp_path / "r.xml", readers)
    half = rasterise_lidc(xml, GEOM, SHAPE, SLICES, agreement=0.5)
    assert len(half.nodule_table) == 1
    info = half.nodule_table[0]
    assert info["readers"] == [1, 2, 3, 4] and info["malignancy"] == [2, 3, 4, 5] and info["malignancy_median"] == 3.5
    # interiors 3x3, 5x5, 7x7, 9x9: >= 2 of 4 readers is the 7x7 one
    assert half.consensus[2].sum() == 7 * 7 and half.consensus[[0, 4, 5]].sum() == 0
    everyone = rasterise_lidc(xml, GEOM, SHAPE, SLICES, agreement=1.0)
    anyone = rasterise_lidc(xml, GEOM, SHAPE, SLICES, agreement=0.25)
    assert everyone.consensus[2].sum() == 3 * 3 and anyone.consensus[2].sum() == 9 * 9
    bits = half.readers[2]
    assert bits[11, 11] == 0b1111 and bits[19, 19] == 0b1000 and bits[20, 20] == 0  # per-reader masks as bits


def test_separate_nodules_and_small_marks(tmp_path):
    reader1 = (
        nodule(roi(1, outline(5, 5, 10, 10)))
        + nodule(roi(4, outline(25, 25, 32, 32)), malignancy=5)
        + nodule(roi(3, [(30, 8)]), malignancy=None)
    )
    reader2 = nodule(roi(4, outline(26, 26, 33, 33)), malignancy=4) + (
        "<nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>-95.0</imageZposition><imageSOP_UID>9.9.2"
        "</imageSOP_UID><locus><xCoord>3</xCoord><yCoord>4</yCoord></locus></nonNodule>"
    )
    result = rasterise_lidc(write_xml(tmp_path / "r.xml", [reader1, reader2]), GEOM, SHAPE, SLICES)
    table = {tuple(n["readers"]): n for n in result.nodule_table}
    assert set(table) == {(1,), (1, 2)}  # the overlapping outlines of both readers are one nodule
    assert table[(1, 2)]["malignancy"] == [5, 4]
    assert set(np.unique(result.nodules)) == {0, 1, 2}  # numbered by z
    points = {(p["kind"], p["slice"], p["row"], p["col"]) for p in result.points}
    assert points == {("small", 3, 8, 30), ("non-nodule", 2, 4, 3)}
    assert result.consensus[3, 8, 30] == 0  # a < 3 mm mark is a point, not a mask
    small = next(p for p in result.points if p["kind"] == "small")
    np.testing.assert_allclose(small["position_mm"], [-20 + 30 * 0.7, -30 + 8 * 0.7, -92.5])


def test_z_position_fallback_and_slices_outside(tmp_path):
    # UIDs of another export (re-anonymised): matched by imageZposition; a ROI far outside is dropped
    rois = (
        roi(2, outline(10, 10, 20, 20), uid="1.1.1")
        + roi(3, outline(10, 10, 20, 20), uid="1.1.2", z=-92.45)
        + roi(0, outline(10, 10, 20, 20), uid="1.1.3", z=-300.0)
    )
    result = rasterise_lidc(write_xml(tmp_path / "r.xml", [nodule(rois)]), GEOM, SHAPE, SLICES)
    assert [int(result.consensus[k].sum()) for k in range(6)] == [0, 0, 81, 81, 0, 0]
    assert result.nodule_table[0]["outlines_complete"] is False


def test_not_an_lidc_file(tmp_path):
    (tmp_path / "x.xml").write_text("<other><thing/></other>")
    with pytest.raises(IngestError, match="not an LIDC-IDRI read message"):
        rasterise_lidc(tmp_path / "x.xml", GEOM, SHAPE, SLICES)


def test_xml_without_marks_is_a_negative_case(tmp_path):
    result = rasterise_lidc(write_xml(tmp_path / "r.xml", ["", ""]), GEOM, SHAPE, SLICES)
    assert not result.consensus.any() and result.nodule_table == []


LUNA_GEOM = Geometry((0.8, 0.8, 1.25), (-40.0, -40.0, -60.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
LUNA_SHAPE = (48, 100, 100)


def test_luna16_spheres(tmp_path):
    csv = tmp_path / "annotations.csv"
    csv.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.1,0.0,0.0,-30.0,8.0\n"
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.2,5.0,5.0,-30.0,20.0\n"
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.1,-20.0,10.0,-15.0,4.5\n"
    )
    labels, table, notes = luna16_labels(csv, "1.3.6.1.4.1.14519.5.2.1.6279.6001.1", LUNA_GEOM, LUNA_SHAPE)
    assert [n["nodule"] for n in table] == [1, 2] and not notes
    volume = np.prod(LUNA_GEOM.spacing)
    for number, diameter in ((1, 8.0), (2, 4.5)):
        expected = 4 / 3 * np.pi * (diameter / 2) ** 3 / volume
        assert abs((labels == number).sum() - expected) / expected < 0.1
    # centre voxel of nodule 1: x = (0 + 40) / 0.8 = 50, y = 50, z = (-30 + 60) / 1.25 = 24
    assert labels[24, 50, 50] == 1 and labels[24, 50, 50 + 6] == 0
    empty, _, notes = luna16_labels(csv, "9.9.9", LUNA_GEOM, LUNA_SHAPE)
    assert not empty.any() and "negative case" in notes[0]


def test_luna16_errors(tmp_path):
    bad = tmp_path / "a.csv"
    bad.write_text("seriesuid,x,y,z,d\n1,0,0,0,1\n")
    with pytest.raises(IngestError, match="lacks column"):
        luna16_labels(bad, "1", LUNA_GEOM, LUNA_SHAPE)
    outside = tmp_path / "b.csv"
    outside.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1,500,0,0,6\n")
    with pytest.raises(IngestError, match="outside this scan"):
        luna16_labels(outside, "1", LUNA_GEOM, LUNA_SHAPE)


def test_luna16_on_an_mhd_volume_through_the_cli(tmp_path):
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    image = LUNA_GEOM.to_sitk(np.full(LUNA_SHAPE, -800, dtype=np.int16))
    sitk.WriteImage(image, str(tmp_path / f"{uid}.mhd"))  # .mhd + .raw, named by series UID as in LUNA16
    (tmp_path / "annotations.csv").write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},0,0,-30,10\n")
    out = tmp_path / "case.h5"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / f"{uid}.mhd"),
                "--case-id",
                "luna1",
                "--luna16",
                str(tmp_path / "annotations.csv"),
                "-o",
                str(out),
                "--status",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    case = read_case(out)
    assert case.labels["nodule"][24, 50, 50] == 1 and case.annotations["luna16_nodules"].max() == 1
    assert json.loads(case.annotation_attrs["luna16_nodules"])[0]["diameter_mm"] == 10.0
    assert uid.encode() not in out.read_bytes() and uid not in (tmp_path / "s.json").read_text()
