"""The names of the classical lung-mask methods, their deprecated old names, and the baseline name they
get in the metrics: the one source of truth for ``lung_mask.method``, ``lungseg lung-mask --method``,
the workflow's baseline and the report.

* ``threshold_3d``: lungseg's own 3-D method (air threshold, body and outside air, airway removal,
  right / left split, closing along the pleura; :mod:`lungseg.lungmask.default`); labels 1 right, 2 left.
* ``per_slice_otsu``: the per-slice Otsu threshold / erosion / closing / hole-filling recipe of Chi et
  al., "The Early Diagnosis of Lung Cancer Based on Soft Parameter Sharing of Transfer Learning"
  (:mod:`lungseg.lungmask.seed001`); label 1 lung.

The old names ``default`` and ``seed001`` are accepted for one release: :func:`resolve_method` maps
them to the new ones, and :func:`deprecation_note` is the one line the workflow and the CLI print.
In the metrics the classical mask is the baseline ``classical_<method>`` (before: ``lungmask_<method>``,
still recognised as a baseline when reading older metrics tables).
"""

from __future__ import annotations

import sys
import warnings

#: method name -> what it is (CLI help, schema description)
METHODS = {
    "threshold_3d": "lungseg's 3-D method (air threshold, body, airway removal, right/left split, pleural closing); "
                    "1 right, 2 left lung",
    "per_slice_otsu": "per-slice Otsu threshold, erosion, closing and hole filling (Chi et al.); 1 lung",
}
#: deprecated old name -> new name (accepted until the next release)
DEPRECATED_METHODS = {"default": "threshold_3d", "seed001": "per_slice_otsu"}
#: the method the workflow and the CLI use when none is given
DEFAULT_METHOD = "threshold_3d"
#: the baseline method name the metrics give the classical lung mask: ``classical_<method>``
BASELINE_PREFIX = "classical_"
#: the prefix before; still a baseline when reading older metrics tables (and not an experiment name)
LEGACY_BASELINE_PREFIX = "lungmask_"


def deprecation_note(name: str, where: str = "lung_mask.method") -> str:
    """The one-line warning for a deprecated method name (``where``: the key or option that gave it)."""
    return (f"lungseg: warning: {where} {name!r} is deprecated, use {DEPRECATED_METHODS[name]!r} "
            "(the old name is accepted until the next release)")


def resolve_method(name: str, where: str | None = None) -> str:
    """The current name of lung-mask method ``name``; a deprecated name is mapped and, with ``where`` (a
    config key or CLI option), one warning line is printed to stderr, else a DeprecationWarning is raised."""
    if name in METHODS:
        return name
    if name in DEPRECATED_METHODS:
        if where is None:
            warnings.warn(deprecation_note(name, "lung-mask method").removeprefix("lungseg: warning: "),
                          DeprecationWarning, stacklevel=2)
        else:
            print(deprecation_note(name, where), file=sys.stderr)
        return DEPRECATED_METHODS[name]
    raise ValueError(f"unknown lung-mask method {name!r}; choose one of {', '.join(METHODS)}")


def baseline_name(method: str) -> str:
    """The method name of the classical mask in the metrics: ``classical_threshold_3d``."""
    return BASELINE_PREFIX + (DEPRECATED_METHODS.get(method, method))
