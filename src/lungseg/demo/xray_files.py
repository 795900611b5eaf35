"""Write the chest X-ray demo: PNG images + mask folders, a few DICOM DX files, and a patient sheet.

Layout under ``out``::

    images/<case>.png          8-bit grey radiograph (pHYs: the pixel size at the patient)
    masks/<case>_mask.png      both lungs, 0 / 255 (the image-folder + mask-folder layout of public sets)
    labels/<case>.png          0 background, 1 right lung, 2 left lung (lungseg's own label values)
    dicom/<case>.dcm           every ``dicom_every``-th case also as a DICOM DX (Digital X-Ray Image
                               Storage - For Presentation, 12 bits stored); every other one of them
                               MONOCHROME1 (stored inverted: high values dark, as many DR systems write)
    patients.tsv               case_id, patient_id, image, mask, labels, dicom, scanner, opacities, pixel_mm

The DICOM files carry the demo's fake identity (name, ID, birth date, accession, institution) so that
de-identification can be checked; nothing identifying is written anywhere else. Files are written
atomically; the same seed gives byte-identical PNG and DICOM files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from lungseg.atomic import atomic_path
from lungseg.demo.cohort import _digest
from lungseg.demo.dicom_writer import identity_dataset
from lungseg.demo.radiograph import Radiograph

SHEET_COLUMNS = ("case_id", "patient_id", "image", "mask", "labels", "dicom", "scanner", "opacities", "pixel_mm")
MAGNIFICATION = 1.1  # a PA chest film at 180 cm: the detector's pixel / the pixel at the patient


def xray_case_ids(n: int) -> list[str]:
    """``["cxr001", "cxr002", ...]`` (``n`` ids)."""
    return [f"cxr{i:03d}" for i in range(1, n + 1)]


def patient_id(case_id: str, seed: int) -> str:
    """A pseudonymous patient id of the demo (one radiograph per patient)."""
    return f"pat-{_digest('xray-patient', seed, case_id) % 10**8:08d}"


def _save_png(array: np.ndarray, path: Path, pixel_mm: float | None = None) -> None:
    """An 8-bit grey PNG, written atomically; ``pixel_mm`` is recorded as the physical pixel size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if pixel_mm is None else {"dpi": (25.4 / pixel_mm, 25.4 / pixel_mm)}
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(tmp, format="PNG", **extra)


def write_radiograph_files(radiograph: Radiograph, out: Path, seed: int, dicom: bool, monochrome1: bool) -> dict[str, str]:
    """Write one case's files under ``out``; return its patients.tsv row (paths relative to ``out``)."""
    case = radiograph.case_id
    row = {"case_id": case, "patient_id": patient_id(case, seed), "image": f"images/{case}.png",
           "mask": f"masks/{case}_mask.png", "labels": f"labels/{case}.png", "dicom": "",
           "scanner": radiograph.scanner, "opacities": str(radiograph.opacities),
           "pixel_mm": f"{radiograph.pixel_mm:.4f}"}
    _save_png(radiograph.as_uint8(), out / row["image"], radiograph.pixel_mm)
    _save_png(np.where(radiograph.labels > 0, 255, 0), out / row["mask"])
    _save_png(radiograph.labels, out / row["labels"])
    if dicom:
        row["dicom"] = f"dicom/{case}.dcm"
        write_dx(radiograph, out / row["dicom"], seed, monochrome1)
    return row


def write_sheet(rows: list[dict[str, str]], path: Path) -> None:
    """The patient sheet (tab-separated, one row per case, :data:`SHEET_COLUMNS`)."""
    with atomic_path(path) as tmp:
        lines = ["\t".join(SHEET_COLUMNS)] + ["\t".join(row[c] for c in SHEET_COLUMNS) for row in rows]
        tmp.write_text("\n".join(lines) + "\n")


def write_dx(radiograph: Radiograph, path: Path, seed: int, monochrome1: bool) -> None:
    """The radiograph as a DICOM DX file (For Presentation, 12 bits stored, ImagerPixelSpacing)."""
    identity = radiograph.identity
    key = f"{_digest('xray-dicom', seed, radiograph.case_id):016x}"
    sop_uid = generate_uid(entropy_srcs=[key, "sop"])
    ds = identity_dataset(identity, DigitalXRayImageStorageForPresentation, sop_uid, image_type=["ORIGINAL", "PRIMARY"],
                          modality="DX", model_name=f"synthetic radiograph {radiograph.scanner}",
                          study_description="CHEST PA", series_description="CHEST PA DEMO")
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.ImageLaterality = "U"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.KVP = "120"
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = f"{1800 / MAGNIFICATION:.1f}"
    ds.EstimatedRadiographicMagnificationFactor = f"{MAGNIFICATION:g}"
    ds.ImagerPixelSpacing = [f"{radiograph.pixel_mm * MAGNIFICATION:.6f}"] * 2
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = radiograph.image.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.DetectorType = "DIRECT"
    ds.BurnedInAnnotation = "NO"  # the side marker is no patient annotation
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    pixels = radiograph.image.astype("<u2")
    if monochrome1:  # stored inverted: high values = more X-ray intensity, shown dark
        ds.PhotometricInterpretation, ds.PresentationLUTShape, ds.PixelIntensityRelationshipSign = "MONOCHROME1", "INVERSE", 1
        pixels = (4095 - pixels).astype("<u2")
    else:
        ds.PhotometricInterpretation, ds.PresentationLUTShape, ds.PixelIntensityRelationshipSign = "MONOCHROME2", "IDENTITY", -1
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
