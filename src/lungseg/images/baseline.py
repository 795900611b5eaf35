"""The classical lung mask of a radiograph (the X-ray baseline ``classical_radiograph_otsu``).

A deliberately plain recipe, so that a trained network has something honest to beat: Otsu threshold
of the normalised image (lungs are dark: low attenuation), dark regions touching the image border
removed (air outside the body, collimator edges), the two largest remaining regions kept (each at
least 1 % of the image), holes filled, and a small opening. Sides by the image half the region's
centre lies in: the image's left half is the patient's right (a PA radiograph seen as usual, which
is also the identity direction of a 2-D case: column index grows towards the patient's left), so
1 = right, 2 = left. It knows nothing of the heart, the diaphragm or the lung behind them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

#: smallest region kept, as a fraction of the image
MIN_FRACTION = 0.01


def radiograph_lung_mask(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """uint8 (H, W) mask 0 / 1 right / 2 left of a normalised radiograph (bright = dense), and notes."""
    image = np.asarray(image, dtype=np.float32)
    notes: list[str] = []
    if image.max() <= image.min():
        return np.zeros(image.shape, np.uint8), ["constant image: no lung found"]
    dark = image < threshold_otsu(image)
    labels, n = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = np.isin(labels, border[border > 0], invert=True) & (labels > 0)
    labels, n = ndimage.label(inside)
    if n == 0:
        return np.zeros(image.shape, np.uint8), ["no dark region inside the body: no lung found"]
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = [k + 1 for k in np.argsort(sizes)[::-1][:2] if sizes[k] >= MIN_FRACTION * image.size]
    if len(keep) < 2:
        notes.append(f"{len(keep)} lung-sized dark region(s) found, not 2")
    mask = np.zeros(image.shape, np.uint8)
    half = image.shape[1] / 2
    for k in keep:
        region = ndimage.binary_fill_holes(labels == k)
        region = ndimage.binary_opening(region, iterations=2)
        centre_x = float(np.nonzero(region)[1].mean()) if region.any() else half
        mask[region] = 1 if centre_x < half else 2
    return mask, notes
