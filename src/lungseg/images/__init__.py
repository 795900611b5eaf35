"""2-D image datasets as cases: chest radiographs (PNG, JPEG, TIFF, DICOM CR/DX) and their masks.

* :mod:`~lungseg.images.formats`: which files are 2-D images;
* :mod:`~lungseg.images.read`: one image -> grey pixels, intensity normalised to 0..1000, pixel spacing;
* :mod:`~lungseg.images.masks`: mask files (0/255, 0/1, palette, black/white RGB) -> labels, sides combined;
* :mod:`~lungseg.images.case`: one image + masks -> a one-slice :class:`~lungseg.casefile.CaseVolume`;
* :mod:`~lungseg.images.layouts`: a folder layout or a sheet -> case sheet + skipped table (``lungseg image-sheet``);
* :mod:`~lungseg.images.baseline`: the classical radiograph lung mask (``lungseg image-lung-mask``);
* :mod:`~lungseg.images.write`: a predicted mask as PNG in the image's own pixel grid.
"""

from lungseg.images.case import ingest_image
from lungseg.images.formats import IMAGE_SUFFIXES, is_image_file
from lungseg.images.read import INTENSITY, Radiograph, read_image

__all__ = ["IMAGE_SUFFIXES", "INTENSITY", "Radiograph", "ingest_image", "is_image_file", "read_image"]
