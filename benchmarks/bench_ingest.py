"""Ingest speed against a raw DICOM read, and peak memory per case over a 50+ case cohort.

1. Throughput, pinned to one CPU core, same files, same run, readers taking turns (best of
   ``--repeats``; CPU seconds of this process count, wall seconds are reported beside them):
   - ``pydicom_raw``: ``dcmread`` + ``pixel_array`` + HU (slope * stored + intercept, float32) per file
   - ``simpleitk_raw``: ``GetGDCMSeriesFileNames`` + ``ReadImage`` (GDCM sorts and rescales), one thread
   - ``lungseg_ingest``: ``ingest_scan`` (read, check, sort, HU, padding) + ``write_case`` (HDF5)
   - ``lungseg_ingest_lzf``: the same with the image lzf-compressed (``--compress-image``), for reference
   Prints slices/s and the ratio of ingest to each raw reader (the issue's bar: >= 0.5x).
2. Memory: ``lungseg ingest`` as one process per case (as the workflow runs it) over ``--cases``
   demo cases, each child reporting its own peak RSS (VmHWM); all cases ingested in turn by one
   process (peak after 1, 10 and all cases); ``lungseg discover`` over 10 and over all cases; and one
   ``lungseg ingest`` of the throughput series (512x512) for scale.

Writes ``benchmarks/results/ingest.json``. Run: ``.venv/bin/python benchmarks/bench_ingest.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from timing import best_times  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lungseg.casefile import write_case  # noqa: E402
from lungseg.demo.cohort import demo_case_ids, write_demo_case  # noqa: E402
from lungseg.ingest.pseudonym import Scrubber  # noqa: E402
from lungseg.ingest.scan import ingest_scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def throughput(work: Path, n_slices: int, repeats: int) -> dict:
    case = write_demo_case("bench001", work / "speed", seed=7, n_slices=n_slices, size=512)
    folder = case.dicom_dir
    files = sorted(folder.iterdir())
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    def pydicom_raw():
        for path in files:
            ds = pydicom.dcmread(path)
            _ = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    def simpleitk_raw():
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
        sitk.ReadImage(names, sitk.sitkFloat32)

    def ingest(compress: bool):  # what `lungseg ingest` does, less interpreter start-up
        case = ingest_scan("bench001", folder, scrubber=Scrubber())
        write_case(work / "bench.h5", case, compress_image=compress)

    pydicom_raw()  # warm the page cache
    seconds = best_times(
        {
            "pydicom_raw": pydicom_raw,
            "simpleitk_raw": simpleitk_raw,
            "lungseg_ingest": lambda: ingest(False),
            "lungseg_ingest_lzf": lambda: ingest(True),
        },
        repeats,
    )
    rate = {k: n_slices / v for k, v in seconds["cpu"].items()}
    wall_rate = {k: n_slices / v for k, v in seconds["wall"].items()}
    return {
        "slices": n_slices,
        "matrix": [512, 512],
        "storage": case.storage,
        "repeats": repeats,
        "slices_per_cpu_s": {k: round(v, 1) for k, v in rate.items()},
        "slices_per_wall_s": {k: round(v, 1) for k, v in wall_rate.items()},
        "ratio_ingest_vs_pydicom": round(rate["lungseg_ingest"] / rate["pydicom_raw"], 3),
        "ratio_ingest_vs_simpleitk": round(rate["lungseg_ingest"] / rate["simpleitk_raw"], 3),
        "ratio_ingest_lzf_vs_pydicom": round(rate["lungseg_ingest_lzf"] / rate["pydicom_raw"], 3),
        "wall_ratio_ingest_vs_pydicom": round(wall_rate["lungseg_ingest"] / wall_rate["pydicom_raw"], 3),
        "folder": str(folder),
    }


# Children report their own peak RSS (VmHWM): ru_maxrss from wait4 would carry over the parent's
# high-water mark across fork and exec.
_CHILD_CLI = """
import sys
from lungseg.cli import main
rc = main(sys.argv[1:])
print("VMHWM_KB", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1], flush=True)
sys.exit(rc)
"""
_CHILD_LOOP = """
import json, sys
from lungseg.casefile import write_case
from lungseg.ingest.pseudonym import Scrubber
from lungseg.ingest.scan import ingest_scan
for case_id, folder, lung, out in json.loads(sys.argv[1]):
    write_case(out, ingest_scan(case_id, folder, {"lung": lung}, scrubber=Scrubber()))
    print("VMHWM_KB", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1], flush=True)
"""


def _child_peaks(code: str, args: list[str]) -> list[float]:
    """Peak RSS (MiB) values a child Python process reports."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [int(line.split()[1]) / 1024.0 for line in proc.stdout.splitlines() if line.startswith("VMHWM_KB")]


def _ingest_args(case, out: Path) -> list[str]:
    return [
        "ingest",
        str(case.dicom_dir),
        "--case-id",
        case.case_id,
        "--label",
        f"lung={case.lung_path}",
        "--label",
        f"nodule={case.nodule_path}",
        "-o",
        str(out),
    ]


def _summary(values: list[float]) -> dict:
    v = np.asarray(values)
    return {"min": round(float(v.min()), 1), "median": round(float(np.median(v)), 1), "max": round(float(v.max()), 1)}


def memory(work: Path, n_cases: int, n_slices: int, size: int, big_case_dir: Path | None) -> dict:
    ids = demo_case_ids(n_cases)
    cases = [
        write_demo_case(cid, work / "cohort", seed=2026, n_slices=n_slices, size=size)
        for cid in tqdm(ids, desc="demo cases", unit="case")
    ]
    per_case = []
    for case in tqdm(cases, desc="ingest processes", unit="case"):
        per_case += _child_peaks(_CHILD_CLI, _ingest_args(case, work / "h5" / f"{case.case_id}.h5"))
    loop = json.dumps([[c.case_id, str(c.dicom_dir), str(c.lung_path), str(work / "one.h5")] for c in cases])
    in_process = _child_peaks(_CHILD_LOOP, [loop])
    small = work / "cohort10"
    small.mkdir()
    for case in cases[:10]:
        (small / case.case_id).symlink_to(case.case_dir)
    discover = {}
    for label, root in (("10_cases", small), (f"{n_cases}_cases", work / "cohort")):
        args = [
            "discover",
            str(root),
            "-o",
            str(work / f"cases_{label}.tsv"),
            "--allow-default-secret",
            "--no-progress",
        ]
        discover[label] = round(_child_peaks(_CHILD_CLI, args)[0], 1)
    result = {
        "cases": n_cases,
        "slices": n_slices,
        "matrix": [size, size],
        "per_process_peak_rss_mib": {
            **_summary(per_case),
            "first_10": _summary(per_case[:10]),
            "last_10": _summary(per_case[-10:]),
        },
        "one_process_peak_rss_mib": {
            "after_first_case": round(in_process[0], 1),
            "after_10_cases": round(in_process[min(9, n_cases - 1)], 1),
            "after_all_cases": round(in_process[-1], 1),
        },
        "discover_peak_rss_mib": discover,
    }
    code = "import lungseg.ingest.cli, lungseg.ingest.scan\n" + _CHILD_CLI.split("rc = main", 1)[1].split("\n", 1)[1]
    result["import_only_peak_rss_mib"] = round(_child_peaks(code.replace("sys.exit(rc)", ""), [])[0], 1)
    if big_case_dir is not None:
        args = ["ingest", str(big_case_dir), "--case-id", "big", "-o", str(work / "big.h5")]
        result["peak_rss_mib_512x512_case"] = round(_child_peaks(_CHILD_CLI, args)[0], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="512x512 slices in the throughput series (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per reader, best kept (default 5)")
    parser.add_argument("--cases", type=int, default=55, help="demo cases for the memory part (default 55)")
    parser.add_argument("--case-slices", type=int, default=48, help="slices per memory-part case (default 48)")
    parser.add_argument("--case-size", type=int, default=256, help="matrix of memory-part cases (default 256)")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json", help="JSON results file")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, inherited by children
    result: dict = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "pinned_to_one_core": hasattr(os, "sched_setaffinity"),
    }
    with tempfile.TemporaryDirectory(prefix="lungseg-bench-") as tmp:
        work = Path(tmp)
        result["throughput"] = speed = throughput(work, args.slices, args.repeats)
        print(
            f"throughput on one core, {args.slices} slices of 512x512 ({speed['storage']} storage), "
            f"best of {args.repeats}:"
        )
        for name, value in speed["slices_per_cpu_s"].items():
            print(
                f"  {name:20s} {value:8.1f} slices per CPU second "
                f"({speed['slices_per_wall_s'][name]:.1f} per wall second)"
            )
        print(
            f"  ingest / pydicom raw   = {speed['ratio_ingest_vs_pydicom']:.2f}x (bar: >= 0.5x; wall clock "
            f"{speed['wall_ratio_ingest_vs_pydicom']:.2f}x)"
        )
        print(f"  ingest / SimpleITK raw = {speed['ratio_ingest_vs_simpleitk']:.2f}x")
        folder = Path(speed.pop("folder"))
        if not args.skip_memory:
            result["memory"] = mem = memory(work, args.cases, args.case_slices, args.case_size, folder)
            p, o = mem["per_process_peak_rss_mib"], mem["one_process_peak_rss_mib"]
            print(
                f"peak RSS per `lungseg ingest` process over {mem['cases']} cases of {args.case_slices}x"
                f"{args.case_size}x{args.case_size}: min {p['min']} / median {p['median']} / max {p['max']} MiB "
                f"(first 10: max {p['first_10']['max']}, last 10: max {p['last_10']['max']})"
            )
            print(
                f"one process, cases in turn: peak RSS {o['after_first_case']} MiB after 1 case, "
                f"{o['after_10_cases']} after 10, {o['after_all_cases']} after {mem['cases']}"
            )
            print(f"`lungseg discover` peak RSS: {mem['discover_peak_rss_mib']} MiB")
            print(f"importing lungseg ingest's libraries alone: {mem['import_only_peak_rss_mib']} MiB")
            print(
                f"one {args.slices}-slice 512x512 case: peak RSS {mem['peak_rss_mib_512x512_case']} MiB "
                f"(its int16 volume: {args.slices * 512 * 512 * 2 / 2**20:.0f} MiB)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
