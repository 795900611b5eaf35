"""``lungseg dicomweb-retrieve``: the CT series of a PACS matching query filters, into a local archive.

QIDO-RS finds the studies matching the filters (study-level keys such as ``StudyDate=20240101-20241231``,
``PatientID=...``, ``StudyDescription=*CHEST*``; the study must hold CT), then their CT series (series-level
keys such as ``SeriesDescription``, ``BodyPartExamined``). WADO-RS retrieves each series into
``ARCHIVE/<folder>/``, where ``<folder>`` is the series' keyed pseudonym (the case ID discovery gives it:
``c`` + 12 hex of the HMAC of its SeriesInstanceUID under the site's secret) and every file is named by
the keyed hash of its SOPInstanceUID: no folder or file name carries a UID or a patient ID (the DICOM
files keep their headers; discovery and ingest pseudonymise downstream).

A series is written into the hidden ``ARCHIVE/.<folder>.partial/`` (one file at a time, each renamed
into place when complete) and the folder is renamed to ``ARCHIVE/<folder>/`` only once it holds every
instance the PACS listed for the series. So a run can be interrupted at any point: the next run skips
complete series, finishes partial folders (fetching only their missing instances) and retrieves the
rest. A series that comes back short of what the PACS listed (instances deleted meanwhile, a broken
stream) stays in its hidden folder, is reported, and makes the command exit 1; a study or series deleted
between query and retrieve is reported and skipped. Hidden folders are never read by discovery.

``--labels`` also retrieves the DICOM-SEG and RTSTRUCT objects of the selected studies into the folder
of the CT series they reference (reference labels for training; discovery attaches them to that series).
SEG objects lungseg made itself (Manufacturer ``lungseg``: predictions stored back) are never taken.

``--manifest`` writes a TSV of the selected series (``folder``, ``status``, ``slices``, ``expected``,
``labels``; pseudonymous); ``--links DIR`` makes ``DIR/<folder>`` links to exactly the complete series of this query
(the workflow's discovery reads that, so series of earlier queries in the same archive stay out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_keyword, tag_for_keyword
from tqdm import tqdm

from lungseg.atomic import write_text_atomic
from lungseg.dicomweb.client import DicomwebError, GoneError, Pacs
from lungseg.ingest.label_objects import label_object
from lungseg.ingest.pseudonym import (
    Scrubber,
    add_secret_arguments,
    case_pseudonym,
    keyed_hash,
    resolve_secret,
    scrub_diagnostics,
)

log = logging.getLogger("lungseg.dicomweb")

#: filter keys matched at the series level (QIDO-RS /studies/{study}/series); every other key at the study level
SERIES_KEYS = frozenset({
    "Modality", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime", "BodyPartExamined", "ProtocolName",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "SeriesInstanceUID",
})
#: the modality lungseg works on
MODALITY = "CT"
STUDY_UID, SERIES_UID, N_INSTANCES = "0020000D", "0020000E", "00201209"
MANIFEST_COLUMNS = ("folder", "status", "slices", "expected", "labels")
#: modalities of the label objects ``--labels`` retrieves
LABEL_MODALITIES = ("SEG", "RTSTRUCT")
#: Manufacturer of the SEG files lungseg writes (lungseg.export): predictions, never reference labels
OWN_MANUFACTURER = "lungseg"
#: statuses of a series in the manifest
RETRIEVED, RESUMED, COMPLETE, GONE, PARTIAL = "retrieved", "resumed", "already complete", "gone", "partial"


@dataclass(frozen=True)
class SeriesRef:
    """One CT series selected by the query; ``folder`` is its pseudonymous archive folder name."""

    study_uid: str
    series_uid: str
    folder: str
    listed: int | None  # NumberOfSeriesRelatedInstances in the QIDO answer, if the server gave it


@dataclass(frozen=True)
class SeriesResult:
    folder: str
    status: str
    slices: int
    expected: int
    labels: int = 0  # label objects (SEG, RTSTRUCT) retrieved into its folder


def parse_filters(items: Iterable[str]) -> dict[str, str]:
    """``["Modality=CT", "StudyDate=20240101-20241231"]`` -> a mapping; keys must be DICOM keywords."""
    filters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise DicomwebError(f"filter {item!r} is not KEY=VALUE (e.g. StudyDate=20240101-20241231)")
        filters[key] = value
    return check_filters(filters)


def check_filters(filters: Mapping[str, object]) -> dict[str, str]:
    """Filters with DICOM keywords as keys and string values; Modality, if given, must be CT."""
    checked = {}
    for key, value in filters.items():
        if tag_for_keyword(str(key)) is None:
            known = [dictionary_keyword(t) for t in (0x00080060, 0x00080020, 0x00100020, 0x00081030, 0x0008103E, 0x00180015)]
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise DicomwebError(
                f"filter key {key!r} is not a DICOM keyword" + (f" (did you mean {hint[0]}?)" if hint else "")
                + "; e.g. Modality, StudyDate, PatientID, StudyDescription, SeriesDescription"
            )
        if isinstance(value, (list, tuple)):
            value = "\\".join(str(v) for v in value)  # a DICOM list of values: any of them matches
        checked[str(key)] = str(value)
    if checked.get("Modality", MODALITY) != MODALITY:
        raise DicomwebError(f"filter Modality={checked['Modality']}: lungseg retrieves CT series only (Modality=CT)")
    return checked


def _first(dataset: Mapping, tag: str) -> str:
    values = dataset.get(tag, {}).get("Value") or [""]
    return str(values[0])


def query_ct_series(pacs: Pacs, filters: Mapping[str, str], secret: str) -> list[SeriesRef]:
    """The CT series matching ``filters`` (study-level keys on the studies, :data:`SERIES_KEYS` on their series)."""
    filters = check_filters(filters)
    study_filters = {k: v for k, v in filters.items() if k not in SERIES_KEYS and k != "ModalitiesInStudy"}
    study_filters["ModalitiesInStudy"] = MODALITY
    series_filters = {k: v for k, v in filters.items() if k in SERIES_KEYS}
    series_filters["Modality"] = MODALITY
    found: dict[str, SeriesRef] = {}
    for number, study in enumerate(pacs.search_studies(study_filters), 1):
        study_uid = _first(study, STUDY_UID)
        try:
            matching = pacs.search_series(study_uid, series_filters, what=f"study {number} of the query",
                                          fields=("NumberOfSeriesRelatedInstances",))
        except GoneError:  # deleted since the study query
            continue
        for series in matching:
            series_uid = _first(series, SERIES_UID)
            if not series_uid:
                continue
            count = _first(series, N_INSTANCES)
            folder = case_pseudonym(secret, series_uid)
            found[folder] = SeriesRef(study_uid, series_uid, folder, int(count) if count.isdigit() else None)
    return [found[k] for k in sorted(found)]


def instance_file_name(secret: str, sop_uid: str) -> str:
    """File name of an instance in its series folder: 16 hex of the keyed hash of its SOPInstanceUID."""
    return keyed_hash(secret, "instance", sop_uid)[:16] + ".dcm"


def partial_folder(archive: Path, folder: str) -> Path:
    """The hidden folder a series is written into until it is complete."""
    return archive / f".{folder}.partial"


def _write_instance(ds: pydicom.Dataset, path: Path) -> None:
    """Write one instance as a DICOM Part-10 file, atomically (a hidden temporary renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    os.replace(tmp, path)


class _SeriesRetrieval:
    """Retrieves one series into its partial folder, then renames it into place if complete.

    Complete means: every instance the PACS lists for the series now is in the folder, and at least as many
    instances as the query counted (NumberOfSeriesRelatedInstances), so a series that loses instances
    between query and retrieve comes back partial. A fresh series is streamed first (one request) and
    listed only when it came back short; a resumed one is listed, and only its missing instances fetched.
    """

    def __init__(self, pacs: Pacs, ref: SeriesRef, archive: Path, secret: str, bar: tqdm) -> None:
        self.pacs, self.ref, self.archive, self.secret, self.bar = pacs, ref, archive, secret, bar
        self.final, self.partial = archive / ref.folder, partial_folder(archive, ref.folder)
        self.what = f"series {ref.folder}"

    def present(self) -> set[str]:
        return {p.name for p in self.partial.glob("*.dcm")}

    def run(self) -> SeriesResult:
        resumed = self.partial.is_dir()
        self.partial.mkdir(parents=True, exist_ok=True)
        for stale in self.partial.glob(".*.tmp"):  # a write cut short by an interruption
            stale.unlink(missing_ok=True)
        self.bar.update(len(self.present()))
        if not resumed and self.ref.listed:  # fresh: stream it all; done if nothing is short
            self._stream(wanted=None)
            if len(self.present()) >= self.ref.listed:
                return self._complete(RETRIEVED)
        try:
            wanted = {instance_file_name(self.secret, uid): uid
                      for uid in self.pacs.instance_uids(self.ref.study_uid, self.ref.series_uid, self.what)}
        except GoneError:
            wanted = {}
        if not wanted:  # deleted since the query: nothing left to complete
            shutil.rmtree(self.partial, ignore_errors=True)
            return SeriesResult(self.ref.folder, GONE, 0, self.ref.listed or 0)
        missing = [name for name in wanted if name not in self.present()]
        if len(missing) > len(wanted) // 2:  # most of it: one streamed request, then what it lacked
            self._stream(wanted)
            missing = [name for name in wanted if name not in self.present()]
        self._one_by_one(missing, wanted)
        expected = max(len(wanted), self.ref.listed or 0)
        have = self.present()
        if set(wanted) <= have and len(have) >= expected:
            return self._complete(RESUMED if resumed else RETRIEVED)
        log.warning("%s: %d of the %d instances listed came back (%s); kept aside in %s, not used", self.what,
                    len(have), expected, "deleted on the server since the query?", self.partial.name)
        return SeriesResult(self.ref.folder, PARTIAL, len(have), expected)

    def _complete(self, status: str) -> SeriesResult:
        n = len(self.present())
        os.replace(self.partial, self.final)
        return SeriesResult(self.ref.folder, status, n, n)

    def _stream(self, wanted: Mapping[str, str] | None) -> None:
        """Stream the whole series (WADO-RS), writing the instances (of ``wanted``, if given) not there yet."""
        written = self.present()
        try:
            for ds in self.pacs.iter_series(self.ref.study_uid, self.ref.series_uid, self.what):
                name = instance_file_name(self.secret, str(ds.get("SOPInstanceUID", "")))
                if (wanted is None or name in wanted) and name not in written:
                    _write_instance(ds, self.partial / name)
                    written.add(name)
                    self.bar.update(1)
        except GoneError:
            pass  # the series went while streaming: what is still listed is tried one by one
        except DicomwebError as exc:  # a stream cut short: finish instance by instance
            log.warning("%s: %s; fetching the missing instances one by one", self.what, exc)

    def _one_by_one(self, missing: Sequence[str], wanted: Mapping[str, str]) -> None:
        """Fetch ``missing`` instances one request each (those gone, 404, are left missing)."""
        for name in missing:
            try:
                ds = self.pacs.retrieve_instance(self.ref.study_uid, self.ref.series_uid, wanted[name], self.what)
            except GoneError:
                continue
            _write_instance(ds, self.partial / name)
            self.bar.update(1)


def retrieve_series(
    pacs: Pacs, refs: Sequence[SeriesRef], archive: Path, secret: str, *, progress: bool = True
) -> list[SeriesResult]:
    """Retrieve every series of ``refs`` not complete in ``archive`` yet (see the module's docstring)."""
    archive = Path(archive)
    archive.mkdir(parents=True, exist_ok=True)
    results = []
    todo = [ref for ref in refs if not (archive / ref.folder).is_dir()]
    with tqdm(total=sum(ref.listed or 0 for ref in todo), desc="retrieve", unit="slice", disable=not progress) as bar:
        for ref in refs:
            final = archive / ref.folder
            if final.is_dir():
                n = ref.listed if ref.listed is not None else sum(1 for p in final.iterdir() if p.suffix == ".dcm")
                results.append(SeriesResult(ref.folder, COMPLETE, n, n))
                continue
            result = _SeriesRetrieval(pacs, ref, archive, secret, bar).run()
            if result.status == GONE:
                log.warning("series %s: no longer on %s (deleted since the query): skipped", ref.folder, pacs.url)
            results.append(result)
    return results


def retrieve_labels(
    pacs: Pacs, refs: Sequence[SeriesRef], results: Sequence[SeriesResult], archive: Path, secret: str
) -> list[SeriesResult]:
    """Retrieve the SEG / RTSTRUCT objects of the studies of ``refs`` into the folders of the complete CT
    series they reference (lungseg's own SEGs left out); ``results`` with their ``labels`` counted."""
    complete = {r.folder for r in results if r.status in (RETRIEVED, RESUMED, COMPLETE)}
    folder_of = {ref.series_uid: ref.folder for ref in refs if ref.folder in complete}
    counts = dict.fromkeys(folder_of.values(), 0)
    studies = sorted({ref.study_uid for ref in refs if ref.folder in complete})
    for number, study_uid in enumerate(studies, 1):
        what = f"the label objects of study {number} of the query"
        for modality in LABEL_MODALITIES:
            try:
                found = pacs.search_series(study_uid, {"Modality": modality}, what=what)
                for series in found:
                    for ds in pacs.iter_series(study_uid, _first(series, SERIES_UID), what):
                        if str(ds.get("Manufacturer", "")) == OWN_MANUFACTURER:
                            continue
                        obj = label_object(ds, Path("retrieved"))
                        for folder in sorted({folder_of[uid] for uid in (obj.series if obj else ()) if uid in folder_of}):
                            path = archive / folder / instance_file_name(secret, str(ds.SOPInstanceUID))
                            if not path.exists():
                                _write_instance(ds, path)
                            counts[folder] += 1
            except GoneError:
                continue
    return [dataclasses.replace(r, labels=counts.get(r.folder, 0)) for r in results]


def write_manifest(path: Path, results: Sequence[SeriesResult]) -> None:
    rows = ["\t".join(MANIFEST_COLUMNS)]
    rows += [f"{r.folder}\t{r.status}\t{r.slices}\t{r.expected}\t{r.labels}" for r in results]
    write_text_atomic(path, "\n".join(rows) + "\n")


def write_links(links: Path, archive: Path, results: Sequence[SeriesResult]) -> None:
    """``links/<folder>`` -> the archive's folder, for each complete series of this query (replacing ``links``)."""
    links = Path(links)
    tmp = links.with_name(f".{links.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for result in results:
        if result.status in (RETRIEVED, RESUMED, COMPLETE):
            os.symlink((Path(archive) / result.folder).resolve(), tmp / result.folder)
    old = links.with_name(f".{links.name}.old{os.getpid()}")
    if links.exists():
        os.replace(links, old)
    os.replace(tmp, links)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- command line


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="DICOMweb base URL, e.g. http://localhost:8042/dicom-web")
    parser.add_argument("--user-env", metavar="VAR", help="environment variable holding the PACS user name")
    parser.add_argument("--password-env", metavar="VAR", help="environment variable holding the PACS password")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer (default 120)")


def pacs_from_args(args: argparse.Namespace) -> Pacs:
    return Pacs(args.url, user_env=args.user_env, password_env=args.password_env, timeout=(5.0, args.timeout))


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument(
        "--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
        help="QIDO-RS match, repeatable: a DICOM keyword and value (wildcards * ?, date ranges A-B), e.g. "
             "StudyDate=20240101-20241231, StudyDescription=*CHEST*, SeriesDescription=*LUNG*; Modality is CT",
    )
    parser.add_argument("--out", type=Path, required=True, help="archive folder: one pseudonymous folder per series")
    parser.add_argument(
        "--labels", action="store_true",
        help="also retrieve the studies' DICOM-SEG and RTSTRUCT objects into the folder of the CT series they reference "
             "(reference labels; lungseg's own SEGs are left out)",
    )
    parser.add_argument("--manifest", type=Path, help="TSV of the selected series (default: ARCHIVE/.lungseg-retrieved.tsv)")
    parser.add_argument("--links", type=Path, metavar="DIR", help="make DIR/<folder> links to this query's complete series")
    add_secret_arguments(parser, "for the folder names")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scrub_diagnostics(Scrubber())  # no UID reaches the log, whatever a library says
    try:
        filters = parse_filters(args.filters)
        secret = resolve_secret(args.secret_env, args.secret_file, args.allow_default_secret)
        pacs = pacs_from_args(args)
        refs = query_ct_series(pacs, filters, secret)
        if not refs:
            keys = ", ".join(sorted(filters)) or "none"
            raise DicomwebError(f"no CT series on {pacs.url} matches the filters (keys: {keys}): check their values")
        log.info("%d CT series match the filters on %s", len(refs), pacs.url)
        results = retrieve_series(pacs, refs, args.out, secret, progress=not args.no_progress)
        if args.labels:
            results = retrieve_labels(pacs, refs, results, args.out, secret)
    except DicomwebError as exc:
        print(f"lungseg dicomweb-retrieve: error: {exc}", file=sys.stderr)
        return 1
    write_manifest(args.manifest or args.out / ".lungseg-retrieved.tsv", results)
    if args.links:
        write_links(args.links, args.out, results)
    counts = {status: sum(r.status == status for r in results) for status in (RETRIEVED, RESUMED, COMPLETE, GONE, PARTIAL)}
    labels = f", {sum(r.labels for r in results)} label objects" if args.labels else ""
    print("series: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
          + f"; {sum(r.slices for r in results)} slices{labels} in {args.out}")
    partial = [r for r in results if r.status == PARTIAL]
    for r in partial:
        print(f"lungseg dicomweb-retrieve: error: series {r.folder} came back incomplete ({r.slices} of {r.expected} "
              f"instances): kept aside in {partial_folder(args.out, r.folder)}, not used; rerun to resume, or leave it "
              "out with the filters", file=sys.stderr)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    return 1 if partial else 0
