"""Write a HU volume as a real single-frame CT DICOM series (one file per slice) with pydicom.

The files are valid Part-10 files (preamble, file meta, Explicit VR Little Endian) of SOP class CT
Image Storage, with full patient geometry, so any DICOM reader (pydicom, GDCM/SimpleITK, viewers)
reconstructs the volume and its geometry. File names are random, so name order is not z order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lungseg.geometry import Geometry

STORAGES = ("signed", "unsigned")
UNSIGNED_OFFSET = 1024  # "unsigned" storage: stored = HU + 1024, RescaleIntercept -1024


@dataclass(frozen=True)
class PatientIdentity:
    """Fake but distinctive identifying values, so de-identification can be checked by grepping."""

    patient_name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # "M" / "F" / "O"
    accession_number: str
    institution_name: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    series_description: str

    def values(self) -> list[str]:
        """The identifying strings that must never leave the DICOM files."""
        return [self.patient_name, self.patient_id, self.birth_date, self.accession_number, self.institution_name]


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_ct_series(
    hu: np.ndarray,
    geometry: Geometry,
    out_dir: Path,
    identity: PatientIdentity,
    rng: np.random.Generator,
    storage: str,
    *,
    descending_instances: bool = False,
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``hu`` ((z, y, x) int HU) as one CT slice file per z into ``out_dir``; return the files in z order.

    ``storage`` is "signed" (int16 = HU) or "unsigned" (uint16 = HU + 1024, 12 bits stored).
    ``descending_instances`` numbers InstanceNumber from the highest slice down, as many scanners do.
    UIDs (and file names, unless ``file_names`` gives them in z order) come from ``rng``, so a seeded
    generator gives an identical series.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    hu = np.asarray(hu)
    if hu.min() < -1024 or hu.max() > 3071:
        raise ValueError("HU values must lie in [-1024, 3071]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices, rows, cols = hu.shape
    sx, sy, sz = geometry.spacing
    direction = geometry.direction_matrix
    row_cos, col_cos, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.asarray(geometry.origin, dtype=float)

    key = rng.bytes(16).hex()
    study_uid = generate_uid(entropy_srcs=[key, "study"])
    series_uid = generate_uid(entropy_srcs=[key, "series"])
    frame_uid = generate_uid(entropy_srcs=[key, "frame-of-reference"])
    names = list(file_names) if file_names is not None else [f"{rng.bytes(8).hex()}.dcm" for _ in range(n_slices)]
    if len(names) != n_slices or len(set(names)) != n_slices:
        raise ValueError(f"need {n_slices} distinct file names, got {len(names)} ({len(set(names))} distinct)")

    stored = (hu.astype(np.int32) + UNSIGNED_OFFSET).astype("<u2") if storage == "unsigned" else hu.astype("<i2")

    paths = []
    for k in range(n_slices):
        position = origin + k * sz * normal
        instance = n_slices - k if descending_instances else k + 1
        sop_uid = generate_uid(entropy_srcs=[key, "sop", str(k)])
        ds = _slice_dataset(identity, study_uid, series_uid, frame_uid, sop_uid)
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows, y), column spacing (x)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        if storage == "unsigned":
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.RescaleIntercept = str(-UNSIGNED_OFFSET)
        else:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = out_dir / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def identity_dataset(identity: PatientIdentity, sop_class: str, sop_uid: str, *, image_type: list[str], modality: str,
                     model_name: str, study_description: str, series_description: str) -> FileDataset:
    """A dataset with file meta, the fake identity (patient module), dates and equipment: what every demo
    image (CT slice, radiograph) shares; the caller adds its modality's attributes and pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = image_type
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = identity.study_time
    ds.AccessionNumber = identity.accession_number
    ds.Modality = modality
    ds.Manufacturer = "lungseg-demo"
    ds.ManufacturerModelName = model_name
    ds.InstitutionName = identity.institution_name
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    return ds


def _slice_dataset(identity: PatientIdentity, study_uid: str, series_uid: str, frame_uid: str, sop_uid: str) -> FileDataset:
    """The per-slice dataset with file meta, identity, study/series and acquisition attributes."""
    ds = identity_dataset(identity, CTImageStorage, sop_uid, image_type=["ORIGINAL", "PRIMARY", "AXIAL"], modality="CT",
                          model_name="synthetic phantom", study_description="CHEST CT",
                          series_description=identity.series_description)
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    return ds
