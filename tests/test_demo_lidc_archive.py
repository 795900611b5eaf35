"""The LIDC-style demo archive: TCIA folder tree, reader XML, round trip through lungseg's LIDC reader."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from lungseg.casefile import read_case
from lungseg.cli import main
from lungseg.demo.cohort import write_demo_case
from lungseg.demo.lidc_archive import (
    DIAGNOSIS_COLUMNS,
    DIAGNOSIS_FILE,
    LidcArchiveCase,
    lidc_archive_paths,
    patient_diagnosis,
    write_lidc_archive,
    write_lidc_archive_case,
)
from lungseg.demo.lidc_readers import outline_chains, split_nodules
from lungseg.demo.lidc_xml import LIDC_NAMESPACE
from lungseg.demo.phantom import NoduleSettings
from lungseg.ingest.discover import discover
from lungseg.ingest.lidc import Roi, _roi_mask
from lungseg.ingest.pseudonym import DEMO_SECRET
from lungseg.ingest.scan import IngestOptions, ingest_scan

SEED = 11
SLICES, SIZE = 40, 192
# all kinds, some nodules < 3 mm (single points), several nodules per case
SETTINGS = NoduleSettings(per_case=(2, 4), diameter_mm=(2.0, 25.0), kinds=("solid", "part_solid", "ground_glass"))
CASES = [f"demo{i:03d}" for i in range(1, 7)]
NS = {"l": LIDC_NAMESPACE}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path, list[LidcArchiveCase]]:
    root = tmp_path_factory.mktemp("lidc")
    archive, truth = root / "archive", root / "truth"
    cases = write_lidc_archive(archive, len(CASES), SEED, SLICES, SIZE, nodule_settings=SETTINGS, truth_root=truth)
    return archive, truth, cases


@pytest.fixture(scope="module")
def ingested(cohort):
    """Each case ingested with its reader XML, the demo's own nodule label on the same grid as ``truth``."""
    _, truth, cases = cohort
    return [
        ingest_scan(c.case_id, c.paths.series_dir, {"truth": truth / c.case_id / "labels" / "nodule.nii.gz"},
                    options=IngestOptions(lidc_xml=c.paths.xml))
        for c in cases
    ]


def test_tree_is_tcia_shaped(cohort):
    archive, _, cases = cohort
    assert sorted(p.name for p in archive.iterdir()) == [f"LIDC-DEMO-{c}" for c in CASES] + [DIAGNOSIS_FILE]
    for case in cases:
        paths = lidc_archive_paths(archive, case.case_id, SEED, SLICES)
        assert paths == case.paths
        study = paths.series_dir.parent
        assert [p for p in paths.patient_dir.rglob("*") if p.is_dir()] == [study, paths.series_dir]
        assert study.name.startswith("01-01-2000-NA-") and " " in study.name and "'" in study.name
        number, description, digits = paths.series_dir.name.split("-")
        assert number.endswith(".000000") and " " in description and "[" in description and len(digits) == 5
        names = sorted(p.name for p in paths.series_dir.iterdir())
        assert names == sorted([*(f"1-{i:03d}.dcm" for i in range(1, SLICES + 1)), paths.xml.name])
        # the fake identity stays inside the DICOM, never in a name
        ds = pydicom.dcmread(paths.series_dir / "1-001.dcm", stop_before_pixels=True)
        assert ds.PatientID == case.scan.identity.patient_id
        assert not any(v in str(p) for v in case.scan.identity.values() for p in paths.patient_dir.rglob("*"))


def test_series_is_the_demo_case(cohort, tmp_path):
    """The archive's CT is the default layout's case: same slices, UIDs and identity, other file names."""
    _, _, cases = cohort
    case = cases[0]
    plain = write_demo_case(case.case_id, tmp_path, SEED, SLICES, SIZE, nodule_settings=SETTINGS)
    z = lambda ds: float(ds.ImagePositionPatient[2])  # noqa: E731
    ours = sorted((pydicom.dcmread(p) for p in case.paths.series_dir.glob("*.dcm")), key=z)
    theirs = sorted((pydicom.dcmread(p) for p in plain.dicom_dir.glob("*.dcm")), key=z)
    assert [d.SOPInstanceUID for d in ours] == [d.SOPInstanceUID for d in theirs]
    assert all(a.PixelData == b.PixelData and a.InstanceNumber == b.InstanceNumber for a, b in zip(ours, theirs))
    assert all(f"1-{d.InstanceNumber:03d}.dcm" == Path(d.filename).name for d in ours)


def test_xml_has_the_lidc_structure(cohort):
    _, _, cases = cohort
    for case in cases:
        root = ET.parse(case.paths.xml).getroot()
        assert root.tag == f"{{{LIDC_NAMESPACE}}}LidcReadMessage"
        series = pydicom.dcmread(case.paths.series_dir / "1-001.dcm", stop_before_pixels=True)
        assert root.findtext("l:ResponseHeader/l:SeriesInstanceUid", namespaces=NS) == series.SeriesInstanceUID
        assert root.findtext("l:ResponseHeader/l:StudyInstanceUID", namespaces=NS) == series.StudyInstanceUID
        assert len(root.findall("l:readingSession", NS)) == 4
        by_uid = {
            str(d.SOPInstanceUID): float(d.ImagePositionPatient[2])
            for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in case.paths.series_dir.glob("*.dcm"))
        }
        for roi in root.iter(f"{{{LIDC_NAMESPACE}}}roi"):
            uid = roi.findtext("l:imageSOP_UID", namespaces=NS)
            assert abs(float(roi.findtext("l:imageZposition", namespaces=NS)) - by_uid[uid]) < 1e-3
            assert roi.findtext("l:inclusion", namespaces=NS) == "TRUE" and roi.findall("l:edgeMap", NS)
        for nodule in root.iter(f"{{{LIDC_NAMESPACE}}}unblindedReadNodule"):
            rois = nodule.findall("l:roi", NS)
            point = all(len(r.findall("l:edgeMap", NS)) == 1 for r in rois)
            assert (nodule.find("l:characteristics", NS) is None) == point  # < 3 mm: a point, no ratings, as in LIDC


def _tag_paths(path: Path) -> set[str]:
    out: set[str] = set()

    def walk(el: ET.Element, prefix: str) -> None:
        name = f"{prefix}/{el.tag}"
        out.add(name)
        for child in el:
            walk(child, name)

    walk(ET.parse(path).getroot(), "")
    return out


@pytest.mark.realdata
def test_xml_tags_match_the_real_lidc_files(cohort, shared_data):
    _, _, cases = cohort
    real = _tag_paths(shared_data / "lidc-idri" / "LIDC-IDRI-0001" / "69.xml")
    ours = set().union(*(_tag_paths(c.paths.xml) for c in cases))
    assert ours == real  # same namespace, same elements at the same places (non-nodules included)


def test_outline_chain_encloses_the_region():
    """The edgeMap of a region, read back with LIDC's inclusion semantics, is the region (blobs touching the
    image border and specks included); a bay with a mouth one or two pixels wide closes, as a drawn outline would."""
    rng = np.random.default_rng(3)
    dice = []
    for _ in range(60):
        field = ndimage.gaussian_filter(rng.standard_normal((48, 48)), 2.0)
        mask = (field > 0.5 * field.std()) | (rng.random((48, 48)) < 0.002)
        back = np.zeros_like(mask)
        for chain in outline_chains(mask):
            back |= _roi_mask(Roi(0.0, "", True, np.asarray(chain)), mask.shape)
        filled = ndimage.binary_fill_holes(mask)
        assert (back >= filled).all()
        dice.append(_dice(back, filled))
    assert np.mean(dice) > 0.98


def test_round_trip_through_the_lidc_reader(cohort, ingested):
    """Consensus (agreement 0.5) = the demo label per nodule; readers, ratings, nodule and point counts as written."""
    _, _, cases = cohort
    outlined = 0
    for case, volume in zip(cases, ingested):
        truth = volume.labels["truth"] > 0
        assert (truth == (case.scan.phantom.nodule > 0)).all()  # same grid
        numbered = volume.annotations["lidc_nodules"]
        table = json.loads(volume.annotation_attrs["lidc_nodules"])
        points = json.loads(volume.annotation_attrs["lidc_points"])
        written = [r for r in case.reads if r.characteristics is not None]
        assert len(table) == len(written)
        n_non = len(ET.parse(case.paths.xml).getroot().findall(".//l:nonNodule", NS))
        assert len(points) == sum(len(r.readers) for r in case.reads if r.characteristics is None) + n_non
        masks = split_nodules(case.scan.phantom.nodule, case.scan.phantom.nodules, case.scan.geometry.spacing)
        for read, mask in zip(case.reads, masks):
            if read.characteristics is None:
                continue
            outlined += 1
            number = np.bincount(numbered[mask]).argmax()
            assert number > 0
            assert _dice(numbered == number, mask) >= 0.9
            bits = volume.annotations["lidc_readers"][read.box]
            for reader, outline in zip(read.readers, read.outline_masks):  # each reader's outline comes back
                assert _dice((bits >> (reader - 1)) & 1 > 0, outline) >= 0.95
            row = table[number - 1]
            assert row["readers"] == read.readers
            assert row["malignancy"] == [r["malignancy"] for r in read.ratings]
        overall = _dice(volume.labels["nodule"] > 0, truth)
        assert overall >= 0.95, (case.case_id, overall)
    assert outlined >= 10


def test_readers_disagree_at_the_edges_yet_agree(cohort):
    _, _, cases = cohort
    differing, pairs = 0, []
    for case in cases:
        for read in case.reads:
            outlines = [m for m in read.outline_masks if m is not None]
            assert len(read.readers) >= 3  # at most one reader misses a (small) nodule
            if len(outlines) < 2 or outlines[0].sum() < 20:
                continue
            differing += any((m != outlines[0]).any() for m in outlines[1:])
            pairs += [_dice(a, b) for i, a in enumerate(outlines) for b in outlines[i + 1:]]
    assert differing >= 5 and min(pairs) > 0.6


def test_ratings_follow_the_nodule_and_the_seed(cohort, tmp_path):
    _, _, cases = cohort
    rated = [(n, r) for c in cases for n, r in zip(c.scan.phantom.nodules, c.reads) if r.characteristics is not None]
    diameters = [n.diameter_mm for n, _ in rated]
    assert spearmanr(diameters, [r.malignancy for _, r in rated]).statistic > 0.5
    median_ratings = [float(np.median([x["malignancy"] for x in r.ratings])) for _, r in rated]
    assert spearmanr(diameters, median_ratings).statistic > 0.5
    assert all(r.characteristics["texture"] == {"solid": 5, "part_solid": 3, "ground_glass": 1}[n.kind] for n, r in rated)
    all_ratings = [x["malignancy"] for _, r in rated for x in r.ratings]
    truth_ratings = [r.malignancy for _, r in rated for _ in r.ratings]
    off = np.abs(np.subtract(all_ratings, truth_ratings))
    assert off.max() == 1 and 0 < (off > 0).mean() < 0.5  # readers differ by one now and then
    again = write_lidc_archive_case(cases[1].case_id, tmp_path / "a", SEED, SLICES, SIZE, SETTINGS)
    assert again.paths.xml.read_bytes() == cases[1].paths.xml.read_bytes()
    other = write_lidc_archive_case(cases[1].case_id, tmp_path / "b", SEED + 1, SLICES, SIZE, SETTINGS)
    assert other.paths.xml.read_bytes() != cases[1].paths.xml.read_bytes()


def test_diagnosis_table_is_tcia_coded_and_follows_the_truth(cohort):
    """A minority of patients, TCIA's header and codes, consistent with the nodules' true malignancy."""
    archive, _, cases = cohort
    with open(archive / DIAGNOSIS_FILE, newline="") as f:
        rows = {r[DIAGNOSIS_COLUMNS[0]]: r for r in csv.DictReader(f)}
    assert "Diagnosis at the Patient Level" in DIAGNOSIS_COLUMNS[1] and "\n" in DIAGNOSIS_COLUMNS[1]
    by_patient = {c.scan.identity.patient_id: c for c in cases}
    assert rows and set(rows) <= set(by_patient) and len(rows) < len(cases)
    for patient, row in rows.items():
        truths = [r.malignancy for r in by_patient[patient].reads if r.malignancy is not None]
        code = int(row[DIAGNOSIS_COLUMNS[1]])
        assert code == {True: 2, False: 1 if max(truths) <= 2 else 0}[max(truths) >= 4] or (code == 3 and max(truths) >= 4)


def test_patient_diagnosis_codes():
    def reads(*truths):
        return [type("R", (), {"malignancy": t})() for t in truths]

    assert patient_diagnosis(reads(None)) is None and patient_diagnosis([]) is None
    assert patient_diagnosis(reads(1, 2, None)) == (1, 1)
    assert patient_diagnosis(reads(2, 3)) == (0, 0)
    assert patient_diagnosis(reads(2, 5)) == (2, 2)
    assert patient_diagnosis(reads(4, 5)) == (3, 2)


def test_truth_sidecar(cohort):
    _, truth, cases = cohort
    for case in cases:
        rows = json.loads((truth / case.case_id / "labels" / "nodules.json").read_text())
        assert [r["diameter_mm"] for r in rows] == [n.diameter_mm for n in case.scan.phantom.nodules]
        assert [r["malignancy"] for r in rows] == [r.malignancy for r in case.reads]
        assert all(r["malignancy"] is None or 1 <= r["malignancy"] <= 5 for r in rows)


def test_cli_discover_and_ingest(tmp_path):
    archive = tmp_path / "my archive (LIDC)"
    assert main(["demo-cohort", "--out", str(archive), "--n-cases", "2", "--seed", str(SEED), "--slices", "24",
                 "--size", "128", "--nodules-per-case", "2", "3", "--layout", "lidc_archive", "--no-progress"]) == 0
    found = discover(archive, DEMO_SECRET)
    assert len(found.cases) == 2 and not found.skipped
    for row in found.cases:
        series = Path(row["dicom"])
        assert Path(row["lidc_xml"]).parent == series and Path(row["lidc_xml"]).suffix == ".xml"
        out = tmp_path / f"{row['case_id']}.h5"
        assert main(["ingest", str(series), "--case-id", row["case_id"], "--lidc-xml", row["lidc_xml"], "-o", str(out)]) == 0
        case = read_case(out)
        table = json.loads(case.annotation_attrs["lidc_nodules"])
        assert table and all(len(n["readers"]) >= 3 for n in table)
        assert case.labels["nodule"].any()


def test_truth_needs_the_archive_layout(tmp_path):
    with pytest.raises(SystemExit, match="--truth needs --layout lidc_archive"):
        main(["demo-cohort", "--out", str(tmp_path), "--n-cases", "1", "--truth", str(tmp_path / "t")])
