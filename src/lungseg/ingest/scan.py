"""Ingest one scan: DICOM folder or ITK volume (+ masks, LIDC XML, LUNA16 CSV, RTSTRUCT, DICOM-SEG) -> a case.

A 2-D image file (PNG, JPEG, TIFF, GIF, BMP, or a single DICOM radiograph) goes to
:func:`lungseg.images.ingest_image` instead: a one-slice case with normalised intensity.

The result is a :class:`~lungseg.casefile.CaseVolume`. Labels land on the scan's own grid first
(masks resampled in physical space, LIDC ROIs matched to slices, LUNA16 spheres from world
coordinates, RTSTRUCT contours and DICOM-SEG frames placed in physical space, their structures named
by ``structure_labels``); a label given as a mask wins over the same label from an RTSTRUCT, and an
RTSTRUCT's over a SEG's (noted). With ``target_spacing`` the image is then resampled (linear) and
every label and annotation mask with it (nearest), and the scan's own grid is kept in the case
file's ``source_*`` attributes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungseg.casefile import CaseVolume
from lungseg.geometry import Geometry
from lungseg.images.case import image_geometry, ingest_image
from lungseg.images.formats import IMAGE_SUFFIXES, is_image_file
from lungseg.images.read import read_image
from lungseg.ingest.dicom_series import AIR_HU, DEFAULT_MAX_GAP, MAX_HU, SeriesVolume, read_series
from lungseg.ingest.errors import IngestError
from lungseg.ingest.labels import load_label_on_grid
from lungseg.ingest.lidc import DEFAULT_AGREEMENT, SliceMap, lidc_attrs, rasterise_lidc
from lungseg.ingest.luna16 import luna16_attrs, luna16_labels
from lungseg.ingest.pseudonym import Scrubber
from lungseg.ingest.resample import resample_volume, target_grid
from lungseg.ingest.rtstruct import read_rtstruct_labels
from lungseg.ingest.seg_labels import read_seg_labels

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


@dataclass
class IngestOptions:
    """Everything besides the scan that shapes one case (the CLI flags of ``lungseg ingest``)."""

    labels: dict[str, Path] = field(default_factory=dict)
    lidc_xml: Path | None = None
    luna16: Path | None = None
    rtstruct: Path | None = None
    seg: Path | None = None
    #: structure names -> labels for RTSTRUCT/SEG (``ingest.structure_labels``; None: the defaults)
    structure_labels: dict | None = None
    target_spacing: tuple[float, float, float] | None = None
    selector: str | None = None
    secret: str | None = None
    max_gap: float = DEFAULT_MAX_GAP
    agreement: float = DEFAULT_AGREEMENT
    progress: bool = False
    #: 2-D DICOM images: apply their VOI LUT / window ("apply") or not ("ignore")
    voi: str = "apply"


def _read_volume(source: Path) -> SeriesVolume:
    try:
        image = sitk.ReadImage(str(source))
    except RuntimeError as exc:
        raise IngestError(source, "cannot be read as an image volume", "give a valid NIfTI/NRRD/MHA file") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise IngestError(source, "is not a 3-D grey-level volume", "give a CT volume")
    hu = np.clip(np.rint(sitk.GetArrayFromImage(image)), AIR_HU, MAX_HU).astype(np.int16)
    geometry = Geometry.from_sitk(image)
    stem = source.name[: -len(next(s for s in VOLUME_SUFFIXES if source.name.lower().endswith(s)))]
    return SeriesVolume(
        hu=hu,
        geometry=geometry,
        files=[source],
        provenance={"source_kind": "volume", "n_slices": int(hu.shape[0])},
        source_positions=np.arange(hu.shape[0]) * geometry.spacing[2],
        series_uid=stem,
    )


def read_source(source: Path, options: IngestOptions | None = None, scrubber: Scrubber | None = None) -> SeriesVolume:
    """A DICOM series folder or an ITK-readable volume as a :class:`SeriesVolume`."""
    options = options or IngestOptions()
    source = Path(source)
    if source.is_dir():
        return read_series(
            source,
            selector=options.selector,
            secret=options.secret,
            max_gap=options.max_gap,
            scrubber=scrubber,
            progress=options.progress,
        )
    if source.is_file() and source.name.lower().endswith(VOLUME_SUFFIXES):
        return _read_volume(source)
    if source.is_file() and is_image_file(source):
        return _read_image_as_volume(source, options.voi)
    if not source.exists():
        raise IngestError(source, "does not exist", "check the path in the case sheet")
    raise IngestError(
        source,
        "is neither a DICOM folder nor a volume file",
        f"give a folder of DICOM files, one of {', '.join(VOLUME_SUFFIXES)}, or a 2-D image ({', '.join(IMAGE_SUFFIXES)})",
    )


def _read_image_as_volume(source: Path, voi: str) -> SeriesVolume:
    """A 2-D image as a one-slice volume (normalised intensity 0..1000, not HU; see :mod:`lungseg.images.read`)."""
    image = read_image(source, voi=voi)
    return SeriesVolume(
        hu=image.pixels[None],
        geometry=image_geometry(image.spacing_xy),
        files=[source],
        provenance={"source_kind": "image2d", "n_slices": 1, **image.provenance},
        source_positions=np.zeros(1),
    )


def read_scan(source: Path) -> tuple[np.ndarray, Geometry, dict[str, str | int | float]]:
    """HU volume (int16, z/y/x), geometry and provenance of a DICOM folder or an ITK-readable volume."""
    scan = read_source(source)
    return scan.hu, scan.geometry, scan.provenance


def _slice_map(scan: SeriesVolume) -> SliceMap:
    """Source slices (by SOP UID) -> grid slices, and the world z of every grid slice."""
    geometry = scan.geometry
    n = scan.hu.shape[0]
    dz = geometry.spacing[2]
    grid_index = np.clip(np.rint(scan.source_positions / dz).astype(int), 0, n - 1) if n else np.zeros(0, int)
    uid_to_slice = {uid: int(k) for uid, k in zip(scan.slice_uids, grid_index) if uid}
    z_values = geometry.index_to_physical(np.c_[np.zeros(n), np.zeros(n), np.arange(n)])[:, 2]
    return SliceMap(uid_to_slice, z_values, dz)


def ingest_scan(
    case_id: str,
    source: Path,
    labels: dict[str, Path] | None = None,
    *,
    options: IngestOptions | None = None,
    scrubber: Scrubber | None = None,
) -> CaseVolume:
    """Read ``source``, put every label and annotation on its grid, optionally resample (see module docstring)."""
    options = options or IngestOptions()
    if labels:
        options = replace(options, labels={**options.labels, **labels})
    if Path(source).is_file() and is_image_file(source):
        given = [flag for flag, value in (("--lidc-xml", options.lidc_xml), ("--luna16", options.luna16),
                                          ("--rtstruct", options.rtstruct), ("--seg", options.seg),
                                          ("--target-spacing", options.target_spacing)) if value is not None]
        if given:
            raise IngestError(source, f"is a 2-D image; {', '.join(given)} apply to CT series only",
                              "give the image with --label masks only")
        return ingest_image(case_id, source, options.labels, voi=options.voi)
    scan = read_source(source, options, scrubber)
    shape = scan.hu.shape
    notes = list(scan.notes)
    label_arrays = {
        name: load_label_on_grid(path, scan.geometry, shape, name=name) for name, path in options.labels.items()
    }
    annotations: dict[str, np.ndarray] = {}
    annotation_attrs: dict[str, str] = {}
    if options.lidc_xml is not None:
        lidc = rasterise_lidc(options.lidc_xml, scan.geometry, shape, _slice_map(scan), options.agreement)
        annotations.update(lidc_readers=lidc.readers, lidc_nodules=lidc.nodules)
        annotation_attrs.update(lidc_attrs(lidc))
        label_arrays.setdefault("nodule", lidc.consensus)
        notes += lidc.notes
    if options.luna16 is not None:
        numbered, table, luna_notes = luna16_labels(options.luna16, scan.series_uid, scan.geometry, shape)
        annotations["luna16_nodules"] = numbered
        annotation_attrs.update(luna16_attrs(table))
        label_arrays.setdefault("nodule", (numbered > 0).astype(np.uint8))
        notes += luna_notes
    # a DICOM scan's series UID is checked against the structure set's reference; a volume file has none
    series_uid = scan.series_uid if scan.provenance.get("source_kind") != "volume" else None
    for kind, path in (("RTSTRUCT", options.rtstruct), ("SEG", options.seg)):
        if path is None:
            continue
        if kind == "RTSTRUCT":
            found, found_notes = read_rtstruct_labels(path, scan.geometry, shape, series_uid, options.structure_labels)
        else:
            found, found_notes = read_seg_labels(
                path, scan.geometry, shape, series_uid, options.structure_labels, _slice_map(scan).uid_to_slice
            )
        if series_uid is None:
            found_notes.insert(0, "series reference not checked (the scan is a volume file)")
        for name, array in found.items():
            if name in label_arrays:
                found_notes.append(f"label {name} kept from an earlier source, the {kind}'s left out")
            else:
                label_arrays[name] = array
        notes += [f"{kind}: {note}" for note in found_notes]

    image, geometry, source_geometry = scan.hu, scan.geometry, None
    if options.target_spacing is not None:
        geometry, new_shape = target_grid(scan.geometry, shape, options.target_spacing)
        image = resample_volume(scan.hu, scan.geometry, geometry, new_shape, label=False)
        label_arrays = {
            k: resample_volume(v, scan.geometry, geometry, new_shape, label=True) for k, v in label_arrays.items()
        }
        annotations = {
            k: resample_volume(v, scan.geometry, geometry, new_shape, label=True) for k, v in annotations.items()
        }
        source_geometry = scan.geometry
        notes.append(
            f"resampled from {tuple(round(s, 3) for s in scan.geometry.spacing)} mm to "
            f"{tuple(options.target_spacing)} mm (linear image, nearest labels)"
        )
    provenance = dict(scan.provenance)
    if notes:
        provenance["ingest_notes"] = json.dumps(notes)
    return CaseVolume(
        case_id=case_id,
        image=image,
        geometry=geometry,
        labels=label_arrays,
        provenance=provenance,
        annotations=annotations,
        annotation_attrs=annotation_attrs,
        source_geometry=source_geometry,
        source_shape=shape if source_geometry is not None else None,
    )
