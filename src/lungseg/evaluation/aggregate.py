"""``lungseg aggregate``: per-case metric rows -> one CSV table and a JSON summary per method."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.evaluation.metrics import METRICS


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per method: for each metric mean, std, median, min, max over cases; NaNs skipped and counted."""
    summary: dict[str, dict] = {}
    for method in sorted({r["method"] for r in rows}):
        subset = [r for r in rows if r["method"] == method]
        stats: dict[str, dict] = {}
        for metric in METRICS:
            values = np.asarray([r[metric] for r in subset], dtype=float)
            finite = values[np.isfinite(values)]
            stats[metric] = {
                "mean": float(finite.mean()) if finite.size else None,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
                "median": float(np.median(finite)) if finite.size else None,
                "min": float(finite.min()) if finite.size else None,
                "max": float(finite.max()) if finite.size else None,
                "n": int(finite.size),
                "n_undefined": int(values.size - finite.size),
            }
        summary[method] = {"n_cases": len(subset), "metrics": stats}
    return summary


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    fields = ["case_id", "label", "method", *METRICS]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["method"], r["case_id"])):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="per-case metric JSON files from `lungseg evaluate`")
    parser.add_argument("--csv", type=Path, required=True, help="table with one row per case and method")
    parser.add_argument("--json", type=Path, required=True, help="summary statistics per method")


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.inputs)
    summary = summarise(rows)
    write_text_atomic(args.csv, rows_to_csv(rows))
    write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    for method, s in summary.items():
        dice = s["metrics"]["dice"]
        print(f"{method}: mean Dice {dice['mean']:.4f} over {s['n_cases']} case(s)")
    return 0
