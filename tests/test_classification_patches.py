"""Nodule table and 2.5-D patches (lungseg nodule-patches): centres, orientation, edges, labels, pathology, LIDC XML."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest

from lungseg.casefile import CaseVolume, write_case
from lungseg.classification.labels import (
    LabelProtocol,
    case_pathology,
    diagnosis_column,
    median_rating,
    parse_pathology,
)
from lungseg.classification.nodule_table import COLUMNS, read_nodule_table
from lungseg.classification.patches import AIR_HU, read_patches
from lungseg.cli import main
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

PATCH_MM, SIZE = 40.0, 32
SETTINGS = json.dumps({"patch_mm": PATCH_MM, "patch_size": SIZE})
BACKGROUND, NODULE_HU, MARKER_HU = -800, 60, 400


def _voxel_centres_mm(shape_zyx, spacing, origin, direction) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre, written out as p = origin + D (index * spacing)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    scaled = np.stack([i * spacing[0], j * spacing[1], k * spacing[2]], axis=-1)
    return np.asarray(origin) + scaled @ np.asarray(direction, float).reshape(3, 3).T


def _scene_case(path: Path, shape, spacing, origin, direction, nodules, markers=()) -> Path:
    """A case whose nodules are balls (centre mm, radius mm) labelled in /labels/nodule; markers are bright balls."""
    positions = _voxel_centres_mm(shape, spacing, origin, direction)
    image = np.full(shape, BACKGROUND, np.int16)
    label = np.zeros(shape, np.uint8)
    for centre, radius in nodules:
        inside = np.linalg.norm(positions - centre, axis=-1) <= radius
        image[inside], label[inside] = NODULE_HU, 1
    for centre, radius in markers:
        image[np.linalg.norm(positions - centre, axis=-1) <= radius] = MARKER_HU
    write_case(path, CaseVolume(path.stem, image, Geometry(tuple(spacing), tuple(origin), tuple(direction)),
                                labels={"nodule": label}))
    return path


def _extract(case: Path, tmp_path: Path, *extra: str) -> tuple[list[dict], np.ndarray, dict]:
    patches, table = tmp_path / f"{case.stem}.patches.h5", tmp_path / f"{case.stem}.nodules.tsv"
    assert main(["nodule-patches", str(case), "--out-patches", str(patches), "--out-table", str(table),
                 "--settings", SETTINGS, *extra]) == 0
    return read_nodule_table(table), *read_patches(patches)


IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
FLIPPED = (1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0)  # rows run posterior -> anterior, slices stored head -> feet


def test_centres_diameters_and_the_edge_flag_on_an_anisotropic_grid(tmp_path):
    shape, spacing, origin = (30, 80, 90), (0.7, 0.8, 2.0), (-30.0, -20.0, -50.0)
    inner = (np.array([0.0, 12.0, -20.0]), 6.0)  # index (42.86, 40, 15): well inside
    edge = (np.array([-28.0, 10.0, -20.0]), 4.0)  # 2 mm from the right-most voxel centres (x = -30)
    rows, patches, attrs = _extract(_scene_case(tmp_path / "aniso.h5", shape, spacing, origin, IDENTITY, [inner, edge]),
                                    tmp_path)
    assert attrs["patch_mm"] == PATCH_MM and attrs["patch_size"] == SIZE and attrs["planes"] == "axial,coronal,sagittal"
    assert patches.dtype == np.int16 and patches.shape == (2, 3, SIZE, SIZE) and len(rows) == 2
    by_x = sorted(rows, key=lambda r: r["centre_x_mm"])
    for row, (centre, radius) in zip(by_x, [edge, inner]):
        got = np.array([row["centre_x_mm"], row["centre_y_mm"], row["centre_z_mm"]])
        assert np.abs(got - centre).max() < 0.4 * max(spacing), (got, centre)  # the edge ball is cut: x only roughly
        assert row["diameter_mm"] == pytest.approx(2 * radius, rel=0.15) or row is by_x[0]
        assert row["source"] == "label" and row["readers"] == [] and row["ratings"] == [] and row["label"] == ""
    assert [r["at_edge"] for r in by_x] == [True, False]
    assert by_x[1]["volume_mm3"] == pytest.approx(4 / 3 * math.pi * 6.0 ** 3, rel=0.1)
    inner_patch = patches[[r["nodule"] for r in rows].index(by_x[1]["nodule"])]
    assert (inner_patch[:, SIZE // 2 - 2:SIZE // 2 + 2, SIZE // 2 - 2:SIZE // 2 + 2] > 0).all()  # nodule at the centre
    assert (inner_patch[:, 0, 0] == BACKGROUND).all() and AIR_HU not in inner_patch
    edge_patch = patches[[r["nodule"] for r in rows].index(by_x[0]["nodule"])]
    # axial and coronal columns run right -> left: the columns beyond x = -30.35 mm (the outer voxel face) are air
    pitch = PATCH_MM / SIZE
    col_x = by_x[0]["centre_x_mm"] + (np.arange(SIZE) - (SIZE - 1) / 2) * pitch
    outside = col_x < origin[0] - spacing[0] / 2
    assert outside.any() and (edge_patch[0][:, outside] == AIR_HU).all() and (edge_patch[0][:, ~outside] != AIR_HU).all()
    assert (edge_patch[1][:, outside] == AIR_HU).all()


def test_plane_orientation_and_a_flipped_grid_give_the_same_patches(tmp_path):
    """Rows/columns follow the patient axes (contract), so a flipped copy of the same grid gives identical patches."""
    shape, spacing, origin = (24, 64, 64), (0.75, 0.75, 1.5), (-24.0, -24.0, -18.0)
    centre = np.array([0.0, 0.0, 0.0])
    markers = [(centre + [0, -9, 0], 2.5),  # anterior (-y)
               (centre + [11, 0, 0], 2.5),  # left (+x)
               (centre + [0, 0, 8], 2.5)]  # superior (+z)
    canonical = _scene_case(tmp_path / "canonical.h5", shape, spacing, origin, IDENTITY, [(centre, 4.0)], markers)
    # the same voxel centres stored with y and z reversed: origin at the far end of those axes
    far = (origin[0], origin[1] + (shape[1] - 1) * spacing[1], origin[2] + (shape[0] - 1) * spacing[2])
    flipped = _scene_case(tmp_path / "flipped.h5", shape, spacing, far, FLIPPED, [(centre, 4.0)], markers)
    rows_a, patches_a, _ = _extract(canonical, tmp_path)
    rows_b, patches_b, _ = _extract(flipped, tmp_path)
    assert np.abs(patches_a.astype(int) - patches_b).max() <= 1
    assert [rows_a[0][k] for k in ("centre_x_mm", "centre_y_mm", "centre_z_mm")] == pytest.approx(
        [rows_b[0][k] for k in ("centre_x_mm", "centre_y_mm", "centre_z_mm")], abs=0.01)
    pitch, mid = PATCH_MM / SIZE, (SIZE - 1) / 2
    # where each marker must appear: (plane, row offset mm, column offset mm); and where its mirror image would be
    expected = [(0, -9, 0), (0, 0, 11),  # axial: rows anterior -> posterior, columns right -> left
                (1, 0, 11), (1, -8, 0),  # coronal: rows superior -> inferior, columns right -> left
                (2, -8, 0), (2, 0, -9)]  # sagittal: rows superior -> inferior, columns anterior -> posterior
    for plane, row_mm, col_mm in expected:
        row, col = round(mid + row_mm / pitch), round(mid + col_mm / pitch)
        mirror = round(mid - row_mm / pitch), round(mid - col_mm / pitch)
        assert patches_a[0, plane, row, col] > (MARKER_HU + NODULE_HU) / 2, (plane, row_mm, col_mm)
        assert patches_a[0, plane][mirror] == BACKGROUND, (plane, row_mm, col_mm)


def test_a_case_without_nodules_gives_no_rows(tmp_path):
    image = np.full((8, 32, 32), BACKGROUND, np.int16)
    case = tmp_path / "empty.h5"
    write_case(case, CaseVolume("empty", image, Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)))
    rows, patches, attrs = _extract(case, tmp_path)
    assert rows == [] and patches.shape == (0, 3, SIZE, SIZE) and attrs["patch_size"] == SIZE
    with open(tmp_path / "empty.nodules.tsv") as f:
        assert f.read().rstrip("\n").split("\t") == list(COLUMNS)


def _lidc_case(path: Path, table: list[dict]) -> Path:
    """A case with an LIDC consensus map (nodule n: a cube) and its JSON table, as ingest writes them."""
    image = np.full((12, 40, 40), BACKGROUND, np.int16)
    nodules = np.zeros(image.shape, np.uint8)
    for row in table:
        n = row["nodule"]
        if row["consensus_voxels"]:
            nodules[4:8, 8 * n:8 * n + 4, 10:14] = n
    write_case(path, CaseVolume("lidc", image, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY),
                                annotations={"lidc_nodules": nodules}, annotation_attrs={"lidc_nodules": json.dumps(table)}))
    return path


def test_lidc_ratings_missing_and_partial(tmp_path, capsys):
    table = [
        {"nodule": 1, "readers": [1, 2, 3], "malignancy": [3, None, 4], "consensus_voxels": 64, "slices": [4, 7]},
        {"nodule": 2, "readers": [2, 4], "malignancy": [None, None], "consensus_voxels": 64},
        {"nodule": 3, "readers": [1, 2, 3, 4], "malignancy": [5, 4, 4, 5], "consensus_voxels": 64},
        {"nodule": 4, "readers": [1], "malignancy": [2], "consensus_voxels": 0},  # no consensus voxel: left out
    ]
    rows, patches, _ = _extract(_lidc_case(tmp_path / "lidc.h5", table), tmp_path, "--patient", "p1",
                                "--pathology", "malignant")
    assert "LIDC nodule 4 has no consensus voxel" in capsys.readouterr().err
    assert [r["nodule"] for r in rows] == [1, 2, 3] and len(patches) == 3
    assert [r["ratings"] for r in rows] == [[3, None, 4], [], [5, 4, 4, 5]]
    assert [r["median_rating"] for r in rows] == [3.5, None, 4.5]
    assert [r["label"] for r in rows] == ["indeterminate", "", "malignant"]
    assert [r["readers"] for r in rows] == [[1, 2, 3], [2, 4], [1, 2, 3, 4]]
    assert {r["source"] for r in rows} == {"lidc"} and {r["patient"] for r in rows} == {"p1"}
    assert {r["pathology"] for r in rows} == {"malignant"} and rows[0]["volume_mm3"] == 64.0
    with open(tmp_path / "lidc.nodules.tsv") as f:
        assert [r["ratings"] for r in csv.DictReader(f, delimiter="\t")] == ["3,,4", "", "5,4,4,5"]
    # the aggregate table: both cases' rows in order
    out = tmp_path / "all.tsv"
    assert main(["nodule-table", str(out), str(tmp_path / "lidc.nodules.tsv"), str(tmp_path / "lidc.nodules.tsv")]) == 0
    assert len(read_nodule_table(out)) == 6


def test_label_protocol():
    default = LabelProtocol()
    assert [default.label(m) for m in (1, 2, 2.5, 3, 3.5, 4, 5, None)] == [
        "benign", "benign", "indeterminate", "indeterminate", "indeterminate", "malignant", "malignant", ""]
    assert default.classes() == ("benign", "malignant")
    wide = LabelProtocol(benign_max=3, malignant_min=3.5, indeterminate="class")
    assert [wide.label(m) for m in (3, 3.25, 3.5)] == ["benign", "indeterminate", "malignant"]
    assert wide.classes() == ("benign", "indeterminate", "malignant")
    assert median_rating([4, None, 5]) == 4.5 and median_rating([None]) is None and median_rating([]) is None
    with pytest.raises(ValueError, match="benign_max < malignant_min"):
        LabelProtocol(benign_max=4, malignant_min=4)
    with pytest.raises(ValueError, match="indeterminate"):
        LabelProtocol(indeterminate="drop")


def test_settings_change_the_labels(tmp_path):
    table = [{"nodule": 1, "readers": [1, 2, 3], "malignancy": [3, 3, 3], "consensus_voxels": 64}]
    case = _lidc_case(tmp_path / "lidc.h5", table)
    rows, _, _ = _extract(case, tmp_path)
    assert rows[0]["label"] == "indeterminate"
    out = tmp_path / "t.tsv"
    assert main(["nodule-patches", str(case), "--out-patches", str(tmp_path / "p.h5"), "--out-table", str(out),
                 "--settings", json.dumps({"benign_max": 3})]) == 0
    assert read_nodule_table(out)[0]["label"] == "benign"
    with pytest.raises(SystemExit, match="unknown key"):
        main(["nodule-patches", str(case), "--out-patches", str(tmp_path / "p.h5"), "--out-table", str(out),
              "--settings", json.dumps({"patch_nm": 3})])


def test_pathology_values_and_sources(tmp_path, capsys):
    assert [parse_pathology(v, source="s", column="c") for v in ("benign", " Malignant ", "", "0", "1", "2", "3", "2.0")] == [
        "benign", "malignant", "", "", "benign", "malignant", "malignant", "malignant"]
    with pytest.raises(IngestError, match=r"sheet.tsv: column 'pathology' holds the pathology value 'probably'.*Fix: use benign"):
        parse_pathology("probably", source="sheet.tsv", column="pathology")
    tcia = "Diagnosis at the Patient Level 0=Unknown 1=benign or non-malignant disease 2= malignant, primary lung cancer"
    assert diagnosis_column(["patient_id", "Diagnosis Method", tcia]) == tcia
    assert diagnosis_column(["patient_id", "pathology"]) == "pathology" and diagnosis_column(["patient_id"]) is None
    diagnosis = {"p1": {"patient_id": "p1", tcia: "3"}, "p2": {"patient_id": "p2", tcia: "1"},
                 "p3": {"patient_id": "p3", tcia: "7"}}
    assert case_pathology({"patient_id": "p1", "pathology": ""}, diagnosis) == "malignant"
    assert case_pathology({"patient_id": "p2", "pathology": "malignant"}, diagnosis) == "malignant"  # the sheet first
    assert case_pathology({"patient_id": "p2"}, diagnosis) == "benign"
    assert case_pathology({"patient_id": "p9"}, diagnosis) == "" and case_pathology({"patient_id": "p1"}) == ""
    with pytest.raises(IngestError, match="diagnosis.tsv: column 'Diagnosis at the Patient Level.*value '7'"):
        case_pathology({"patient_id": "p3"}, diagnosis, diagnosis_path="diagnosis.tsv")
    with pytest.raises(IngestError, match="cases.tsv: column 'dx'"):
        case_pathology({"patient_id": "p1", "dx": "yes"}, diagnosis, column="dx", sheet="cases.tsv")
    # the CLI: one line naming the source, the value and the fix
    case = _lidc_case(tmp_path / "lidc.h5", [])
    assert main(["nodule-patches", str(case), "--out-patches", str(tmp_path / "p.h5"), "--out-table",
                 str(tmp_path / "t.tsv"), "--pathology", "maybe", "--pathology-source", "cases.tsv"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cases.tsv" in err and "'maybe'" in err and "Fix:" in err


def test_lidc_xml_ratings_round_trip_and_demo_pathology(tmp_path):
    """The LIDC-style demo writes reader XML and a TCIA diagnosis CSV; ingest and nodule-patches read the same ratings."""
    from lungseg.demo.lidc_archive import DIAGNOSIS_COLUMNS, DIAGNOSIS_FILE, write_lidc_archive
    from lungseg.demo.phantom import NoduleSettings
    from lungseg.ingest.diagnosis import pseudonymise_diagnosis
    from lungseg.ingest.pseudonym import patient_pseudonym
    from lungseg.ingest.scan import IngestOptions, ingest_scan

    archive = tmp_path / "archive"
    settings = NoduleSettings(per_case=(2, 3), diameter_mm=(5.0, 22.0), kinds=("solid", "part_solid"))
    cases = write_lidc_archive(archive, 0, 5, 32, 128, case_ids=["demo001", "demo002", "demo005"],
                               nodule_settings=settings)
    rated = 0
    for case in cases:
        volume = ingest_scan(case.case_id, case.paths.series_dir, options=IngestOptions(lidc_xml=case.paths.xml))
        write_case(tmp_path / f"{case.case_id}.h5", volume)
        rows, patches, _ = _extract(tmp_path / f"{case.case_id}.h5", tmp_path)
        reads = [r for r in case.reads if r.characteristics is not None]
        assert len(rows) == len(reads) == len(patches) and {r["source"] for r in rows} <= {"lidc"}
        expected = sorted((r.readers, [x["malignancy"] for x in r.ratings]) for r in reads)
        assert sorted((r["readers"], r["ratings"]) for r in rows) == expected
        # the XML itself holds those ratings
        in_xml = sorted(int(e.text) for e in ET.parse(case.paths.xml).getroot().iter() if e.tag.endswith("malignancy"))
        assert sorted(x for _, ratings in expected for x in ratings) == in_xml
        rated += len(rows)
    assert rated >= 4
    # the diagnosis CSV: TCIA header found after discovery's re-keying, codes mapped to pathology
    secret = "s" * 32
    table = pseudonymise_diagnosis(archive / DIAGNOSIS_FILE, secret, [c.scan.identity.patient_id for c in cases])
    column = diagnosis_column(table.columns)
    assert column is not None and column.startswith("Diagnosis at the Patient Level")
    by_patient = {r["patient_id"]: r for r in table.rows}
    with open(archive / DIAGNOSIS_FILE, newline="") as f:
        codes = {r[DIAGNOSIS_COLUMNS[0]]: r[DIAGNOSIS_COLUMNS[1]] for r in csv.DictReader(f)}
    for case in cases:
        patient = patient_pseudonym(secret, case.scan.identity.patient_id)
        got = case_pathology({"patient_id": patient}, by_patient)
        code = codes.get(case.scan.identity.patient_id)
        assert got == {None: "", "0": "", "1": "benign", "2": "malignant", "3": "malignant"}[code]


def test_patch_file_refuses_other_files(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["patches"] = np.zeros((0, 3, 2, 2), np.int16)
    with pytest.raises(ValueError, match="not a lungseg nodule-patches file"):
        read_patches(tmp_path / "x.h5")


# --- real LIDC-IDRI slices and reader XML (../shared/data) --------------------------------------------------

LIDC = {"LIDC-IDRI-0001": "69.xml", "LIDC-IDRI-0003": "72.xml"}


@pytest.mark.realdata
@pytest.mark.parametrize("patient", sorted(LIDC))
def test_real_lidc_patches_and_ratings(shared_data, patient, tmp_path):
    """The one nodule wholly inside the slices: a row with the four readers' ratings from the XML, a patch on it."""
    from lungseg.ingest.lidc import parse_lidc_xml
    from lungseg.ingest.scan import IngestOptions, ingest_scan

    folder = shared_data / "lidc-idri" / patient
    volume = ingest_scan(patient, folder, options=IngestOptions(lidc_xml=folder / LIDC[patient]))
    write_case(tmp_path / "case.h5", volume)
    rows, patches, _ = _extract(tmp_path / "case.h5", tmp_path)
    assert rows and len(patches) == len(rows)
    z_range = volume.geometry.origin[2], volume.geometry.index_to_physical(np.array([0, 0, volume.image.shape[0] - 1]))[2]
    lo, hi = min(z_range), max(z_range)
    # each reader's malignancy of its outlined nodule on these slices, read from the XML
    expected = []
    for reader, marks in enumerate(parse_lidc_xml(folder / LIDC[patient]), start=1):
        for mark in marks:
            if mark.kind == "nodule" and any(lo - 0.1 <= roi.z <= hi + 0.1 for roi in mark.rois):
                expected.append((reader, mark.malignancy))
    got = [(reader, rating) for row in rows for reader, rating in zip(row["readers"], row["ratings"])]
    assert sorted(got) == sorted(expected) and len({r for r, _ in got}) == 4
    for row, patch in zip(rows, patches):
        assert lo - 1 <= row["centre_z_mm"] <= hi + 1 and row["diameter_mm"] > 3
        assert row["label"] in ("benign", "indeterminate", "malignant") and row["source"] == "lidc"
        assert patch[0, SIZE // 2 - 1:SIZE // 2 + 1, SIZE // 2 - 1:SIZE // 2 + 1].mean() > -500  # solid tissue at the centre
        # the slab is 25-37.5 mm thick, the patch 40 mm: the coronal and sagittal planes leave it
        assert row["at_edge"] and (patch[1] == AIR_HU).any()


def test_workflow_config_checks_the_label_protocol():
    import yaml

    from lungseg.workflow_config import ConfigError, check_config

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    check_config(config, repo / "workflow/schemas/config.schema.yaml")
    assert config["classification"] == {"enabled": False, "patch_mm": 50.0, "patch_size": 64, "benign_max": 2,
                                        "malignant_min": 4, "indeterminate": "exclude", "pathology_column": None,
                                        "train": {}, "threshold": 0.5, "bootstrap_samples": 2000}
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    config["classification"] = {"benign_max": 4, "malignant_min": 3}
    with pytest.raises(ConfigError, match="classification.benign_max = 4 is not below classification.malignant_min = 3"):
        check_config(config, repo / "workflow/schemas/config.schema.yaml")
