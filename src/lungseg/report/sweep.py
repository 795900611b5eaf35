"""The table of a ``lungseg sweep`` for the report: one row per grid point, read from the sweep's own files.

``lungseg sweep --out-dir DIR`` (outside the workflow, through submitit) leaves ``DIR/sweep.csv`` (columns
``run``, one per grid key, then ``status, job_id, wall_s, epochs, images_per_s, final_train_loss,
best_val_dice, error``; see :func:`lungseg.cluster.sweep.write_table`) and ``DIR/runs/<run>/metrics.csv``
(one row per epoch, from ``lungseg train``). This page only reads them; nothing is trained again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lungseg.report import html

#: the table ``lungseg sweep`` writes into its --out-dir (lungseg.cluster.sweep_cli)
SUMMARY_NAME = "sweep.csv"
#: the columns after the grid keys in that table (lungseg.cluster.sweep.TABLE_FIELDS without ``run``;
#: repeated here so the report does not import submitit)
RESULT_FIELDS = ("status", "job_id", "wall_s", "epochs", "images_per_s", "final_train_loss", "best_val_dice", "error")


class SweepSummaryError(ValueError):
    """A sweep folder without a usable table (the message names the folder and the fix)."""


def summary_path(folder: Path) -> Path:
    return Path(folder) / SUMMARY_NAME


def read_sweep(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(grid keys, rows) of the sweep table in ``folder``; one-line :class:`SweepSummaryError` if there is none."""
    folder = Path(folder)
    path = summary_path(folder)
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {SUMMARY_NAME}"
        raise SweepSummaryError(
            f"sweep folder {folder} {what}: run `lungseg sweep ... --out-dir {folder}` first "
            "(or set report.sweep to the --out-dir of a finished sweep)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if header[:1] != ["run"] or "status" not in header:
        raise SweepSummaryError(f"{path} is not a lungseg sweep table (expected the columns run, <grid keys>, "
                                f"{', '.join(RESULT_FIELDS)}; found {', '.join(header) or 'none'})")
    keys = header[1:header.index("status")]
    return keys, rows


def final_val_dice(run_dir: Path) -> float | None:
    """Validation Dice of the last epoch with one in the run's ``metrics.csv`` (None if there is none)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    for row in reversed(rows):
        value = _number(row.get("val_dice") or "")
        if isinstance(value, float) and math.isfinite(value):
            return value
    return None


def _number(text: str) -> object:
    """A table cell as int / float where it is one, None for an empty cell, else the text."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def sweep_html(folder: Path, keys: list[str], rows: list[dict[str, str]]) -> str:
    """The report page: a line on the sweep, then one row per run (grid values, state, Dice, time)."""
    folder = Path(folder)
    table = []
    for row in rows:
        name = row.get("run", "")
        table.append([
            name,
            *(row.get(k, "") for k in keys),
            row.get("status", ""),
            row.get("job_id", "") or None,
            _number(row.get("best_val_dice", "")),
            final_val_dice(folder / "runs" / name) if name else None,
            _number(row.get("final_train_loss", "")),
            _number(row.get("epochs", "")),
            _number(row.get("wall_s", "")),
            _number(row.get("images_per_s", "")),
            row.get("error", "") or None,
        ])
    ok = [r for r in rows if r.get("status") == "ok"]
    scored = [(d, r["run"]) for r in ok if isinstance(d := _number(r.get("best_val_dice", "")), (int, float))]
    summary = (f"{len(rows)} run(s) of lungseg sweep in {folder}: {len(ok)} ok, {len(rows) - len(ok)} failed"
               + (f"; grid: {', '.join(keys)}" if keys else "; no grid (one run)"))
    if scored:
        best, run = max(scored)
        summary += f"; best validation Dice {best:.3f} ({run})"
    parts = [
        html.paragraph(summary + ". The runs were made outside the workflow (lungseg sweep --out-dir "
                       f"{folder}); this page only shows their table, nothing is trained again."),
        html.table(["run", *keys, "status", "job", "best val Dice", "final val Dice", "final train loss", "epochs",
                    "wall time (s)", "images/s", "error"], table, caption="Runs"),
    ]
    return html.page("Training sweep", *parts)


def load(folder: Path) -> str:
    """The page for the sweep in ``folder`` (raises :class:`SweepSummaryError` without its table)."""
    keys, rows = read_sweep(folder)
    return sweep_html(folder, keys, rows)
