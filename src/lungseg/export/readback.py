"""Read a DICOM-SEG back onto its source series' slices, through the SEG's references (highdicom).

The check of an export: each frame is mapped by the source instance (and frame, for Enhanced CT) it
was derived from onto the slice of the series it references, the segments combined into one label
volume (segment number = value). Slices without a frame are background. The result is on the source
slices, in slice order: the scan's grid whenever ``lungseg ingest`` keeps the slices as they are
(uniform spacing, no gantry tilt), so it equals the exported mask voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np

from lungseg.export.source import SourceSeries, read_source_series
from lungseg.ingest.errors import IngestError


def read_back_seg(
    seg_path: str | Path,
    source_series_folder: str | Path,
    *,
    selector: str | None = None,
    secret: str | None = None,
    source: SourceSeries | None = None,
) -> np.ndarray:
    """The label volume (uint8, (slices, rows, columns), segment numbers) of a SEG on its source series."""
    seg_path = Path(seg_path)
    source = source or read_source_series(Path(source_series_folder), selector=selector, secret=secret)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds for a bad file
        raise IngestError(seg_path, f"cannot be read as a DICOM-SEG ({type(exc).__name__})", "export it again") from exc
    referenced = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if str(source.datasets[0].SeriesInstanceUID) not in referenced:
        raise IngestError(seg_path, "does not reference the given series", "give the series the SEG was exported from")
    options = {"combine_segments": True, "relabel": False, "assert_missing_frames_are_empty": True, "dtype": np.uint8}
    if source.multiframe:
        frames = [frame for _, frame in source.references]
        labels = seg.get_pixels_by_source_frame(str(source.datasets[0].SOPInstanceUID), frames, **options)
    else:
        uids = [str(source.datasets[index].SOPInstanceUID) for index, _ in source.references]
        labels = seg.get_pixels_by_source_instance(uids, **options)
    return np.asarray(labels, dtype=np.uint8)
