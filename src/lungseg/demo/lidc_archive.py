"""A demo case written the way TCIA delivers LIDC-IDRI: an archive folder tree with reader XML.

Layout, per case (names with spaces, an apostrophe and brackets on purpose, as TCIA's downloader writes)::

    <archive>/LIDC-DEMO-<case_id>/01-01-2000-NA-CT CHEST W'O CONTRAST-<5 digits>/
        <series number>.000000-AXIAL CHEST [LUNG]-<5 digits>/
            1-001.dcm ...        one CT slice per file, named by InstanceNumber
            <nnn>.xml            LIDC reader XML: four simulated readers (:mod:`lungseg.demo.lidc_readers`)

All names derive from ``(seed, case_id, n_slices)`` (:func:`lidc_archive_paths`). The CT series is
the demo case's own (same seed and case id give the same slices, UIDs and fake
patient identity as the default ``cases`` layout; only the file names differ). The patient folder
is named from the case id, never from the fake PatientID (paths reach case sheets). With
``truth_root`` the ground truth goes outside the archive: ``<truth_root>/<case_id>/labels/`` with
``lung.nii.gz``, ``nodule.nii.gz`` and ``nodules.json`` (the default sidecar plus, per nodule,
``malignancy``, the ``readers`` (session numbers) who marked it, their ``ratings`` and ``characteristics``).

Pathology: ``<archive>/tcia-diagnosis-data.csv`` (:func:`update_diagnosis_table`) is a TCIA-style diagnosis table
(``TCIA Patient ID``, ``Diagnosis at the Patient Level`` with TCIA's codes and multi-line header, ``Diagnosis
Method``) for a minority of patients (:data:`DIAGNOSIS_FRACTION`, chosen by ``(seed, case_id)`` among those with
a rated nodule), consistent with the nodules' true malignancy (:func:`patient_diagnosis`). It names the fake
PatientID of the DICOM headers, as TCIA's does; discovery re-keys it by pseudonym.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from lungseg.atomic import write_text_atomic
from lungseg.demo.cohort import DemoScan, _digest, _swap_into_place, demo_case_ids, generate_demo_scan
from lungseg.demo.dicom_writer import write_ct_series
from lungseg.demo.lidc_readers import N_READERS, NoduleRead, SliceRefs, simulate_reads
from lungseg.demo.lidc_xml import XmlHeader, write_lidc_xml
from lungseg.demo.phantom import NoduleSettings
from lungseg.geometry import write_volume

DIAGNOSIS_FILE = "tcia-diagnosis-data.csv"
DIAGNOSIS_FRACTION = 0.3  # patients (with a rated nodule) whose pathology the table gives
#: TCIA's header names (line breaks as in its spreadsheet)
DIAGNOSIS_COLUMNS = (
    "TCIA Patient ID",
    "Diagnosis at the Patient Level\n0=Unknown\n1=benign or non-malignant disease\n"
    "2= malignant, primary lung cancer\n3 = malignant metastatic)\n",
    "Diagnosis Method\n0 = unknown\n1 = review of radiological images to show 2 years of stable nodule\n"
    "2 = biopsy\n3 = surgical resection\n4 = progression or response",
)
STUDY_DESCRIPTION = "CT CHEST W'O CONTRAST"
SERIES_DESCRIPTION = "AXIAL CHEST [LUNG]"


@dataclass(frozen=True)
class LidcArchivePaths:
    """Where one case lies in the archive (all known from ``(seed, case_id, n_slices)`` before writing)."""

    patient_dir: Path
    series_dir: Path
    xml: Path
    dicom_names: tuple[str, ...]  # 1-001.dcm ... by InstanceNumber (z order, or its reverse: see the DICOM)


@dataclass(frozen=True)
class LidcArchiveCase:
    case_id: str
    paths: LidcArchivePaths
    scan: DemoScan
    reads: list[NoduleRead]
    truth_dir: Path | None


def _five_digits(*parts: object) -> str:
    return f"{_digest(*parts) % 100000:05d}"


def lidc_archive_paths(archive: Path, case_id: str, seed: int, n_slices: int = 48) -> LidcArchivePaths:
    """The folders, XML and slice file names of ``case_id`` in ``archive``, known before it is written."""
    archive = Path(archive)
    patient = archive / f"LIDC-DEMO-{case_id}"
    study = f"01-01-2000-NA-{STUDY_DESCRIPTION}-{_five_digits('study', seed, case_id)}"
    series_number = 3000000 + _digest("series number", seed, case_id) % 1000000
    series = f"{series_number}.000000-{SERIES_DESCRIPTION}-{_five_digits('series', seed, case_id)}"
    series_dir = patient / study / series
    xml = series_dir / f"{_digest('xml', seed, case_id) % 1000:03d}.xml"
    return LidcArchivePaths(patient, series_dir, xml, tuple(f"1-{i:03d}.dcm" for i in range(1, n_slices + 1)))


def _z_ordered_names(paths: LidcArchivePaths, descending: bool) -> list[str]:
    """The slice file names in z order: named by InstanceNumber, which some series count downwards."""
    return list(paths.dicom_names[::-1] if descending else paths.dicom_names)


def _slice_refs(files: list[Path]) -> SliceRefs:
    """SOPInstanceUID and z of each written slice (files in z order)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "ImagePositionPatient"])
               for f in files]
    return SliceRefs([str(h.SOPInstanceUID) for h in headers], [float(h.ImagePositionPatient[2]) for h in headers])


def _series_study_uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "StudyInstanceUID"])
    return str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)


def reads_rng(seed: int, case_id: str) -> np.random.Generator:
    """The readers' own generator: apart from the scan's, so the CT is the same in every layout."""
    return np.random.default_rng(np.random.SeedSequence([seed, _digest("lidc-reads", case_id)]))


def write_lidc_archive_case(
    case_id: str, archive: Path, seed: int, n_slices: int = 48, size: int = 256,
    nodule_settings: NoduleSettings | None = None, *, truth_root: Path | None = None, n_readers: int = N_READERS,
) -> LidcArchiveCase:
    """Generate one demo case and write it into ``archive`` as TCIA lays out LIDC-IDRI (see module docstring);
    the patient folder is written aside and renamed into place when complete."""
    settings = nodule_settings if nodule_settings is not None else NoduleSettings()
    scan = generate_demo_scan(case_id, seed, n_slices=n_slices, size=size, nodule_settings=settings)
    archive = Path(archive)
    archive.mkdir(parents=True, exist_ok=True)
    paths = lidc_archive_paths(archive, case_id, seed, n_slices)
    tmp = archive / f".{paths.patient_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_series = tmp / paths.series_dir.relative_to(paths.patient_dir)
    try:
        files = write_ct_series(
            scan.phantom.hu, scan.geometry, tmp_series, scan.identity, scan.rng, scan.storage,
            descending_instances=scan.descending_instances, file_names=_z_ordered_names(paths, scan.descending_instances),
        )
        series_uid, study_uid = _series_study_uids(files[0])
        rng = reads_rng(seed, case_id)
        sessions, reads = simulate_reads(
            scan.phantom.nodule, scan.phantom.lung, scan.phantom.nodules, scan.geometry.spacing, settings.edges,
            _slice_refs(files), rng, n_readers=n_readers,
        )
        header = XmlHeader(
            series_uid=series_uid, study_uid=study_uid,
            message_uid=pydicom.uid.generate_uid(entropy_srcs=[str(seed), case_id, "lidc-message"]),
            message_id=int(rng.integers(-2**31, 2**31 - 1)),
        )
        write_lidc_xml(tmp / paths.xml.relative_to(paths.patient_dir), header, sessions)
        _swap_into_place(tmp, paths.patient_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    truth_dir = _write_truth(Path(truth_root) / case_id, scan, reads) if truth_root is not None else None
    return LidcArchiveCase(case_id, paths, scan, reads, truth_dir)


def _write_truth(case_dir: Path, scan: DemoScan, reads: list[NoduleRead]) -> Path:
    """``<case_dir>/labels/``: lung and nodule labels, nodules.json with the readers' ratings."""
    tmp = case_dir.with_name(f".{case_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_volume(str(tmp / "labels" / "lung.nii.gz"), scan.phantom.lung, scan.geometry)
        write_volume(str(tmp / "labels" / "nodule.nii.gz"), scan.phantom.nodule, scan.geometry)
        rows = [{**n.as_dict(), **read.as_dict()} for n, read in zip(scan.phantom.nodules, reads, strict=True)]
        text = "[\n" + ",\n".join(" " + json.dumps(r) for r in rows) + "\n]\n" if rows else "[]\n"
        (tmp / "labels" / "nodules.json").write_text(text)
        _swap_into_place(tmp, case_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return case_dir


def write_lidc_archive(
    archive: Path, n_cases: int, seed: int, n_slices: int = 48, size: int = 256, *,
    case_ids: list[str] | None = None, nodule_settings: NoduleSettings | None = None, truth_root: Path | None = None,
) -> list[LidcArchiveCase]:
    """Write ``case_ids`` (default ``demo_case_ids(n_cases)``) into one archive with its diagnosis table; the cases
    returned keep their phantoms in memory (for small cohorts and tests; ``lungseg demo-cohort`` writes one case at a time)."""
    ids = list(case_ids) if case_ids is not None else demo_case_ids(n_cases)
    cases = [write_lidc_archive_case(c, archive, seed, n_slices, size, nodule_settings, truth_root=truth_root) for c in ids]
    update_diagnosis_table(archive, [diagnosis_row(c, seed) for c in cases])
    return cases


def patient_diagnosis(reads: list[NoduleRead]) -> tuple[int, int] | None:
    """TCIA (diagnosis, method) codes of a patient from its nodules' true malignancy: highest >= 4 malignant
    (2 primary; 3 metastatic with two or more such nodules; by biopsy), <= 2 benign (1, two years stable),
    3 unknown (0, 0); None without a rated nodule."""
    truths = [r.malignancy for r in reads if r.malignancy is not None]
    if not truths:
        return None
    malignant = sum(t >= 4 for t in truths)
    if malignant:
        return (3 if malignant >= 2 else 2), 2
    return (1, 1) if max(truths) <= 2 else (0, 0)


def diagnosis_row(case: LidcArchiveCase, seed: int) -> tuple[str, dict[str, str] | None]:
    """``case``'s PatientID and its diagnosis-table row (None when the table leaves the patient out)."""
    patient = case.scan.identity.patient_id
    codes = patient_diagnosis(case.reads)
    if codes is None or _digest("diagnosis", seed, case.case_id) % 1000 >= DIAGNOSIS_FRACTION * 1000:
        return patient, None
    return patient, dict(zip(DIAGNOSIS_COLUMNS, (patient, str(codes[0]), str(codes[1]))))


def update_diagnosis_table(archive: Path, rows: list[tuple[str, dict[str, str] | None]]) -> Path:
    """Write (or update: these patients' rows replaced or removed, others kept) ``<archive>/tcia-diagnosis-data.csv``
    from :func:`diagnosis_row` results."""
    path = Path(archive) / DIAGNOSIS_FILE
    table: dict[str, dict[str, str]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            table = {r[DIAGNOSIS_COLUMNS[0]]: r for r in csv.DictReader(f)}
    for patient, row in rows:
        table.pop(patient, None)
        if row is not None:
            table[patient] = row
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DIAGNOSIS_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table[k] for k in sorted(table))
    write_text_atomic(path, buffer.getvalue())
    return path
