"""2-D image datasets: a folder layout or a sheet -> case sheet rows + a skipped table.

Layouts (``layout="auto"`` tries them in this order):

``left_right``      an image folder and two mask folders whose names contain ``right`` and ``left``
                    (e.g. ``CXR_png/``, ``ManualMask/rightMask/``, ``ManualMask/leftMask/``): the two masks of an
                    image are combined into one label (1 right, 2 left) at ingest;
``paired_folders``  an image folder (``images``, ``image``, ``imgs``, ``img``, ``CXR_png``, ``x``, ...) and a mask
                    folder (``masks``, ``mask``, ``labels``, ``label``, ``y``, ``gt``, ...): a mask belongs to the image
                    with the same stem, or the stem plus a mask suffix;
``class_folders``   images with their masks beside them (``NAME.png`` + ``NAME_mask.png``, ``NAME_mask_1.png`` ...):
                    the folder below the root is the ``class`` column (empty for files directly in the root);
                    several masks of one image are combined (their union) at ingest.

A mask suffix is, unless ``mask_suffix`` gives one (e.g. ``_mask``), an optional separator (space, ``_``, ``-``,
``.``) and ``mask``, ``seg``, ``label`` or ``gt`` (any case), optionally followed by a number. A sheet (CSV or TSV)
instead of a folder has an ``image`` column and mask columns ``mask`` (or ``mask_1``, ``mask_2`` ..., all
combined) or ``mask_right`` + ``mask_left``, optionally ``class`` and a patient column; relative paths are
relative to the sheet's folder.

Case sheet rows: ``case_id`` (``i`` + 12 hex of a keyed hash of the image path below the root), ``patient_id``
(``p`` + 12 hex of a keyed hash of the patient: from the sheet's patient column or the named group ``patient``
of ``patient_pattern`` matched against the image path below the root; without either, one per image),
``patient_from`` (``column``, ``pattern`` or ``image``: the split cannot keep one patient's images together),
``dicom`` (the image file: the one scan column of every case sheet), ``class``, ``label_<label>`` (+
``label_<label>_partN``, ``label_<label>_right`` / ``_left``). Skipped rows (``path``, ``reason``): an image
without a mask, a mask without an image, an image with one side only, a duplicate stem, a 3-D volume.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lungseg.images.formats import IMAGE_SUFFIXES, MASK_SUFFIXES
from lungseg.ingest.errors import IngestError
from lungseg.ingest.pseudonym import keyed_hash, patient_pseudonym

LAYOUTS = ("auto", "paired_folders", "class_folders", "left_right")
IMAGE_DIRS = ("images", "image", "imgs", "img", "cxr_png", "x", "inputs", "input", "originals", "png")
MASK_DIRS = ("masks", "mask", "labels", "label", "manualmask", "y", "gt", "ground_truth", "groundtruth",
             "annotations", "segmentations", "lung masks", "lung_masks")
AUTO_MASK_SUFFIX = r"[ _.-]?(?:masks?|seg|segmentation|labels?|gt)"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SKIPPED_COLUMNS = ("path", "reason")


@dataclass
class ImageSheet:
    cases: list[dict[str, str]]
    skipped: list[dict[str, str]]
    layout: str
    #: one line each, for the log (e.g. no patient grouping)
    warnings: list[str] = field(default_factory=list)


@dataclass
class LayoutOptions:
    layout: str = "auto"
    label: str = "lung"
    mask_suffix: str | None = None  #: literal suffix after the image stem (e.g. "_mask"); None: any mask-like suffix
    image_dir: str | None = None  #: folder below the root; None: found by name
    mask_dir: str | None = None
    right_dir: str | None = None
    left_dir: str | None = None
    patient_pattern: str | None = None  #: regex with a named group ``patient``, matched on the path below the root
    patient_column: str | None = None  #: sheet column of the patient (default: ``patient`` if present)


@dataclass
class _Found:
    images: dict[tuple[str, str], Path]  # (folder below root, stem) -> image
    masks: dict[tuple[str, str], dict[str, Path]] = field(default_factory=lambda: defaultdict(dict))  # -> column -> mask
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: the dataset has masks: an image without one is skipped (else images are kept, class only)
    expects_masks: bool = True


def _suffix_pattern(options: LayoutOptions) -> re.Pattern:
    suffix = re.escape(options.mask_suffix) if options.mask_suffix is not None else AUTO_MASK_SUFFIX
    return re.compile(rf"^(?P<base>.+?)(?P<suffix>{suffix})(?:[ _-]?\(?(?P<n>\d+)\)?)?$", re.IGNORECASE)


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _files(folder: Path, recursive: bool = True) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.is_file() and not p.name.startswith("."))


def _is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _child(root: Path, names: tuple[str, ...], given: str | None) -> Path | None:
    if given is not None:
        folder = root / given
        if not folder.is_dir():
            raise IngestError(folder, "is not a folder", "check the folder names in the images settings")
        return folder
    by_name = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((by_name[n] for n in names if n in by_name), None)


def _side_dirs(root: Path, options: LayoutOptions) -> tuple[Path | None, Path | None]:
    if options.right_dir or options.left_dir:
        return _child(root, (), options.right_dir or "-"), _child(root, (), options.left_dir or "-")
    right = left = None
    for folder in sorted(p for p in root.rglob("*") if p.is_dir() and len(p.relative_to(root).parts) <= 2):
        name = folder.name.lower()
        if "right" in name and "left" not in name:
            right = right or folder
        elif "left" in name and "right" not in name:
            left = left or folder
    return right, left


def _note_other(path: Path, skipped: list[dict[str, str]]) -> None:
    if _is_volume(path):
        skipped.append({"path": str(path), "reason": "a 3-D volume in a 2-D image dataset (give volumes with source: cases)"})


def _collect_images(folder: Path, root: Path, found: _Found, exclude: set[Path]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for path in _files(folder):
        if any(path.is_relative_to(e) for e in exclude):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            _note_other(path, found.skipped)
            continue
        key = ("", _stem(path))
        if key in seen:
            reason = f"same stem as {seen[key]}: which mask belongs to which is unclear"
            found.skipped.append({"path": str(path), "reason": reason})
            continue
        seen[key] = path
    found.images.update(seen)


def _attach_masks(folder: Path, found: _Found, pattern: re.Pattern, column: str, group: str = "") -> None:
    """Masks of ``folder`` (any depth) -> the image of the same stem, or of the stem less a mask suffix."""
    numbered: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
    for path in _files(folder):
        if path.suffix.lower() not in MASK_SUFFIXES:
            _note_other(path, found.skipped)
            continue
        stem = _stem(path)
        match = pattern.match(stem)
        if (group, stem) in found.images:
            numbered[(group, stem)].append((-1, path))
        elif match and (group, match["base"]) in found.images:
            numbered[(group, match["base"])].append((int(match["n"]) if match["n"] else -1, path))
        else:
            found.skipped.append({"path": str(path), "reason": "mask without image (no image of this stem)"})
    for key, masks in numbered.items():
        for k, (_, path) in enumerate(sorted(masks)):
            found.masks[key][column if k == 0 else f"{column}_part{k}"] = path


def _beside(root: Path, options: LayoutOptions) -> _Found:
    """class_folders: images and masks in the same folders; the folder below the root is the class."""
    pattern = _suffix_pattern(options)
    found = _Found({})
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in _files(root):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_folder[path.parent].append(path)
        else:
            _note_other(path, found.skipped)
    column = f"label_{options.label}"
    for folder, paths in sorted(by_folder.items()):
        group = str(folder.relative_to(root))
        stems = {_stem(p) for p in paths}
        masks = []
        for path in paths:
            match = pattern.match(_stem(path))
            if match and path.suffix.lower() in MASK_SUFFIXES:
                masks.append(path)
            elif (group, _stem(path)) in found.images:
                found.skipped.append({"path": str(path), "reason": "same stem as another image in this folder"})
            else:
                found.images[(group, _stem(path))] = path
        numbered: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
        for path in masks:
            match = pattern.match(_stem(path))
            base = match["base"]
            if base in stems and (group, base) in found.images:
                numbered[(group, base)].append((int(match["n"]) if match["n"] else -1, path))
            else:
                found.skipped.append({"path": str(path), "reason": "mask without image (no image of this stem beside it)"})
        for key, items in numbered.items():
            for k, (_, path) in enumerate(sorted(items)):
                found.masks[key][column if k == 0 else f"{column}_part{k}"] = path
    found.expects_masks = bool(found.masks) or any(r["reason"].startswith("mask without") for r in found.skipped)
    return found


def _detect(root: Path, options: LayoutOptions) -> str:
    if options.layout != "auto":
        return options.layout
    image_dir = _child(root, IMAGE_DIRS, options.image_dir)
    right, left = _side_dirs(root, options)
    if image_dir is not None and right is not None and left is not None:
        return "left_right"
    if image_dir is not None and _child(root, MASK_DIRS, options.mask_dir) is not None:
        return "paired_folders"
    return "class_folders"


def _find(root: Path, layout: str, options: LayoutOptions) -> _Found:
    if layout == "class_folders":
        return _beside(root, options)
    image_dir = _child(root, IMAGE_DIRS, options.image_dir)
    if image_dir is None:
        raise IngestError(root, f"has no image folder ({', '.join(IMAGE_DIRS[:6])} ...) for layout {layout}",
                          "name it in images.image_dir (lungseg image-sheet --image-dir)")
    found = _Found({})
    pattern = _suffix_pattern(options)
    if layout == "paired_folders":
        mask_dir = _child(root, MASK_DIRS, options.mask_dir)
        if mask_dir is None:
            raise IngestError(root, "has no mask folder (masks, labels, y, gt ...)",
                              "name it in images.mask_dir (lungseg image-sheet --mask-dir)")
        _collect_images(image_dir, root, found, {mask_dir})
        _attach_masks(mask_dir, found, pattern, f"label_{options.label}")
        return found
    right, left = _side_dirs(root, options)
    if right is None or left is None:
        raise IngestError(root, "has no right and left mask folders for layout left_right",
                          "name them in images.right_dir / images.left_dir")
    _collect_images(image_dir, root, found, {right, left})
    _attach_masks(right, found, pattern, f"label_{options.label}_right")
    _attach_masks(left, found, pattern, f"label_{options.label}_left")
    for key, masks in list(found.masks.items()):
        sides = {c.rsplit("_", 1)[-1] for c in masks if c.endswith(("_right", "_left"))}
        if sides != {"right", "left"}:
            missing = ({"right", "left"} - sides).pop()
            found.skipped.append({"path": str(found.images[key]), "reason": f"image without a {missing} mask"})
            del found.masks[key]
            found.images.pop(key)
    return found


def _patient(rel: str, options: LayoutOptions, pattern: re.Pattern | None, column_value: str | None) -> tuple[str, str]:
    if column_value:
        return column_value, "column"
    if pattern is not None:
        match = pattern.search(rel)
        if match and match.group("patient"):
            return match.group("patient"), "pattern"
    return f"<image>:{rel}", "image"


def _compile_patient_pattern(text: str | None) -> re.Pattern | None:
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise IngestError("images.patient_pattern", f"is not a valid regular expression ({exc})",
                          "give a Python regex with a named group, e.g. '(?P<patient>[0-9]+)_'") from None
    if "patient" not in pattern.groupindex:
        raise IngestError("images.patient_pattern", f"{text!r} has no named group 'patient'",
                          "write the patient part as (?P<patient>...)")
    return pattern


def _rows(found: _Found, root: Path, options: LayoutOptions, secret: str, with_class: bool,
          patients: dict[tuple[str, str], str] | None = None, classes: dict[tuple[str, str], str] | None = None,
          ) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    pattern = _compile_patient_pattern(options.patient_pattern)
    need_masks = found.expects_masks
    cases, skipped, sources = [], list(found.skipped), set()
    for key, image in sorted(found.images.items()):
        masks = found.masks.get(key, {})
        if need_masks and not masks:
            skipped.append({"path": str(image), "reason": "image without mask"})
            continue
        rel = image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)
        patient, source = _patient(rel, options, pattern, (patients or {}).get(key))
        sources.add(source)
        row = {
            "case_id": "i" + keyed_hash(secret, "image", rel)[:12],
            "patient_id": patient_pseudonym(secret, patient),
            "patient_from": source,
            "dicom": str(image),
            **{column: str(path) for column, path in masks.items()},
        }
        if with_class:
            row["class"] = (classes or {}).get(key, key[0] if key[0] != "." else "")
        cases.append(row)
    warnings = []
    if "image" in sources:
        n = sum(row["patient_from"] == "image" for row in cases)
        warnings.append(f"{n} of {len(cases)} image(s) have no patient (no patient column or pattern match): each counts as "
                        "its own patient, so images of one patient may land in different splits; set images.patient_pattern")
    return cases, skipped, warnings


def _read_sheet(path: Path, options: LayoutOptions) -> tuple[_Found, dict, dict, bool]:
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or ())
        rows = list(reader)
    if "image" not in columns:
        raise IngestError(path, f"has no 'image' column (columns: {', '.join(columns)})",
                          "name the column of image paths 'image' (masks: 'mask', 'mask_1' ... or 'mask_right' + 'mask_left')")
    patient_column = options.patient_column or ("patient" if "patient" in columns else None)
    if patient_column and patient_column not in columns:
        raise IngestError(path, f"has no patient column {patient_column!r}", "give an existing column as images.patient_column")
    mask_columns = [c for c in columns if c == "mask" or c.startswith("mask_")]
    found, patients, classes = _Found({}), {}, {}
    base = path.parent
    for line, row in enumerate(rows, start=2):
        image = base / (row["image"] or "").strip()
        key = ("", f"{line}:{row['image']}")
        if not (row["image"] or "").strip() or not image.is_file():
            found.skipped.append({"path": str(image), "reason": f"image not found (sheet line {line})"})
            continue
        masks = {}
        for column in mask_columns:
            value = (row[column] or "").strip()
            if not value:
                continue
            mask = base / value
            if not mask.is_file():
                found.skipped.append({"path": str(mask), "reason": f"mask not found (sheet line {line})"})
                continue
            suffix = column[len("mask"):]
            name = {"": "", "_right": "_right", "_left": "_left"}.get(suffix, f"_part{suffix.lstrip('_')}")
            masks[f"label_{options.label}{name}"] = mask
        if masks and f"label_{options.label}" not in masks and not any(c.endswith(("_right", "_left")) for c in masks):
            first = min(masks)
            masks[f"label_{options.label}"] = masks.pop(first)
        found.images[key] = image
        if masks:
            found.masks[key] = masks
        if patient_column:
            patients[key] = (row[patient_column] or "").strip()
        if "class" in columns:
            classes[key] = (row["class"] or "").strip()
    found.expects_masks = bool(mask_columns)
    return found, patients, classes, "class" in columns


def image_sheet(root: str | Path, secret: str, options: LayoutOptions | None = None) -> ImageSheet:
    """The cases of a 2-D image dataset (a folder in one of the layouts, or a CSV/TSV sheet; module docstring)."""
    options = options or LayoutOptions()
    root = Path(root)
    if options.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {options.layout!r}")
    if root.is_file():
        found, patients, classes, with_class = _read_sheet(root, options)
        cases, skipped, warnings = _rows(found, root.parent, options, secret, with_class, patients, classes)
        layout = "sheet"
    elif root.is_dir():
        layout = _detect(root, options)
        found = _find(root, layout, options)
        cases, skipped, warnings = _rows(found, root, options, secret, layout == "class_folders")
    else:
        raise IngestError(root, "does not exist", "give the dataset's top folder or its sheet (CSV/TSV)")
    seen: dict[str, str] = {}
    for row in cases:
        if row["case_id"] in seen:  # two sheet rows naming the same image
            raise IngestError(row["dicom"], "is listed twice", "give each image once")
        seen[row["case_id"]] = row["dicom"]
    if not cases:
        warnings.append(f"no cases found in {root} (layout {layout})")
    skipped.sort(key=lambda r: r["path"])
    return ImageSheet(sorted(cases, key=lambda r: r["case_id"]), skipped, layout, warnings)
