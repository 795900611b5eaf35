"""DICOM-SEG export time per study against the same study's inference time, one core.

For each study, taking turns in each round (:func:`timing.best_times`, best CPU and wall time of ``--repeats``),
with torch and every thread pool at one thread:

- ``inference``: :func:`lungseg.inference.predict.predict_volume` of the study's HU volume (in memory) with
  the default model of ``config/config.yaml`` (``train``: arch, base_channels, depth, image_size; randomly
  initialised: speed depends on shapes, not weights), ``predict.batch_size``; what ``lungseg predict``
  reports as its inference time;
- ``export_seg``: :func:`lungseg.export.dicom_seg.write_dicom_seg` of a right/left lung mask (NIfTI) on the
  study's DICOM series: read the series' headers, put the mask on its slices, build and write the SEG;
- ``read_back``: :func:`lungseg.export.readback.read_back_seg` of that SEG (the workflow's ``--check``).

Studies: ``--cases`` demo series of ``--slices`` x ``--size`` (written as DICOM into a temporary folder,
the demo's lung label as the mask) and, when ``../shared/data`` is present, LIDC-IDRI-0001 (16 real
512 x 512 slices, lungseg's classical lung mask as the mask). Writes ``benchmarks/results/export_seg.json``
(or ``--out``). Run: ``.venv/bin/python benchmarks/bench_export_seg.py [--repeats 3]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_times  # noqa: E402

from lungseg.api import lung_mask  # noqa: E402
from lungseg.demo.cohort import write_demo_case  # noqa: E402
from lungseg.export.dicom_seg import write_dicom_seg  # noqa: E402
from lungseg.export.readback import read_back_seg  # noqa: E402
from lungseg.geometry import write_volume  # noqa: E402
from lungseg.inference.predict import predict_volume  # noqa: E402
from lungseg.ingest.dicom_series import read_series  # noqa: E402
from lungseg.training.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "lidc-idri" / "LIDC-IDRI-0001"


def default_model(config: dict) -> tuple[torch.nn.Module, dict]:
    t = config["train"]
    torch.manual_seed(0)
    model = build_model(t["arch"], base_channels=t["base_channels"], depth=t["depth"]).eval()
    return model, {"image_size": t["image_size"], "hu_window": tuple(t["hu_window"]), "label": t["label"]}


def study(name: str, dicom: Path, mask: Path, model: torch.nn.Module, meta: dict, batch_size: int, work: Path,
          repeats: int) -> dict:
    series = read_series(dicom)
    out = work / f"{name}.seg.dcm"
    times = best_times(
        {
            "inference": lambda: predict_volume(model, meta, series.hu, batch_size=batch_size, progress=False),
            "export_seg": lambda: write_dicom_seg(mask, dicom, out, model_name="lungseg bench",
                                                  model_version="0+bench", label_kind="lung"),
            "read_back": lambda: read_back_seg(out, dicom),
        },
        repeats,
    )
    cpu, wall = times["cpu"], times["wall"]
    return {
        "study": name,
        "slices": int(series.hu.shape[0]),
        "matrix": [int(v) for v in series.hu.shape[1:]],
        "seg_mb": round(out.stat().st_size / 2**20, 2),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "wall_s": {k: round(v, 3) for k, v in wall.items()},
        "ratio_export_vs_inference": round(cpu["export_seg"] / cpu["inference"], 3),
        "ratio_export_and_check_vs_inference": round((cpu["export_seg"] + cpu["read_back"]) / cpu["inference"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1, help="demo studies (default 1)")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export_seg.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = yaml.safe_load(args.config.read_text())
    model, meta = default_model(config)
    batch_size = config["predict"]["batch_size"]
    studies = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k in range(args.cases):
            case = write_demo_case(f"demo{k + 1:03d}", work / "demo", 7, n_slices=args.slices, size=args.size)
            studies.append(study(f"demo{k + 1:03d}_{args.slices}x{args.size}", case.dicom_dir, case.lung_path,
                                 model, meta, batch_size, work, args.repeats))
        if LIDC.is_dir():
            series = read_series(LIDC)
            mask = work / "lidc_mask.nii.gz"
            write_volume(str(mask), lung_mask(LIDC), series.geometry)
            studies.append(study("lidc_0001", LIDC, mask, model, meta, batch_size, work, args.repeats))
        else:
            print(f"{LIDC} not found: the real study is left out", file=sys.stderr)
    for s in studies:
        cpu = s["cpu_s"]
        print(f"{s['study']}: {s['slices']} x {s['matrix'][0]}²: inference {cpu['inference']:.2f} s, "
              f"export {cpu['export_seg']:.2f} s (x{s['ratio_export_vs_inference']}), read back {cpu['read_back']:.2f} s "
              "(CPU, one core)")
    result = {"threads": 1, "repeats": args.repeats, "batch_size": batch_size,
              "model": {k: config["train"][k] for k in ("arch", "base_channels", "depth", "image_size")},
              "studies": {s.pop("study"): s for s in studies}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
