"""Lung masks: quality against the demo cohort's ground truth, and speed against a raw DICOM read.

1. Quality (``--cases`` demo cases of 48 x 256 x 256 and ``--cases-512`` of 48 x 512 x 512, generated
   in memory from ``--seed``), for both methods:
   - Dice of the lung mask against the ground-truth lungs (binary, and per side for ``threshold_3d``)
   - nodule containment: fraction of ground-truth nodule voxels inside the mask, pooled over the
     cohort, per case, and for juxta-pleural nodules alone
2. Speed on 512 x 512 slices: demo cases written as DICOM series (``--speed-cases`` x 48 slices) and
   the real LIDC-IDRI slices in ``../shared/data`` when present. Pinned to one CPU core with every
   thread pool at 1 (OMP/MKL/OpenBLAS env vars set before numpy is imported, SimpleITK's global
   default), the readers and methods take turns on the same slices, best of ``--repeats``. The
   figure is slices per CPU second of this process (``time.process_time``, so other processes on a
   shared machine do not inflate it), wall rates beside it:
   - ``pydicom_raw`` (baseline): ``dcmread`` + ``pixel_array`` + HU (slope, intercept) per file
   - ``hdf5_read``: the same slices read from an ingested case file (what the workflow rule reads)
   - ``threshold_3d`` and ``per_slice_otsu``: the mask of the HU volume already in memory
   - ``per_slice_otsu_per_slice``: the per-slice Otsu recipe (Chi et al.) run slice by slice with
     skimage / scipy (its former implementation)
   Prints the ratio of each method to the raw read (the issue's bar: threshold_3d >= 200 slices/s per
   core and >= 0.5x the raw read).
3. Clinical contours (``../shared/data/nsclc-radiomics``: planning CTs with an RTSTRUCT, rasterised by
   :func:`lungseg.ingest.rtstruct.read_rtstruct_labels`): Dice of ``threshold_3d`` against the clinical
   lung contours (whole, right, left) beside the plain 3-D threshold of the issue
   (:mod:`lungseg.lungmask.plain`: -400 HU, border air removed, two largest components, holes
   filled), the fraction of the tumour (GTV) inside each mask, and the mask's rate against the read
   rate of the same series (lungseg's reader, ``read_series``; CPU time, one core, best of
   ``--repeats``; the issue's bar: >= 0.5x).
4. Overlays of the threshold_3d mask on the real slices in ``../shared/data``:
   ``benchmarks/results/lungmask_overlay_<series>.png``.

Writes ``benchmarks/results/lungmask.json`` (``--skip-quality`` / ``--skip-speed`` / ``--skip-clinical`` keep that section of
the previous run; result files written before the rename use the method names ``default`` and ``seed001``).
Run: ``.venv/bin/python benchmarks/bench_lungmask.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402
from skimage.morphology import disk  # noqa: E402
from skimage.segmentation import clear_border  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lungmask_overlays import write_overlays  # noqa: E402
from timing import best_times  # noqa: E402

from lungseg.casefile import CaseVolume, read_case, write_case  # noqa: E402
from lungseg.demo.cohort import demo_case_ids, generate_demo_scan, write_demo_case  # noqa: E402
from lungseg.ingest.dicom_series import read_series  # noqa: E402
from lungseg.ingest.rtstruct import read_rtstruct_labels  # noqa: E402
from lungseg.ingest.scan import read_scan  # noqa: E402
from lungseg.lungmask.cli import compute_mask  # noqa: E402
from lungseg.lungmask.methods import METHODS as METHOD_NAMES  # noqa: E402
from lungseg.lungmask.plain import lung_mask_plain_threshold  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
METHODS = tuple(METHOD_NAMES)  # threshold_3d, per_slice_otsu


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def quality(case_ids: list[str], seed: int, size: int) -> dict:
    """Dice and nodule containment of both methods on demo cases of ``size`` x ``size`` slices."""
    per_case = []
    inside = {m: 0 for m in METHODS}
    inside_juxta = {m: 0 for m in METHODS}
    n_nodule = n_juxta = 0
    for case_id in tqdm(case_ids, desc=f"quality {size}x{size}", unit="case"):
        scan = generate_demo_scan(case_id, seed, n_slices=48, size=size)
        phantom = scan.phantom
        truth = phantom.lung > 0
        nodule = phantom.nodule > 0
        blobs, _ = ndimage.label(nodule)  # each nodule's voxels: the blob holding its centre
        juxta_ids = [blobs[tuple(int(round(c)) for c in n.center_zyx)] for n in phantom.nodules if n.juxta_pleural]
        juxta = np.isin(blobs, [i for i in juxta_ids if i > 0])
        n_nodule += int(nodule.sum())
        n_juxta += int(juxta.sum())
        row = {"case_id": case_id, "nodule_voxels": int(nodule.sum()),
               "nodules": [{"diameter_mm": n.diameter_mm, "juxta_pleural": n.juxta_pleural} for n in phantom.nodules]}
        for method in METHODS:
            mask = compute_mask(phantom.hu, scan.geometry, method).mask
            row[method] = {"dice": round(_dice(mask > 0, truth), 4),
                           "nodule_containment": round(float((mask[nodule] > 0).mean()), 4) if nodule.any() else None}
            if method == "threshold_3d":
                row[method]["dice_right"] = round(_dice(mask == 1, phantom.lung == 1), 4)
                row[method]["dice_left"] = round(_dice(mask == 2, phantom.lung == 2), 4)
            inside[method] += int(np.count_nonzero(mask[nodule]))
            inside_juxta[method] += int(np.count_nonzero(mask[juxta]))
        per_case.append(row)
    summary = {}
    for method in METHODS:
        dice = [r[method]["dice"] for r in per_case]
        summary[method] = {
            "dice_mean": round(float(np.mean(dice)), 4),
            "dice_min": round(float(np.min(dice)), 4),
            "nodule_containment_pooled": round(inside[method] / n_nodule, 4) if n_nodule else None,
            "nodule_containment_min_case": min((r[method]["nodule_containment"] for r in per_case
                                                if r[method]["nodule_containment"] is not None), default=None),
            "juxta_pleural_containment_pooled": round(inside_juxta[method] / n_juxta, 4) if n_juxta else None,
        }
        if method == "threshold_3d":
            for side in ("right", "left"):
                values = [r[method][f"dice_{side}"] for r in per_case]
                summary[method][f"dice_{side}_mean"] = round(float(np.mean(values)), 4)
                summary[method][f"dice_{side}_min"] = round(float(np.min(values)), 4)
    return {"size": [48, size, size], "cases": len(case_ids), "nodule_voxels": n_nodule,
            "juxta_pleural_nodule_voxels": n_juxta, "summary": summary, "per_case": per_case}


def _pydicom_raw(files: list[Path]) -> None:
    """The raw read of ``benchmarks/bench_ingest.py``: decode each file and scale it to HU."""
    for path in files:
        ds = pydicom.dcmread(path)
        _ = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def per_slice_otsu_per_slice(volume: np.ndarray) -> np.ndarray:
    """The per-slice Otsu recipe (Chi et al.) run slice by slice with skimage / scipy (the pre-vectorised
    implementation)."""
    out = []
    for hu in volume:
        if hu.min() == hu.max():
            out.append(np.zeros(hu.shape, dtype=bool))
            continue
        mask = clear_border(hu < threshold_otsu(hu))
        mask = ndimage.binary_erosion(mask, disk(2), border_value=1)  # skimage's binary_erosion / _closing
        mask = ndimage.binary_erosion(ndimage.binary_dilation(mask, disk(5)), disk(5), border_value=1)
        out.append(ndimage.binary_fill_holes(mask))
    return np.stack(out).astype(np.uint8)


def speed_series(work_dir: Path, n_cases: int, seed: int) -> list[tuple[str, Path]]:
    """512 x 512 DICOM series to time: demo cases written to ``work_dir``, plus the real LIDC slices."""
    series = [(f"demo_{c}", write_demo_case(c, work_dir, seed, n_slices=48, size=512).dicom_dir)
              for c in tqdm(demo_case_ids(n_cases), desc="writing 512x512 series", unit="case")]
    for folder in sorted((SHARED / "lidc-idri").glob("LIDC-IDRI-*")):
        series.append((folder.name, folder))
    return series


def speed(series: list[tuple[str, Path]], work_dir: Path, repeats: int) -> dict:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    totals_cpu: dict[str, float] = {}
    totals_wall: dict[str, float] = {}
    n_slices = 0
    rows = []
    for name, folder in tqdm(series, desc="timing", unit="series"):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm")
        hu, geometry, _ = read_scan(folder)
        if hu.shape[1:] != (512, 512):
            continue
        h5 = work_dir / f"{name}.h5"
        write_case(h5, CaseVolume(case_id="bench", image=hu, geometry=geometry))
        _pydicom_raw(files)  # warm the page cache
        seconds = best_times({
            "pydicom_raw": lambda files=files: _pydicom_raw(files),
            "hdf5_read": lambda h5=h5: read_case(h5, labels=False),
            "threshold_3d": lambda hu=hu, g=geometry: compute_mask(hu, g, "threshold_3d"),
            "per_slice_otsu": lambda hu=hu, g=geometry: compute_mask(hu, g, "per_slice_otsu"),
            "per_slice_otsu_per_slice": lambda hu=hu: per_slice_otsu_per_slice(hu),
        }, repeats)
        cpu, wall = seconds["cpu"], seconds["wall"]
        n = hu.shape[0]
        n_slices += n
        for k in cpu:
            totals_cpu[k] = totals_cpu.get(k, 0.0) + cpu[k]
            totals_wall[k] = totals_wall.get(k, 0.0) + wall[k]
        rows.append({"series": name, "slices": n, "pixel_mm": round(geometry.spacing[0], 4),
                     "slices_per_cpu_s": {k: round(n / v, 1) for k, v in cpu.items()}})
    rate = {k: n_slices / v for k, v in totals_cpu.items()}
    wall_rate = {k: n_slices / v for k, v in totals_wall.items()}
    return {
        "slices": n_slices,
        "matrix": [512, 512],
        "repeats": repeats,
        "slices_per_cpu_s": {k: round(v, 1) for k, v in rate.items()},
        "slices_per_wall_s": {k: round(v, 1) for k, v in wall_rate.items()},
        "ratio_threshold_3d_vs_pydicom_raw": round(rate["threshold_3d"] / rate["pydicom_raw"], 3),
        "ratio_per_slice_otsu_vs_pydicom_raw": round(rate["per_slice_otsu"] / rate["pydicom_raw"], 3),
        "ratio_threshold_3d_vs_hdf5_read": round(rate["threshold_3d"] / rate["hdf5_read"], 3),
        "ratio_threshold_3d_vs_per_slice_otsu": round(rate["threshold_3d"] / rate["per_slice_otsu"], 2),
        "ratio_per_slice_otsu_vs_per_slice": round(rate["per_slice_otsu"] / rate["per_slice_otsu_per_slice"], 2),
        "per_series": rows,
    }


def clinical(repeats: int) -> dict:
    """Both masks against the clinical lung contours of every planning CT in ``nsclc-radiomics``, and the
    mask's rate against the read rate of the same series (one core, CPU time)."""
    rows = []
    for case in sorted((SHARED / "nsclc-radiomics").glob("*/")):
        structure_sets = sorted((case / "rtstruct").glob("*.dcm"))
        if not (case / "image").is_dir() or not structure_sets:
            continue
        scan = read_series(case / "image")
        labels, _ = read_rtstruct_labels(structure_sets[0], scan.geometry, scan.hu.shape, scan.series_uid)
        lung, tumour = labels["lung"], labels.get("tumour")
        seconds = best_times({
            "read": lambda folder=case / "image": read_series(folder),
            "threshold_3d": lambda hu=scan.hu, g=scan.geometry: compute_mask(hu, g, "threshold_3d"),
            "plain_threshold": lambda hu=scan.hu: lung_mask_plain_threshold(hu),
        }, repeats)["cpu"]
        masks = {"threshold_3d": compute_mask(scan.hu, scan.geometry, "threshold_3d").mask,
                 "plain_threshold": lung_mask_plain_threshold(scan.hu)}
        n = scan.hu.shape[0]
        row: dict = {"case": case.name, "slices": n, "matrix": list(scan.hu.shape[1:]),
                     "spacing_mm": [round(v, 3) for v in scan.geometry.spacing],
                     "slices_per_cpu_s": {k: round(n / v, 1) for k, v in seconds.items()},
                     "ratio_threshold_3d_vs_read": round(seconds["read"] / seconds["threshold_3d"], 3)}
        for method, mask in masks.items():
            row[method] = {"dice": round(_dice(mask > 0, lung > 0), 4)}
            if method == "threshold_3d":
                row[method]["dice_right"] = round(_dice(mask == 1, lung == 1), 4)
                row[method]["dice_left"] = round(_dice(mask == 2, lung == 2), 4)
            if tumour is not None and tumour.any():
                row[method]["tumour_inside"] = round(float((mask[tumour > 0] > 0).mean()), 4)
        row["tumour_inside_clinical_lung"] = (round(float((lung[tumour > 0] > 0).mean()), 4)
                                              if tumour is not None and tumour.any() else None)
        rows.append(row)
    return {"reference": "clinical RTSTRUCT lung contours (Lung-Right + Lung-Left), voxel centres inside the polygons",
            "per_case": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=30, help="demo cases of 48 x 256 x 256 for quality")
    parser.add_argument("--cases-512", type=int, default=4, help="demo cases of 48 x 512 x 512 for quality")
    parser.add_argument("--speed-cases", type=int, default=2, help="demo cases of 48 x 512 x 512 written as DICOM for speed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026, help="demo cohort seed (the workflow's default)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-clinical", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    path = RESULTS / "lungmask.json"  # sections not rerun (--skip-*) are kept from the last run
    out: dict = json.loads(path.read_text()) if path.is_file() else {}
    out.update({"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                "pinned_to_one_core": hasattr(os, "sched_setaffinity")})
    if not args.skip_quality:
        out["quality_256"] = quality(demo_case_ids(args.cases), args.seed, 256)
        out["quality_512"] = quality(demo_case_ids(args.cases_512), args.seed, 512)
        for key in ("quality_256", "quality_512"):
            for method, s in out[key]["summary"].items():
                print(f"{key} {method}: Dice mean {s['dice_mean']} min {s['dice_min']}; nodule containment pooled "
                      f"{s['nodule_containment_pooled']} (min case {s['nodule_containment_min_case']}, juxta-pleural "
                      f"{s['juxta_pleural_containment_pooled']})")
    if not args.skip_speed:
        with tempfile.TemporaryDirectory(prefix="lungseg-bench-lungmask-") as tmp:
            work = Path(tmp)
            out["speed"] = speed(speed_series(work / "cohort", args.speed_cases, 7), work, args.repeats)
        s = out["speed"]
        print(f"speed, {s['slices']} slices of 512 x 512, slices per CPU second (one core): {s['slices_per_cpu_s']}")
        print(f"threshold_3d / pydicom_raw = {s['ratio_threshold_3d_vs_pydicom_raw']}, per_slice_otsu / pydicom_raw = "
              f"{s['ratio_per_slice_otsu_vs_pydicom_raw']}, threshold_3d / per_slice_otsu = "
              f"{s['ratio_threshold_3d_vs_per_slice_otsu']}, per_slice_otsu / its per-slice implementation = "
              f"{s['ratio_per_slice_otsu_vs_per_slice']}")
    if not args.skip_clinical and (SHARED / "nsclc-radiomics").is_dir():
        out["clinical"] = clinical(args.repeats)
        for row in out["clinical"]["per_case"]:
            print(f"{row['case']}: threshold_3d Dice {row['threshold_3d']} vs plain threshold {row['plain_threshold']}; "
                  f"slices per CPU second {row['slices_per_cpu_s']}, threshold_3d / read = {row['ratio_threshold_3d_vs_read']}")
    if SHARED.is_dir():
        out["overlays"] = [str(p.relative_to(REPO)) for p in write_overlays(SHARED, RESULTS)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
