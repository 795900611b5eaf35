"""The source series of an export: its image datasets and slice planes, in slice order, headers only.

The series is found and checked as ``lungseg ingest`` finds it (same selector, same refusals), so a
series that ingests exports; the slices are sorted along the normal. Pixel data are never decoded.
An empty SOPClassUID (some exporters leave it so) is taken from the file meta, in memory only; a
series without study, series or instance UIDs cannot be referenced and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from lungseg.ingest.dicom_series import DEFAULT_MAX_GAP, ordered_slices
from lungseg.ingest.errors import IngestError
from lungseg.ingest.pseudonym import Scrubber


@dataclass(frozen=True)
class Plane:
    """One source slice in patient space: where the SEG frame drawn on it lies."""

    position: np.ndarray  # ImagePositionPatient (mm) of the first pixel
    row_direction: np.ndarray  # direction cosines along a row (column index grows)
    column_direction: np.ndarray  # direction cosines along a column (row index grows)
    spacing: tuple[float, float]  # (between rows, between columns) mm
    shape: tuple[int, int]  # (rows, columns)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)


@dataclass
class SourceSeries:
    """The image datasets of one series (each once, slice order) and its slices' planes and references."""

    datasets: list[pydicom.Dataset]
    planes: list[Plane]
    #: per slice: (index into ``datasets``, frame number from 1 for Enhanced CT, else None)
    references: list[tuple[int, int | None]]

    @property
    def multiframe(self) -> bool:
        return self.references[0][1] is not None


#: what a DICOM-SEG copies or references from each source dataset
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _with_sop_class(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    """``ds`` with its SOPClassUID (from the file meta when the dataset's own is missing or empty); refuses a
    dataset without the study, series or instance UID a DICOM-SEG must reference."""
    missing = [keyword for keyword in REFERENCED_UIDS if not str(ds.get(keyword, "") or "")]
    if missing:
        raise IngestError(path, f"has no {', '.join(missing)}, which a DICOM-SEG must reference",
                          "export the series from the archive or PACS with its UIDs (a SEG cannot point at it otherwise)")
    if str(ds.get("SOPClassUID", "") or ""):
        return ds
    meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if not meta_class:
        raise IngestError(path, "has no SOPClassUID (nor one in its file meta)", "re-export the series from the archive")
    ds.SOPClassUID = meta_class
    return ds


def read_source_series(
    folder: Path,
    *,
    selector: str | None = None,
    secret: str | None = None,
    max_gap: float = DEFAULT_MAX_GAP,
    scrubber: Scrubber | None = None,
) -> SourceSeries:
    """The one CT series of ``folder`` (by ``selector`` when it holds several) as a :class:`SourceSeries`."""
    folder = Path(folder)
    items = ordered_slices(folder, selector=selector, secret=secret, max_gap=max_gap, scrubber=scrubber).items
    datasets: list[pydicom.Dataset] = []
    index_of: dict[int, int] = {}
    planes, references = [], []
    for item in items:
        if id(item.ds) not in index_of:
            index_of[id(item.ds)] = len(datasets)
            datasets.append(_with_sop_class(item.ds, item.path))
        header = item.header
        planes.append(
            Plane(
                position=np.asarray(header.position, dtype=float),
                row_direction=np.asarray(header.orientation[:3], dtype=float),
                column_direction=np.asarray(header.orientation[3:], dtype=float),
                spacing=(float(header.pixel_spacing[0]), float(header.pixel_spacing[1])),
                shape=(int(header.rows), int(header.columns)),
            )
        )
        references.append((index_of[id(item.ds)], item.frame + 1 if header.enhanced else None))
    if references[0][1] is not None and len(datasets) > 1:
        raise IngestError(
            folder,
            f"is an Enhanced CT series split over {len(datasets)} files, which a DICOM-SEG cannot reference as one source",
            "export the series as one Enhanced CT file or as single-frame CT images",
        )
    return SourceSeries(datasets, planes, references)
