"""One 2-D image -> grey pixels with a normalised intensity (0..1000) and its pixel spacing.

Intensity (recorded in the case file as ``intensity = "normalised_0_1000"`` and ``intensity_mapping``):

* 8-bit data (PNG/JPEG/TIFF/GIF grey or colour, 8-bit DICOM without rescale): ``round(v * 1000 / 255)``,
  a fixed scale, so the same grey means the same value in every image;
* deeper data (16-bit PNG/TIFF, 10-16-bit DICOM after its Modality LUT and, by default, VOI LUT / window):
  min-max of the image to 0..1000 (the source range is recorded).

Bright always means dense (bone white, lungs dark): MONOCHROME1 DICOM is inverted after the mapping.
Colour images become grey by ITU-R 601 luma (Pillow's ``L`` conversion: 0.299 R + 0.587 G + 0.114 B);
an alpha channel is dropped. Pixel spacing comes from DICOM ``PixelSpacing`` (else ``ImagerPixelSpacing``);
other files, and DICOM without a usable one, get spacing 1.0 declared unknown (``spacing_known = 0``):
distances (HD95) of such cases are in pixels. A training window of ``[0, 1000]`` takes the whole
normalised range (``train.hu_window`` of an X-ray config).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungseg.images.formats import RASTER_SUFFIXES, is_dicom_file
from lungseg.ingest.errors import IngestError

#: the ``intensity`` attribute of a 2-D case (CT cases have Hounsfield units and no such attribute)
INTENSITY = "normalised_0_1000"
#: top of the normalised range
INTENSITY_MAX = 1000
#: DICOM modalities read as radiographs (projection images and other single-frame 2-D images)
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "MG", "XA", "RF", "IO", "PX", "OT", "SC", "US", "XC", "GM", ""}
#: how the VOI LUT / window of a DICOM image is treated
VOI_CHOICES = ("apply", "ignore")
_LUT8 = np.rint(np.arange(256, dtype=np.float64) * INTENSITY_MAX / 255.0).astype(np.int16)


@dataclass
class Radiograph:
    """A 2-D image read for ingest: ``pixels`` int16 (H, W) in 0..1000, bright = dense."""

    pixels: np.ndarray
    spacing: tuple[float, float] | None  #: (x, y) mm, None when unknown
    provenance: dict[str, str | int | float] = field(default_factory=dict)

    @property
    def spacing_xy(self) -> tuple[float, float]:
        return self.spacing or (1.0, 1.0)


def normalise(values: np.ndarray, eight_bit: bool) -> tuple[np.ndarray, str]:
    """``values`` (H, W) -> int16 0..1000 and the mapping as recorded (see the module docstring)."""
    if eight_bit:
        return _LUT8[np.asarray(values, dtype=np.uint8)], "8-bit: round(v * 1000 / 255)"
    values = np.asarray(values, dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.int16), f"min-max of the image (constant {lo:g}: all 0)"
    scaled = (values - lo) * np.float32(INTENSITY_MAX / (hi - lo))
    return np.rint(scaled).astype(np.int16), f"min-max of the image: {lo:g}..{hi:g} -> 0..1000"


def _frames_refused(path: Path, n: int) -> IngestError:
    return IngestError(path, f"holds {n} frames/slices, a 3-D image given to the 2-D image source",
                       "give a single 2-D image, or ingest the volume as a CT series/volume (source: cases)")


def _read_raster(path: Path) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            if n > 1:
                raise _frames_refused(path, n)
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "PA"):
                grey, converted = im.convert("L"), mode
            else:
                grey, converted = im, ""
            array = np.asarray(grey)
    except IngestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise IngestError(path, f"cannot be read as an image ({type(exc).__name__}: {exc}; truncated or not an image?)",
                          "re-export the image (PNG, JPEG, TIFF) or remove it from the dataset") from None
    if array.ndim != 2:
        raise IngestError(path, f"has pixel array of shape {array.shape}, not one grey or colour plane",
                          "give a single 2-D image")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    eight_bit = array.dtype == np.uint8
    pixels, mapping = normalise(array, eight_bit)
    provenance: dict[str, str | int | float] = {
        "image_format": path.suffix.lower().lstrip("."),
        "image_mode": mode,
        "intensity_mapping": mapping,
    }
    if converted:
        provenance["colour_to_grey"] = f"{converted} -> L (ITU-R 601 luma)"
    return Radiograph(pixels, None, provenance)


def _dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:  # noqa: ANN001 - pydicom Dataset
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (col, row), keyword  # PixelSpacing is (between rows = y, between columns = x)
    return None, "unknown"


def _read_dicom_dataset(path: Path):  # noqa: ANN202 - pydicom Dataset
    import pydicom
    from pydicom.errors import InvalidDicomError

    note = ""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, EOFError) as exc:
            raise IngestError(path, f"cannot be read as DICOM ({exc})", "give a valid DICOM file") from None
        note = "read without DICOM preamble/file meta (force)"
    except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
        raise IngestError(path, f"cannot be read as DICOM ({type(exc).__name__}: {exc}; truncated?)",
                          "re-export the file or remove it from the dataset") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        note = note or "no transfer syntax in the file: implicit VR little endian assumed"
    return ds, note


def _read_dicom(path: Path, voi: str) -> Radiograph:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds, note = _read_dicom_dataset(path)
    modality = str(ds.get("Modality", "") or "")
    if modality not in RADIOGRAPH_MODALITIES:
        raise IngestError(path, f"is a single {modality} slice, not a radiograph",
                          "give the folder of the whole series (a CT/MR slice belongs to a volume)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _frames_refused(path, frames)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise IngestError(path, f"is a colour DICOM image ({ds.get('PhotometricInterpretation', '?')})",
                          "give a grey-level radiograph")
    if "PixelData" not in ds:
        raise IngestError(path, "has no pixel data", "give the image itself, not a report or presentation state")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, OSError, EOFError) as exc:
        raise IngestError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})",
                          "re-export the image uncompressed, or install the decoder its transfer syntax needs") from None
    if stored.ndim != 2:
        raise _frames_refused(path, int(stored.shape[0]))
    values = apply_modality_lut(stored, ds)
    steps = ["modality LUT" if "ModalityLUTSequence" in ds else "rescale" if "RescaleSlope" in ds else "stored values"]
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if voi == "apply" and has_voi:
        values = apply_voi_lut(values, ds, index=0)
        steps.append("VOI LUT" if "VOILUTSequence" in ds else "window")
    elif has_voi:
        steps.append("VOI LUT/window ignored")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    eight_bit = int(ds.get("BitsStored", 8) or 8) <= 8 and steps == ["stored values"] and stored.dtype == np.uint8
    pixels, mapping = normalise(values, eight_bit)
    if photometric == "MONOCHROME1":
        pixels = (INTENSITY_MAX - pixels).astype(np.int16)
        steps.append("MONOCHROME1 inverted")
    spacing, spacing_source = _dicom_spacing(ds)
    provenance: dict[str, str | int | float] = {
        "image_format": "dicom",
        "modality": modality,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "dicom_pixel_steps": ", ".join(steps),
        "intensity_mapping": mapping,
        "spacing_source": spacing_source,
    }
    if str(ds.get("PresentationIntentType", "")):
        provenance["presentation_intent"] = str(ds.PresentationIntentType)
    if note:
        provenance["dicom_read_note"] = note
    return Radiograph(pixels, spacing, provenance)


def read_image(path: str | Path, *, voi: str = "apply") -> Radiograph:
    """Read one 2-D image (see the module docstring); bad input raises one :class:`IngestError`."""
    path = Path(path)
    if voi not in VOI_CHOICES:
        raise ValueError(f"voi must be one of {VOI_CHOICES}, got {voi!r}")
    if not path.is_file():
        raise IngestError(path, "does not exist" if not path.exists() else "is not a file", "check the image path")
    if path.suffix.lower() in RASTER_SUFFIXES:
        image = _read_raster(path)
    elif is_dicom_file(path):
        image = _read_dicom(path, voi)
    else:
        raise IngestError(path, "is not a 2-D image file", f"give one of {', '.join(RASTER_SUFFIXES)} or a DICOM radiograph")
    image.provenance.update(intensity=INTENSITY, spacing_known=int(image.spacing is not None))
    image.provenance.setdefault("spacing_source", "unknown")
    return image
