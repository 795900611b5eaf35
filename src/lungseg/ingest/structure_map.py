"""Structure names (RTSTRUCT ROI names, DICOM-SEG segment labels) -> lungseg labels and values.

A mapping is ``{label: patterns}`` or ``{label: {value: patterns}}`` (config key
``ingest.structure_labels``); a plain list means value 1. Names and patterns are compared
case-insensitively after every run of characters other than letters, digits, ``*`` and ``?`` is
turned into one space, so ``Lung-Right``, ``Lung_Right`` and ``LUNG RIGHT`` are one name; patterns are
shell globs (``gtv*``). The first matching entry, in mapping order, wins.

:data:`DEFAULT_STRUCTURE_LABELS`: right lung -> ``lung`` 1, left lung -> ``lung`` 2 (lungseg's
convention), both lungs in one structure -> ``lung`` 1, any GTV -> ``tumour`` 1.

Overlaps: structures mapped to one value of a label are united. A structure that holds most of the
voxels of smaller structures of every value of its label is their union (``Lungs`` beside
``Lung-Right`` and ``Lung-Left``) and is left out with a note. Structures of different values of one
label may touch (overlap in at most :data:`TOUCH_FRACTION` of the smaller: the shared voxels go to the
lower value, noted); a larger overlap is refused (:func:`combine_structures`).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.ingest.errors import IngestError

CONFIG_KEY = "ingest.structure_labels"

Mapping = dict[str, dict[int, list[str]]]

DEFAULT_STRUCTURE_LABELS: Mapping = {
    "lung": {
        1: ["lung r", "lung right", "lung rt", "r lung", "right lung", "rt lung", "lungs r", "lungs right",
            "lung right total", "lung r total",
            # both lungs in one structure (a union beside sided ones is left out: see combine_structures)
            "lung", "lungs", "lung total", "lungs total", "total lung", "total lungs", "both lungs", "lungs both",
            "lung both"],
        2: ["lung l", "lung left", "lung lt", "l lung", "left lung", "lt lung", "lungs l", "lungs left",
            "lung left total", "lung l total"],
    },
    "tumour": {1: ["gtv*"]},
}

#: overlap (fraction of the smaller structure) below which two values of one label may touch
TOUCH_FRACTION = 0.001
#: a structure holding more than this fraction of the voxels of smaller ones of every value of its label is their union
UNION_FRACTION = 0.5


def normalise(name: str) -> str:
    """Lower case, every run of other characters than letters, digits, ``*``, ``?`` -> one space."""
    return re.sub(r"[^0-9a-z*?]+", " ", name.lower()).strip()


def parse_mapping(mapping: dict | str | None) -> Mapping | None:
    """A mapping from config (dict, or its JSON text): ``{label: [patterns]}`` or ``{label: {value: [patterns]}}``."""
    if mapping is None or mapping == {} or mapping == "":
        return None
    if isinstance(mapping, str):
        mapping = json.loads(mapping)
    out: Mapping = {}
    for label, entry in mapping.items():
        values = entry if isinstance(entry, dict) else {1: entry}
        out[str(label)] = {}
        for value, patterns in values.items():
            if isinstance(patterns, str):
                patterns = [patterns]
            if not str(value).isdigit() or not 1 <= int(value) <= 255:
                raise ValueError(f"{CONFIG_KEY}: label {label!r} has value {value!r}; values are integers 1..255")
            out[str(label)][int(value)] = [str(p) for p in patterns]
    return out


def match(name: str, mapping: Mapping) -> tuple[str, int] | None:
    """The (label, value) a structure name maps to, or None."""
    key = normalise(name)
    for label, values in mapping.items():
        for value, patterns in values.items():
            if any(fnmatch.fnmatchcase(key, normalise(p)) for p in patterns):
                return label, value
    return None


@dataclass
class Structure:
    """One named structure on the scan grid: a bool mask cropped to its bounding box at ``offset`` (z, y, x)."""

    name: str
    label: str
    value: int
    mask: np.ndarray  # bool, the box's (z, y, x) extent
    offset: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def cropped(cls, name: str, label: str, value: int, full: np.ndarray) -> Structure:
        """From a mask of the whole grid (cropped to its nonzero box; an empty one to an empty box)."""
        if not full.any():
            return cls(name, label, value, np.zeros((0, 0, 0), dtype=bool))
        lo, hi = zip(*(np.flatnonzero(full.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)))
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
        return cls(name, label, value, full[box], tuple(int(v) for v in lo))

    @property
    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def shared(self, other: Structure) -> int:
        """Voxels in both structures."""
        lo = [max(a.start, b.start) for a, b in zip(self.box, other.box)]
        hi = [min(a.stop, b.stop) for a, b in zip(self.box, other.box)]
        if any(h <= low for low, h in zip(lo, hi)):
            return 0
        mine = self.mask[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, self.offset))]
        theirs = other.mask[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, other.offset))]
        return int(np.count_nonzero(mine & theirs))


def assign(names: list[str], mapping: Mapping | None, path: Path, kind: str) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """Which structure names map to which (label, value); notes on those ignored.

    With the default mapping, names matching nothing are listed in the notes, and a file where no name
    matches is refused. With a mapping given, every (label, value) it names must match some structure.
    """
    table = mapping or DEFAULT_STRUCTURE_LABELS
    assigned = {n: hit for n in names if (hit := match(n, table)) is not None}
    ignored = sorted(set(names) - set(assigned))
    present = ", ".join(repr(n) for n in names) or "none"
    if mapping is not None:
        missing = [f"{label} {value}" for label, values in mapping.items() for value in values
                   if (label, value) not in assigned.values()]
        if missing:
            raise IngestError(
                path,
                f"has no {kind} matching {', '.join(missing)} of {CONFIG_KEY} (its {kind}s: {present})",
                f"set {CONFIG_KEY} to name its {kind}s (patterns, case-insensitive)",
            )
    elif not assigned:
        raise IngestError(
            path,
            f"has no {kind} lungseg knows (its {kind}s: {present})",
            f"map them to labels in {CONFIG_KEY}, e.g. {{lung: {{1: [right lung name], 2: [left lung name]}}}}",
        )
    notes = [f"{kind}s ignored (not in {CONFIG_KEY}): {', '.join(ignored)}"] if ignored else []
    return assigned, notes


def combine_structures(
    structures: list[Structure], shape: tuple[int, int, int], path: Path, kind: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """One uint8 (z, y, x) volume per label from its structures (see the module docstring for overlaps)."""
    notes: list[str] = []
    labels: dict[str, np.ndarray] = {}
    for label in dict.fromkeys(s.label for s in structures):
        members = [s for s in structures if s.label == label]
        if len({s.value for s in members}) > 1:
            members = _drop_unions(members, notes, kind)
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a.value == b.value or not (shared := a.shared(b)):
                    continue
                low, high = sorted((a, b), key=lambda s: s.value)
                if shared > TOUCH_FRACTION * min(a.voxels, b.voxels):
                    raise IngestError(
                        path,
                        f"{kind}s {low.name} ({label} {low.value}) and {high.name} ({label} {high.value}) "
                        f"overlap in {shared} voxels",
                        f"map only one of them to {label} in {CONFIG_KEY}, or fix the {kind}s",
                    )
                notes.append(f"{label}: {shared} voxel(s) shared by {low.name} and {high.name} ({kind}s touch), "
                             f"given to {label} {low.value}")
        volume = np.zeros(shape, dtype=np.uint8)
        for s in sorted(members, key=lambda s: -s.value):  # the lower value painted last: it keeps shared voxels
            np.copyto(volume[s.box], np.uint8(s.value), where=s.mask)
        labels[label] = volume
    return labels, notes


def _drop_unions(members: list[Structure], notes: list[str], kind: str) -> list[Structure]:
    """Leave out each structure holding most of smaller ones of every value of its label (``Lungs`` beside both lungs)."""
    sizes = [s.voxels for s in members]
    values = {s.value for s in members}
    keep = []
    for i, s in enumerate(members):
        held = [t for j, t in enumerate(members) if j != i and sizes[j] < sizes[i] and s.shared(t) > UNION_FRACTION * sizes[j]]
        if {t.value for t in held} == values:
            notes.append(f"{kind} {s.name} left out: it holds {', '.join(t.name for t in held)} (a union of them)")
        else:
            keep.append(s)
    return keep
