"""``lungseg diagnose``: the nodules of one study, found, measured and classified: a nodule list and an overlay.

1. **Segment**: the nodule segmentation model(s) (``--seg-model``; several = the mean of their probabilities,
   e.g. the folds of an experiment) run exactly as ``lungseg predict`` runs them (:class:`lungseg.api.Segmenter`:
   whole-slice or sliding-window models, the region of interest a model was trained on); mask = probability > 0.5.
2. **Split**: 26-connected 3-D components of the mask; components under ``--min-voxels`` voxels or
   ``--min-volume-mm3`` mm^3 are dropped. Nodules are numbered by decreasing volume (#1 is the largest).
3. **Measure**: centre = the mean position of the component's voxels in LPS mm (as the nodule table measures a
   labelled nodule); ``diameter_mm`` = equivalent-sphere diameter ``(6 V / pi)^(1/3)``; ``volume_mm3`` = voxels x
   voxel volume; ``axial_extent_mm`` = the longest in-plane distance between two voxel centres of the component on
   any one slice, plus one pixel; ``mean_seg_probability`` = the mean segmentation probability over its voxels.
   ``side`` (the patient's ``left`` or ``right``): LPS x grows towards the patient's left, so a centre whose x is
   above the midline is ``left``. The midline is the middle of the x extent of the case file's ``lung`` label when
   the study is a case file with one, else the middle of the x extent of the body (voxels above -500 HU);
   ``side_from`` in the JSON says which.
4. **Classify**: each centre's 2.5-D patch, cut by the code of ``lungseg nodule-patches``
   (:func:`lungseg.classification.patches.extract_patch`, ``--patch-mm`` / ``--patch-size``: give the values the
   classifier's training patches were cut with, the workflow's ``classification`` settings; defaults are
   ``nodule-patches``'), goes through the classifier(s) (``--cls-model``; several = the mean, the fold ensemble of
   :func:`lungseg.classification.predict.predict_probabilities`). ``at_edge``: the patch left the volume (padded).
5. **Write** ``OUT/nodules.tsv`` and ``OUT/nodules.json`` (:data:`COLUMNS`, then ``p_malignant`` and / or
   ``p_pathology_malignant`` per head of the classifier) and ``OUT/overlay.png`` (an axial slice through each of the
   largest nodules, contour and "#1 12 mm p=0.81"; "no nodules" when none was found).

No identifier leaves the study: the outputs name it by ``--name``, by default the pseudonym of a case file
(``.h5``) and ``study`` for a DICOM folder or a volume file (whose names may identify the patient).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from lungseg.atomic import write_text_atomic
from lungseg.classification.cli import SETTINGS as PATCH_SETTINGS
from lungseg.classification.patches import extract_patch
from lungseg.classification.predict import PROBABILITY_COLUMNS
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

log = logging.getLogger("lungseg.diagnose")
COLUMNS = ("study", "nodule", "centre_x_mm", "centre_y_mm", "centre_z_mm", "diameter_mm", "volume_mm3",
           "axial_extent_mm", "side", "mean_seg_probability", "at_edge")
#: voxels above this HU are body when no lung mask gives the midline
BODY_HU = -500
NEUTRAL_NAME = "study"
OVERLAY_NODULES = 4
OVERLAY_FOV_MM = 80.0


@dataclass
class DetectedNodule:
    """One 3-D component of the predicted nodule mask, measured (and, once classified, with its probabilities)."""

    nodule: int
    centre_mm: tuple[float, float, float]
    centre_index_zyx: tuple[float, float, float]
    voxels: int
    volume_mm3: float
    diameter_mm: float
    axial_extent_mm: float
    mean_seg_probability: float
    side: str = ""
    at_edge: bool = False
    probabilities: dict[str, float] = field(default_factory=dict)
    component: int = 0  # its label in the 26-connected labelling of the mask


def _axial_extent_mm(component: np.ndarray, spacing_xy: tuple[float, float]) -> float:
    """Longest in-plane distance between voxel centres of a (z, y, x) component on any slice, plus one pixel."""
    from scipy.spatial import ConvexHull, QhullError

    sx, sy = spacing_xy
    longest = 0.0
    for plane in component:
        ys, xs = np.nonzero(plane)
        if not len(ys):
            continue
        points = np.column_stack([xs * sx, ys * sy])
        if len(points) > 3:
            with contextlib.suppress(QhullError):  # collinear voxels: all points
                points = points[ConvexHull(points).vertices]
        distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        longest = max(longest, float(distances.max()))
    return longest + (sx + sy) / 2.0


def find_nodules(mask: np.ndarray, geometry: Geometry, probabilities: np.ndarray | None = None, min_voxels: int = 3,
                 min_volume_mm3: float = 0.0) -> list[DetectedNodule]:
    """The 26-connected components of ``mask`` (z, y, x) of at least ``min_voxels`` and ``min_volume_mm3``,
    measured (see the module docstring), numbered 1.. by decreasing volume."""
    components, n = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(geometry.spacing))
    found = []
    for number, box in enumerate(ndimage.find_objects(components, max_label=n), start=1):
        if box is None:
            continue
        component = components[box] == number
        count = int(component.sum())
        volume = count * voxel_mm3
        if count < min_voxels or volume < min_volume_mm3:
            continue
        index = [float(v.mean()) + b.start for v, b in zip(np.nonzero(component), box)]
        centre = tuple(float(v) for v in geometry.index_to_physical(np.asarray(index[::-1])))
        mean_p = float(probabilities[box][component].mean()) if probabilities is not None else 1.0
        found.append(DetectedNodule(0, centre, tuple(index), count, volume, (6.0 * volume / math.pi) ** (1.0 / 3.0),
                                    _axial_extent_mm(component, geometry.spacing[:2]), mean_p, component=number))
    found.sort(key=lambda d: (-d.voxels, d.centre_index_zyx))
    for i, nodule in enumerate(found, start=1):
        nodule.nodule = i
    return found


def _x_mm(points_zyx: tuple[np.ndarray, ...], geometry: Geometry) -> np.ndarray:
    """LPS x (mm) of voxel indices given as (z, y, x) index arrays."""
    row = geometry.direction_matrix[0] * np.asarray(geometry.spacing)
    return geometry.origin[0] + row[0] * points_zyx[2] + row[1] * points_zyx[1] + row[2] * points_zyx[0]


def midline_x_mm(hu: np.ndarray, geometry: Geometry, lung: np.ndarray | None = None) -> tuple[float, str]:
    """``(x, source)``: the LPS x of the patient's midline, the middle of the lung mask's x extent (``lung mask``)
    or, without a (non-empty) lung mask, of the body's (voxels above :data:`BODY_HU`; ``body centre``); a scan
    without body voxels gives the volume's centre (``volume centre``)."""
    for region, source in ((lung, "lung mask"), (hu[::2, ::2, ::2] > BODY_HU, "body centre")):
        if region is None:
            continue
        points = np.nonzero(region)
        if not len(points[0]):
            continue
        if source == "body centre":  # every other voxel: indices of the full grid
            points = tuple(2 * p for p in points)
        x = _x_mm(points, geometry)
        return float((x.min() + x.max()) / 2.0), source
    corners = np.array([[i, j, k] for i in (0, hu.shape[2] - 1) for j in (0, hu.shape[1] - 1) for k in (0, hu.shape[0] - 1)])
    return float(geometry.index_to_physical(corners)[:, 0].mean()), "volume centre"


def side_of(centre_x_mm: float, midline_x: float) -> str:
    """The patient's side of an LPS x: ``left`` above the midline (LPS x points to the patient's left)."""
    return "left" if centre_x_mm > midline_x else "right"


def nodule_patches(hu: np.ndarray, geometry: Geometry, nodules: Sequence[DetectedNodule], patch_mm: float,
                   patch_size: int) -> np.ndarray:
    """int16 (N, 3, S, S) patches of the nodules' centres, as ``lungseg nodule-patches`` cuts them; sets ``at_edge``."""
    patches = np.zeros((len(nodules), 3, patch_size, patch_size), dtype=np.int16)
    for i, nodule in enumerate(nodules):
        patches[i], nodule.at_edge = extract_patch(hu, geometry, nodule.centre_mm, patch_mm, patch_size)
    return patches


def diagnose_mask(hu: np.ndarray, geometry: Geometry, mask: np.ndarray, classifiers: Sequence[Any], cls_meta: dict,
                  probabilities: np.ndarray | None = None, lung: np.ndarray | None = None, *, min_voxels: int = 3,
                  min_volume_mm3: float = 0.0, patch_mm: float = PATCH_SETTINGS["patch_mm"],
                  patch_size: int = PATCH_SETTINGS["patch_size"]) -> tuple[list[DetectedNodule], str]:
    """Steps 2-4 on a given nodule mask: the measured, sided and classified nodules and the midline's source."""
    from lungseg.classification.predict import predict_probabilities

    nodules = find_nodules(mask, geometry, probabilities, min_voxels, min_volume_mm3)
    midline, source = midline_x_mm(hu, geometry, lung)
    for nodule in nodules:
        nodule.side = side_of(nodule.centre_mm[0], midline)
    patches = nodule_patches(hu, geometry, nodules, patch_mm, patch_size)
    if nodules:
        for head, p in predict_probabilities(list(classifiers), cls_meta, patches).items():
            for nodule, value in zip(nodules, p):
                nodule.probabilities[head] = float(value)
    return nodules, source


def rows(study: str, nodules: Sequence[DetectedNodule], heads: Sequence[str]) -> list[dict[str, Any]]:
    """One typed row per nodule: :data:`COLUMNS`, then each head's probability column."""
    out = []
    for n in nodules:
        row = {"study": study, "nodule": n.nodule, **{f"centre_{a}_mm": round(v, 2) for a, v in zip("xyz", n.centre_mm)},
               "diameter_mm": round(n.diameter_mm, 2), "volume_mm3": round(n.volume_mm3, 1),
               "axial_extent_mm": round(n.axial_extent_mm, 2), "side": n.side,
               "mean_seg_probability": round(n.mean_seg_probability, 4), "at_edge": n.at_edge}
        row.update({PROBABILITY_COLUMNS[h]: round(n.probabilities[h], 6) for h in heads})
        out.append(row)
    return out


def write_table(path: Path, table: list[dict[str, Any]], heads: Sequence[str]) -> None:
    """The nodule list as TSV (header even without nodules), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *(PROBABILITY_COLUMNS[h] for h in heads)], delimiter="\t",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in row.items()} for row in table)
    write_text_atomic(path, buffer.getvalue())


def caption(nodule: DetectedNodule, heads: Sequence[str]) -> str:
    """``#1 12 mm p=0.81`` (p: the image head's probability, else the pathology head's)."""
    head = "image" if "image" in heads else (heads[0] if heads else "")
    p = f" p={nodule.probabilities[head]:.2f}" if head in nodule.probabilities else ""
    return f"#{nodule.nodule} {nodule.diameter_mm:.0f} mm{p}"


def write_overlay(path: Path, hu: np.ndarray, geometry: Geometry, mask: np.ndarray, nodules: Sequence[DetectedNodule],
                  heads: Sequence[str], study: str, n_panels: int = OVERLAY_NODULES) -> list[str]:
    """Axial slices through the ``n_panels`` largest nodules (80 mm around each), their contours and captions;
    one mid-volume slice saying "no nodules" when there are none. The captions are also the PNG's ``Description``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lungseg.atomic import atomic_path
    from lungseg.report.overlay import WINDOW

    shown = list(nodules[:n_panels])
    captions = [f"{caption(n, heads)} {n.side}" for n in shown] or ["no nodules"]
    fig, axes = plt.subplots(1, len(captions), figsize=(3.0 * len(captions), 3.3), constrained_layout=True, squeeze=False)
    half = (OVERLAY_FOV_MM / 2 / geometry.spacing[1], OVERLAY_FOV_MM / 2 / geometry.spacing[0])
    components = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))[0] if shown else None
    for ax, text, nodule in zip(axes[0], captions, shown or [None]):
        if nodule is None:
            ax.imshow(hu[hu.shape[0] // 2], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
        else:
            z, y, x = (int(round(v)) for v in nodule.centre_index_zyx)
            rows_ = slice(max(0, int(y - half[0])), min(hu.shape[1], int(y + half[0]) + 1))
            cols = slice(max(0, int(x - half[1])), min(hu.shape[2], int(x + half[1]) + 1))
            ax.imshow(hu[z, rows_, cols], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest",
                      aspect=geometry.spacing[1] / geometry.spacing[0])
            own = components[z, rows_, cols] == nodule.component
            if own.any():
                ax.contour(own.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(text, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{study}: {len(nodules)} nodule(s)" if nodules else f"{study}: no nodules", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Description": "; ".join(captions)})
    plt.close(fig)
    return captions


def study_name(path: Path, case_id: str, name: str | None) -> str:
    """``name``, else a case file's pseudonym, else :data:`NEUTRAL_NAME` (a folder or file name may identify)."""
    if name:
        return name
    return case_id if path.suffix == ".h5" and case_id else NEUTRAL_NAME


def _case_lung(path: Path) -> np.ndarray | None:
    """The ``lung`` label of a case file, if it has one."""
    if path.suffix != ".h5":
        return None
    from lungseg.casefile import open_case

    with open_case(path) as f:
        return f["labels/lung"][()] if "labels" in f and "lung" in f["labels"] else None


def diagnose(study: str | Path, seg_models: Sequence[str | Path], cls_models: Sequence[str | Path],
             out_dir: str | Path | None = None, *, name: str | None = None, device: str = "cpu", batch_size: int = 16,
             min_voxels: int = 3, min_volume_mm3: float = 0.0, patch_mm: float = PATCH_SETTINGS["patch_mm"],
             patch_size: int = PATCH_SETTINGS["patch_size"]) -> list[dict[str, Any]]:
    """Segment, measure and classify the nodules of a study (DICOM folder, CT volume or case ``.h5``); write the
    nodule list and overlay into ``out_dir`` when given; return the rows (typed; see the module docstring)."""
    from lungseg.api import Segmenter, read_scan
    from lungseg.classification.predict import load_classifiers
    from lungseg.inference.predict import predict_probabilities

    study = Path(study)
    classifiers, cls_meta = load_classifiers(cls_models)  # fail fast on a wrong model, before reading the study
    segmenter = Segmenter(seg_models, device=device, batch_size=batch_size)
    for path, meta in zip(segmenter.model_paths, segmenter.metas):
        if meta.get("task") == "classification":
            raise IngestError(path, "is a classification model file", "pass a nodule segmentation model.pt as --seg-model")
    if segmenter.label not in ("nodule", ""):
        log.warning("the segmentation model(s) segment '%s', not 'nodule'", segmenter.label)
    scan = read_scan(study)
    label = study_name(study, scan.case_id, name)
    computed: dict[str, np.ndarray] = {}
    probabilities = predict_probabilities(segmenter.models, segmenter.metas, scan.hu, batch_size=batch_size,
                                          progress=False, roi_mask=segmenter._roi(scan, computed),
                                          spacing=scan.geometry.spacing)
    mask = (probabilities > 0.5).astype(np.uint8)  # what Segmenter.predict (and lungseg predict) writes
    heads = list(cls_meta["classification"]["heads"])
    nodules, side_from = diagnose_mask(scan.hu, scan.geometry, mask, classifiers, cls_meta, probabilities,
                                       _case_lung(study), min_voxels=min_voxels, min_volume_mm3=min_volume_mm3,
                                       patch_mm=patch_mm, patch_size=patch_size)
    table = rows(label, nodules, heads)
    if out_dir is not None:
        out = Path(out_dir)
        write_table(out / "nodules.tsv", table, heads)
        summary = {"study": label, "nodules": table, "side_from": side_from, "heads": heads,
                   "segmentation_models": len(segmenter.models), "classification_models": len(classifiers),
                   "min_voxels": min_voxels, "min_volume_mm3": min_volume_mm3, "patch_mm": patch_mm,
                   "patch_size": patch_size}
        write_text_atomic(out / "nodules.json", json.dumps(summary, indent=2) + "\n")
        write_overlay(out / "overlay.png", scan.hu, scan.geometry, mask, nodules, heads, label)
    log.info("%s: %d nodule(s) (%d segmentation, %d classification model(s); sides from the %s)", label, len(table),
             len(segmenter.models), len(classifiers), side_from)
    return table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("study", type=Path, help="DICOM series folder, CT volume (.nii.gz, .mha, .nrrd) or ingested case (.h5)")
    parser.add_argument("--seg-model", nargs="+", required=True, type=Path, metavar="M",
                        help="nodule segmentation model file(s) (model.pt of `lungseg train`); several: their mean")
    parser.add_argument("--cls-model", nargs="+", required=True, type=Path, metavar="C",
                        help="classification model file(s) (`lungseg train --task classification`); several: their mean")
    parser.add_argument("--out-dir", required=True, type=Path, metavar="D",
                        help="folder for nodules.tsv, nodules.json and overlay.png")
    parser.add_argument("--name", default=None, help="the study's name in the outputs (default: a case file's pseudonym, "
                                                     f"else '{NEUTRAL_NAME}'; never the folder or file name)")
    parser.add_argument("--min-voxels", type=int, default=3, metavar="N", help="drop components under N voxels (default: 3)")
    parser.add_argument("--min-volume-mm3", type=float, default=0.0, metavar="V",
                        help="drop components under V mm^3 (default: 0)")
    parser.add_argument("--patch-mm", type=float, default=PATCH_SETTINGS["patch_mm"], metavar="MM",
                        help="patch side in mm, as the classifier's training patches (default: %(default)s)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SETTINGS["patch_size"], metavar="S",
                        help="patch pixels per side, as the classifier's training patches (default: %(default)s)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE", help="torch device of the segmentation (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="slices per forward pass (default: 16)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    import torch

    from lungseg.inference.cli import resolve_device

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.min_voxels < 1 or args.batch_size < 1 or args.patch_size < 2 or not args.patch_mm > 0:
        raise SystemExit("lungseg diagnose: error: --min-voxels and --batch-size must be >= 1, --patch-size >= 2, "
                         "--patch-mm > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    diagnose(args.study, args.seg_model, args.cls_model, args.out_dir, name=args.name,
             device=str(resolve_device(args.device)), batch_size=args.batch_size, min_voxels=args.min_voxels,
             min_volume_mm3=args.min_volume_mm3, patch_mm=args.patch_mm, patch_size=args.patch_size)
    return 0
