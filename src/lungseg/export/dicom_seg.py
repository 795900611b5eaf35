"""A predicted mask as a DICOM Segmentation (highdicom) referencing the source series' instances.

One BINARY SEG per study. Its segments follow what the mask holds:

- ``lung`` target: values 1 and 2 (the right / left lungs of ``lungseg lung-mask``) -> segments
  "Right lung" (1) and "Left lung" (2), Anatomical Structure / Lung with laterality Right / Left; a 0/1
  mask (``lungseg predict``) -> one segment "Lung";
- ``nodule`` target: a 0/1 mask -> one segment "Nodule" (Morphologically Abnormal Structure / Nodule,
  anatomic region Lung); values 1..n (numbered nodules) -> "Nodule 1" .. "Nodule n".

Each segment is AUTOMATIC, identified by the algorithm ``lungseg <experiment>``, version
``<lungseg version>+<model hash>`` (the first 12 hex digits of the SHA-256 of the model file(s)). The
mask (a volume in the scan's geometry, e.g. ``lungseg predict``'s NIfTI) is put on the source slices in
physical space (:mod:`lungseg.export.planes`). Frames without any segment voxel are left out; an
all-zero mask (nothing found) still gives a valid SEG: its segments, and every frame, empty (a SEG
must hold at least one frame, so none can be left out).

The SEG carries the source study's patient and study modules and UIDs, as the standard requires:
it identifies the patient and belongs in ``exports/``, never in ``results/``. Its own series and
instance UIDs are derived from the source series, the model and the mask, so exporting the same
prediction again gives the same object (a PACS replaces it instead of storing a second copy).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lungseg import __version__
from lungseg.atomic import atomic_path
from lungseg.export.planes import mask_on_planes
from lungseg.export.source import SourceSeries, read_source_series
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

LABEL_KINDS = ("lung", "nodule")
#: SeriesNumber of the SEG series (a high number keeps it after the scanner's series in viewers)
SEG_SERIES_NUMBER = 9801
#: CIELab display colours (highdicom scales): right lung, left lung / lung, nodules
COLOURS = {"right": (60.0, 60.0, 50.0), "left": (60.0, -50.0, 50.0), "lung": (70.0, -30.0, 40.0), "nodule": (55.0, 75.0, 40.0)}


@dataclass(frozen=True)
class Segment:
    """One segment: the mask value it holds and how it is described."""

    value: int
    label: str
    category: Code
    property_type: Code
    laterality: Code | None = None  # a Right/Left modifier of the property type
    region: Code | None = None  # anatomic region (nodules: the lung)
    colour: tuple[float, float, float] = COLOURS["lung"]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    segments: list[str]  # segment labels
    frames: int  # frames written (non-empty (slice, segment) pairs)
    slices: int  # source slices
    resampled: int  # slices whose frame was resampled, not copied from the mask grid


def model_version(model_paths: Sequence[Path]) -> tuple[str, str]:
    """(``<lungseg version>+<hash>``, hash): the hash is 12 hex digits of the SHA-256 of the model file(s)."""
    digest = hashlib.sha256()
    for path in model_paths:
        path = Path(path)
        if not path.is_file():
            raise IngestError(path, "model file not found", "pass the model.pt the prediction was made with")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    short = digest.hexdigest()[:12]
    return f"{__version__}+{short}", short


def segments_for(values: set[int], label_kind: str, source: str | Path = "mask") -> list[Segment]:
    """The segments of a mask holding ``values`` (0 = background) for target ``label_kind`` (module docstring):
    numbered 1..n, each holding the voxels of mask value = its number."""
    values = values - {0}
    if label_kind == "lung":
        if values <= {1}:
            return [Segment(1, "Lung", codes.SCT.AnatomicalStructure, codes.SCT.Lung)]
        if values <= {1, 2}:
            return [
                Segment(1, "Right lung", codes.SCT.AnatomicalStructure, codes.SCT.Lung, codes.SCT.Right,
                        colour=COLOURS["right"]),
                Segment(2, "Left lung", codes.SCT.AnatomicalStructure, codes.SCT.Lung, codes.SCT.Left,
                        colour=COLOURS["left"]),
            ]
        raise IngestError(source, f"holds values {sorted(values)}, not a lung mask (0/1, or 1 right / 2 left)",
                          "give the lung prediction of `lungseg predict` or `lungseg lung-mask`")
    if label_kind == "nodule":
        abnormal, nodule = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Nodule
        if values <= {1}:
            return [Segment(1, "Nodule", abnormal, nodule, region=codes.SCT.Lung, colour=COLOURS["nodule"])]
        return [Segment(v, f"Nodule {v}", abnormal, nodule, region=codes.SCT.Lung, colour=COLOURS["nodule"])
                for v in range(1, max(values) + 1)]
    raise IngestError(source, f"is a '{label_kind}' prediction, which DICOM-SEG export does not know",
                      f"export a target among {', '.join(LABEL_KINDS)} (or give --label)")


def _description(segment: Segment, number: int, algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label,
        segmented_property_category=segment.category,
        segmented_property_type=segment.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[segment.region] if segment.region is not None else None,
        display_color=hd.color.CIELabColor(*segment.colour),
    )
    if segment.laterality is not None:
        modifier = hd.sr.CodedConcept.from_code(segment.laterality)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def read_mask(mask: str | Path | sitk.Image | tuple[np.ndarray, Geometry]) -> sitk.Image:
    """A mask volume as an 8-bit SimpleITK image: a file, an image, or a ``(z, y, x)`` array with its geometry."""
    if isinstance(mask, tuple):
        array, geometry = mask
        image = geometry.to_sitk(np.asarray(array))
        source: str | Path = "mask array"
    elif isinstance(mask, sitk.Image):
        image, source = mask, "mask image"
    else:
        source = Path(mask)
        try:
            image = sitk.ReadImage(str(source))
        except RuntimeError as exc:
            raise IngestError(source, "cannot be read as a mask volume", "give the NIfTI mask of `lungseg predict`") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise IngestError(source, "is not a 3-D label volume", "give the NIfTI mask of `lungseg predict`")
    array = sitk.GetArrayViewFromImage(image)
    if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.rint(array))):
        raise IngestError(source, "holds values that are not labels 0-255", "give a label mask, not probabilities")
    return sitk.Cast(image, sitk.sitkUInt8) if image.GetPixelID() != sitk.sitkUInt8 else image


def seg_uids(source: SourceSeries, model_hash: str, frames: np.ndarray) -> tuple[str, str]:
    """(series, instance) UIDs of the SEG, derived from the source series, the model and the mask."""
    series = str(source.datasets[0].SeriesInstanceUID)
    content = hashlib.sha256(str(frames.shape).encode() + frames.tobytes()).hexdigest()
    seg_series = generate_uid(entropy_srcs=["lungseg-seg-series", series, model_hash])
    seg_instance = generate_uid(entropy_srcs=["lungseg-seg-instance", series, model_hash, content])
    return seg_series, seg_instance


def _segmentation(source: SourceSeries, pixels: np.ndarray, descriptions: list[hd.seg.SegmentDescription],
                  series_uid: str, instance_uid: str, model_name: str, model_version: str, label_kind: str,
                  device_serial: str) -> hd.seg.Segmentation:
    """The highdicom Segmentation object (BINARY) of ``pixels`` (one frame per source slice, frame order)."""
    return hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer="lungseg",
        manufacturer_model_name=model_name[:64],
        software_versions=model_version[:64],
        device_serial_number=device_serial or "none",
        content_description=f"{label_kind} segmentation by {model_name}"[:64],
        content_label=label_kind.upper()[:16],
        series_description=f"{model_name} {label_kind}"[:64],
        omit_empty_frames=bool(pixels.any()),  # an empty mask: every frame (highdicom cannot omit them all)
    )


def write_dicom_seg(
    mask: str | Path | sitk.Image | tuple[np.ndarray, Geometry],
    source_series_folder: str | Path,
    out_path: str | Path,
    *,
    model_name: str,
    model_version: str,
    label_kind: str,
    device_serial: str = "",
    selector: str | None = None,
    secret: str | None = None,
    source: SourceSeries | None = None,
) -> ExportResult:
    """Write ``mask`` as a BINARY DICOM-SEG on the series of ``source_series_folder`` to ``out_path``.

    ``model_name``: the algorithm name (``lungseg <experiment>``); ``model_version``: its version (see
    :func:`model_version`); ``label_kind``: ``lung`` or ``nodule``; ``selector``/``secret``: pick one
    series of a folder holding several (as ``lungseg ingest --series``); ``source``: the series already
    read by :func:`read_source_series` (then the folder is not read again).
    """
    out_path = Path(out_path)
    image = read_mask(mask)
    source = source or read_source_series(Path(source_series_folder), selector=selector, secret=secret)
    labels, resampled = mask_on_planes(image, source.planes)
    values = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(image))}
    segments = segments_for(values, label_kind, mask if isinstance(mask, (str, Path)) else "mask")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.cid7162.ArtificialIntelligence, version=model_version[:64])
    # segment number = mask value: segments_for gives segments 1..n for mask values 1..n
    descriptions = [_description(s, s.value, algorithm) for s in segments]
    pixels = labels
    if source.multiframe:  # highdicom wants the frames of a multi-frame source in its own frame order
        in_frame_order = np.zeros_like(pixels)
        for k, (_, frame) in enumerate(source.references):
            in_frame_order[frame - 1] = pixels[k]
        pixels = in_frame_order
    series_uid, instance_uid = seg_uids(source, model_version, pixels)
    with warnings.catch_warnings():  # it would quote the source's patient name, which the SEG copies as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name", category=UserWarning)
        seg = _segmentation(source, pixels, descriptions, series_uid, instance_uid, model_name, model_version,
                            label_kind, device_serial)
    methods = {"DeidentificationMethod", "DeidentificationMethodCodeSequence"}
    if seg.get("PatientIdentityRemoved") == "YES" and not methods & set(seg.dir()):
        seg.DeidentificationMethod = "not recorded in the source series"  # type 1C: needed once identity is removed
    frames = int(seg.get("NumberOfFrames", 0) or 0)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return ExportResult(out_path, [s.label for s in segments], frames, len(source.planes), resampled)
