"""Series discovery: a folder tree of any depth -> one case per axial CT image series.

Files are grouped by SeriesInstanceUID (headers only, pixel data not read). A series becomes a case
when it is CT, axial (slice normal within 20 deg of the feet-head axis), grey-level, single-frame or
Enhanced CT (frames counted as slices), not a scout/localizer, and has at least ``min_slices`` slices;
every other series (and every unreadable file) is listed with its reason in the skipped table, and
every object that is not an image slice (RTPLAN, SR, DICOMDIR ...) as ``non-image object: KIND``.
Scout images that share the UID of an axial series are left to ingest, which sets them aside. A
series folder needs a ``series`` selector only when it holds files ingest would not set aside (another
CT series, unreadable files): scouts, non-image objects and series of other modalities do not count.

Case sheet columns (tab-separated), one row per series, sorted by case_id:

``case_id``   ``c`` + 12 hex: keyed hash (HMAC-SHA256) of SeriesInstanceUID
``patient_id``  ``p`` + 12 hex: keyed hash of PatientID (one patient's series share it)
``dicom``     the series folder: the deepest folder holding all its files (or, with a link
              folder, ``LINKS/<case_id>`` holding one symbolic link per slice, named 00000.dcm ...)
``series``    empty when ``dicom`` holds only this series; otherwise the selector to pass as
              ``lungseg ingest --series`` (20 hex of the same keyed hash; needs the same secret)
``n_slices``  number of slices of the series (frames, for Enhanced CT)
``lidc_xml``  an LIDC-IDRI reader XML found in the tree whose SeriesInstanceUid is this series (with a
              link folder, the link ``LINKS/<case_id>/lidc.xml`` to it), or empty
``luna16``    the LUNA16 ``annotations.csv`` given to discovery when it has rows of this series, or empty
``rtstruct``, ``seg``  an RT Structure Set / DICOM-SEG in the tree that references this series (see
              :mod:`lungseg.ingest.label_objects`; with a link folder, a link in ``LINKS/<case_id>.labels/``),
              or empty
``label_lung``, ``label_nodule``  empty, to fill in by hand

Skipped table columns: ``path`` (file or series folder), ``reason``; both scrubbed (UIDs shown as
``<uid>``, header values that identify a patient as ``<redacted>``; a folder name that is neither
cannot be recognised and stays). The ``dicom`` and ``lidc_xml`` columns hold paths as the archive
names them (they must be found again); with ``link_dir`` they hold pseudonymous paths only: every
file a case needs is reached through its link folder (annotation links carry a non-DICOM suffix, so
ingest never takes them for slices; RTSTRUCT and SEG links live in the sibling ``<case_id>.labels/``).

A clinical table keyed by PatientID (``diagnosis``) comes back re-keyed by patient pseudonym
(:mod:`lungseg.ingest.diagnosis`).
"""

from __future__ import annotations

import csv
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lungseg.atomic import atomic_path
from lungseg.ingest.diagnosis import DiagnosisTable, pseudonymise_diagnosis
from lungseg.ingest.errors import IngestError
from lungseg.ingest.headers import (
    NON_DICOM_SUFFIXES,
    header_problem,
    list_candidate_files,
    non_image_kind,
    read_header,
    slice_header,
)
from lungseg.ingest.label_objects import LABEL_KINDS, LabelObject, attach_label_objects, label_object
from lungseg.ingest.luna16 import annotated_series
from lungseg.ingest.pseudonym import Scrubber, case_pseudonym, patient_pseudonym, series_selector

DEFAULT_MIN_SLICES = 10
CASE_COLUMNS = (
    "case_id",
    "patient_id",
    "dicom",
    "series",
    "n_slices",
    "lidc_xml",
    "luna16",
    "rtstruct",
    "seg",
    "label_lung",
    "label_nodule",
)
SKIPPED_COLUMNS = ("path", "reason")
#: name of the link to a series' LIDC-IDRI reader XML inside its link folder
LIDC_LINK = "lidc.xml"
#: skipped-table reason of an object that is not an image slice (RTPLAN, SR, DICOMDIR ...), followed by its kind
NON_IMAGE_REASON = "non-image object: "


@dataclass
class _Series:
    uid: str
    patient: str
    frame: str = ""  # FrameOfReferenceUID
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    scouts: list[Path] = field(default_factory=list)
    modality: str = ""  # of its first image
    slices: int = 0  # image frames (an Enhanced CT file holds many)


@dataclass
class Discovery:
    cases: list[dict[str, str]]
    skipped: list[dict[str, str]]
    diagnosis: DiagnosisTable | None = None


def _lidc_series_uid(path: Path) -> str | None:
    """SeriesInstanceUid named in the header of an LIDC-IDRI XML, or None for any other XML."""
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag.rsplit("}", 1)[-1] in ("SeriesInstanceUid", "SeriesInstanceUID"):
                return (el.text or "").strip() or None
            if el.tag.rsplit("}", 1)[-1] == "readingSession":
                return None
    except (ET.ParseError, OSError):
        return None
    return None


def _scan(
    root: Path, progress: bool, scrub: Scrubber
) -> tuple[dict[str, _Series], list[dict[str, str]], list[Path], list[LabelObject]]:
    series: dict[str, _Series] = {}
    objects: list[LabelObject] = []
    skipped: list[dict[str, str]] = []
    files = list_candidate_files(root)
    for path in tqdm(files, desc="headers", unit="file", disable=not progress):
        try:
            ds = read_header(path)
        except IngestError as exc:
            skipped.append({"path": str(path), "reason": exc.reason})
            continue
        scrub.learn(ds)
        obj = label_object(ds, path)
        if obj is not None:
            objects.append(obj)
            continue
        kind = non_image_kind(ds)
        if kind is not None:  # ingest sets these aside too: listed, never a series
            skipped.append({"path": str(path), "reason": NON_IMAGE_REASON + kind})
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            skipped.append({"path": str(path), "reason": "has no SeriesInstanceUID"})
            continue
        patient, frame = str(ds.get("PatientID", "") or ""), str(ds.get("FrameOfReferenceUID", "") or "")
        entry = series.setdefault(uid, _Series(uid, patient, frame))
        header = slice_header(ds)
        if header.scout:
            entry.scouts.append(path)
            continue
        entry.files.append(path)
        entry.modality = entry.modality or header.modality
        entry.slices += header.frames if header.enhanced else 1
        problem = header_problem(header)
        if problem:
            entry.problems.append(problem)
    return series, skipped, files, objects


def _competing(
    files: list[Path], series: dict[str, _Series], skipped: list[dict[str, str]], objects: list[LabelObject]
) -> list[Path]:
    """The files ingest would not set aside beside a CT series (its own, other CT series', unreadable
    ones): scouts, non-image objects and image series of other modalities need no series selector."""
    aside = {str(o.path) for o in objects} | {r["path"] for r in skipped if r["reason"].startswith(NON_IMAGE_REASON)}
    for entry in series.values():
        aside.update(str(p) for p in entry.scouts)
        if entry.modality != "CT":
            aside.update(str(p) for p in entry.files)
    return [p for p in files if str(p) not in aside]


def _folder_of(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in files]))


def _files_below(per_dir: Counter, folder: Path) -> int:
    """Candidate files in ``folder`` and its sub-folders."""
    top = str(folder)
    return sum(n for d, n in per_dir.items() if d == top or d.startswith(top.rstrip(os.sep) + os.sep))


def _same_links(folder: Path, links: dict[str, Path]) -> bool:
    try:
        entries = {entry.name: entry for entry in os.scandir(folder)}
    except OSError:
        return False
    return entries.keys() == links.keys() and all(
        entries[name].is_symlink() and os.readlink(entries[name].path) == str(path.resolve()) for name, path in links.items()
    )


def _link_folder(final: Path, links: dict[str, Path]) -> Path:
    """Folder ``final`` holding one symbolic link per item (name -> file), replaced as a whole; left untouched
    (mtime kept, so the workflow does not rerun the case) when it already holds exactly these links."""
    if _same_links(final, links):
        return final
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, path in links.items():
        (tmp / name).symlink_to(path.resolve())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _link_series(link_root: Path, case_id: str, files: list[Path], extras: dict[str, Path] | None = None) -> Path:
    """``link_root/case_id`` with one symbolic link per slice and one per ``extras`` item (name -> file).
    Extra names must have a non-DICOM suffix, so ingest skips them."""
    for name in extras or {}:
        if not name.lower().endswith(NON_DICOM_SUFFIXES):
            raise ValueError(f"annotation link {name!r} would be read as a slice")
    slices = {f"{k:05d}.dcm": path for k, path in enumerate(sorted(files))}
    return _link_folder(Path(link_root) / case_id, {**slices, **(extras or {})})


def discover(
    root: Path,
    secret: str,
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
    link_dir: Path | None = None,
    progress: bool = False,
    scrubber: Scrubber | None = None,
    luna16: Path | None = None,
    diagnosis: Path | None = None,
    diagnosis_patient_column: str | None = None,
) -> Discovery:
    """Find the axial CT series below ``root`` (see the module docstring for the tables); ``scrubber``
    learns the identifying values of every header read. ``luna16``: a LUNA16 annotations.csv attached to
    the series it has rows of; ``diagnosis``: a table keyed by PatientID, returned keyed by pseudonym."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(root, "is not a folder", "give the top folder of the DICOM tree")
    scrub = scrubber if scrubber is not None else Scrubber()
    series, skipped, all_files, objects = _scan(root, progress, scrub)
    luna16_series = annotated_series(luna16) if luna16 is not None else set()
    xml_by_series = {}
    for xml in sorted(root.rglob("*.xml")):
        uid = _lidc_series_uid(xml)
        if uid:
            xml_by_series.setdefault(uid, xml)
    per_dir = Counter(str(p.parent) for p in _competing(all_files, series, skipped, objects))
    cases, accepted = [], {}
    for entry in series.values():
        folder = _folder_of(entry.files or entry.scouts)
        if not entry.files:
            reason = f"scout/localizer series only ({len(entry.scouts)} image(s))"
        elif entry.problems:
            reason = f"{entry.problems[0]} ({len(entry.problems)} of {len(entry.files)} file(s))"
        elif entry.slices < min_slices:
            reason = f"has only {entry.slices} slice(s), fewer than {min_slices}"
        else:
            reason = ""
        if reason:
            skipped.append({"path": str(folder), "reason": reason})
            continue
        accepted[entry.uid] = entry
    attached = attach_label_objects(objects, {uid: entry.frame for uid, entry in accepted.items()})
    skipped += attached.unattached
    for entry in accepted.values():
        folder = _folder_of(entry.files)
        case_id = case_pseudonym(secret, entry.uid)
        label_files = attached.by_series.get(entry.uid, {})
        others = _files_below(per_dir, folder) - len(entry.files)
        xml = xml_by_series.get(entry.uid)
        if link_dir is not None:
            dicom = _link_series(Path(link_dir), case_id, entry.files, {LIDC_LINK: xml} if xml else None)
            selector, xml = "", (dicom / LIDC_LINK if xml else None)
            if label_files:
                names = {kind: f"{kind}.dcm" for kind in label_files}
                labels = _link_folder(Path(link_dir) / f"{case_id}.labels", {names[k]: p for k, p in label_files.items()})
                label_files = {kind: labels / names[kind] for kind in label_files}
        else:
            dicom, selector = folder, (series_selector(secret, entry.uid) if others > 0 else "")
        cases.append(
            {
                "case_id": case_id,
                "patient_id": patient_pseudonym(secret, entry.patient or f"<no PatientID>:{entry.uid}"),
                "dicom": str(dicom),
                "series": selector,
                "n_slices": str(entry.slices),
                "lidc_xml": str(xml) if xml else "",
                "luna16": str(luna16) if entry.uid in luna16_series else "",
                **{kind: str(label_files[kind]) if kind in label_files else "" for kind in LABEL_KINDS},
                "label_lung": "",
                "label_nodule": "",
            }
        )
    cases.sort(key=lambda row: row["case_id"])
    table = None
    if diagnosis is not None:
        patients = {entry.patient for entry in accepted.values() if entry.patient}
        table = pseudonymise_diagnosis(diagnosis, secret, patients, patient_column=diagnosis_patient_column, scrub=scrub)
    skipped = sorted(
        ({"path": scrub(r["path"]), "reason": scrub(r["reason"])} for r in skipped), key=lambda r: r["path"]
    )
    return Discovery(cases, skipped, table)


def write_table(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> None:
    """A tab-separated table with a header, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def series_files(folder: Path, selector: str, secret: str) -> list[Path]:
    """The files of the series ``selector`` below ``folder`` (for workflow inputs; reads headers)."""
    out = []
    for path in list_candidate_files(Path(folder)):
        try:
            ds = read_header(path)
        except IngestError:
            out.append(path)  # unreadable files stay inputs: ingest reports them
            continue
        if series_selector(secret, str(ds.get("SeriesInstanceUID", ""))) == selector:
            out.append(path)
    return out
