"""``lungseg report SECTION``: the tables and figures of the Snakemake report (one section per call)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lungseg.atomic import write_text_atomic


def _pair(text: str) -> tuple[Path, Path]:
    case, sep, pred = text.partition("=")
    if not sep or not case or not pred:
        raise argparse.ArgumentTypeError(f"expected CASE.h5=PRED.nii.gz, got {text!r}")
    return Path(case), Path(pred)


def _overlay(text: str) -> tuple[str, Path]:
    caption, sep, png = text.partition("=")
    if not sep or not caption or not png:
        raise argparse.ArgumentTypeError(f"expected CAPTION=PNG, got {text!r}")
    return caption, Path(png)


def configure(parser: argparse.ArgumentParser) -> None:
    sections = parser.add_subparsers(dest="section", metavar="SECTION", required=True)
    p = sections.add_parser("cohort", help="cohort table (HTML) from the ingested case files and the split")
    p.add_argument("cases", nargs="+", type=Path, help="case HDF5 files")
    p.add_argument("--split", type=Path, required=True, help="split.tsv written by `lungseg split`")
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("metrics", help="metrics tables (HTML): summary with bootstrap CIs, detection, per case")
    p.add_argument("--summary", type=Path, required=True, help="summary.json from `lungseg aggregate`")
    p.add_argument("--csv", type=Path, required=True, help="metrics.csv from `lungseg aggregate`")
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("distribution", help="per-case metric distribution plot (PNG)")
    p.add_argument("csv", type=Path, help="metrics.csv from `lungseg aggregate`")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")

    p = sections.add_parser("extremes", help="worst and best cases as overlay montages (PNG)")
    p.add_argument("--csv", type=Path, required=True, help="metrics.csv from `lungseg aggregate`")
    p.add_argument("--pair", type=_pair, action="append", required=True, metavar="CASE.h5=PRED",
                   help="a test case and its predicted mask (repeatable)")
    p.add_argument("--label", default="lung", help="reference label name (default: lung)")
    p.add_argument("--method", default="unet", help="method whose cases are ranked (default: unet)")
    p.add_argument("--metric", default="dice", help="per-case metric to rank by (default: dice)")
    p.add_argument("--cases", type=int, default=3, help="cases per montage (default: 3)")
    p.add_argument("--slices", type=int, default=5, help="slices per case (default: 5)")
    p.add_argument("--worst", type=Path, required=True, help="PNG of the worst cases")
    p.add_argument("--best", type=Path, required=True, help="PNG of the best cases")

    p = sections.add_parser("froc", help="FROC figure (PNG) of the nodule candidates, one line per method with its "
                                         "95%% band; says so when there is no FROC (lung target)")
    p.add_argument("--summary", type=Path, required=True, help="summary.json from `lungseg aggregate`")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")

    p = sections.add_parser("comparison", help="experiment comparison table (HTML) from `lungseg compare`")
    p.add_argument("--json", type=Path, required=True, help="comparison.json from `lungseg compare`")
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("paired-dice", help="per-case Dice of each experiment, one line per case (PNG)")
    p.add_argument("--csv", type=Path, required=True, help="metrics.csv of the test cases from `lungseg aggregate`")
    p.add_argument("--reference", required=True, help="reference method, plotted first")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to plot after the reference (default: all but the baselines all_background, classical_*)")
    p.add_argument("--metric", default="dice", help="per-case metric to plot (default: dice)")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")

    p = sections.add_parser("sweep", help="table of a `lungseg sweep` (HTML) from its sweep.csv; nothing is rerun")
    p.add_argument("--folder", type=Path, required=True, metavar="DIR", help="the --out-dir of `lungseg sweep`")
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("external", help="external test set (HTML): every method's metrics on the internal and "
                                             "the external test set side by side, the gap, the overlays")
    p.add_argument("--internal", type=Path, required=True, help="summary.json of the internal test set (`lungseg aggregate`)")
    p.add_argument("--external", type=Path, required=True, help="summary.json of the external test set")
    p.add_argument("--external-csv", type=Path, help="metrics.csv of the external test set: a per-case table")
    p.add_argument("--name", required=True, help="the external test set's name (config external_test.name)")
    p.add_argument("--reference", required=True, help="the experiment whose gap the page states in words")
    p.add_argument("--label", default="lung", help="reference label name (default: lung)")
    p.add_argument("--overlay", type=_overlay, action="append", default=[], metavar="CAPTION=PNG",
                   help="an overlay to embed, e.g. unet/ext001=overlay.png (repeatable)")
    p.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("classification", help="nodule classification (HTML): metrics per experiment, ROC curves, "
                                                   "confusion matrices, calibration, paired comparison, test nodules, "
                                                   "training time")
    p.add_argument("--summaries", nargs="+", required=True, type=Path, metavar="SUMMARY.json",
                   help="`lungseg classification-metrics` output per experiment")
    p.add_argument("--test-predictions", nargs="+", required=True, type=Path, metavar="TEST.tsv",
                   help="each experiment's test predictions (`lungseg classify`), in the order of --summaries")
    p.add_argument("--names", nargs="+", required=True, metavar="NAME", help="experiment names, same order")
    p.add_argument("--comparison", type=Path, metavar="COMPARISON.json",
                   help="`lungseg classification-compare` output (optional with one experiment)")
    p.add_argument("--training-metrics", nargs="*", default=[], type=Path, metavar="METRICS.csv",
                   help="training runs' per-epoch metrics.csv (several per experiment: its folds)")
    p.add_argument("--training-names", nargs="*", default=[], metavar="NAME",
                   help="the experiment of each --training-metrics file, same order")
    p.add_argument("--out", "-o", "--output", dest="output", type=Path, required=True, help="HTML page to write")

    p = sections.add_parser("workflow", help="configuration, software versions and run times (HTML pages)")
    p.add_argument("--config-json", required=True, help="the run's configuration as a JSON string")
    p.add_argument("--benchmarks", type=Path, required=True, help="folder of Snakemake benchmark files (<rule>/*.tsv)")
    p.add_argument("--config-out", type=Path, required=True)
    p.add_argument("--versions-out", type=Path, required=True)
    p.add_argument("--runtimes-out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    if args.section == "cohort":
        from lungseg.report.cohort import cohort_html

        write_text_atomic(args.output, cohort_html(args.cases, args.split))
    elif args.section == "metrics":
        from lungseg.report.metrics_table import load, metrics_html

        write_text_atomic(args.output, metrics_html(*load(args.summary, args.csv)))
    elif args.section == "distribution":
        from lungseg.report.distribution import plot_distribution

        plot_distribution(args.csv, args.output)
    elif args.section == "extremes":
        from lungseg.report.extremes import plot_extremes

        plot_extremes(args.csv, args.pair, args.label, args.worst, args.best, method=args.method, metric=args.metric,
                      n_cases=args.cases, n_slices=args.slices)
    elif args.section == "froc":
        from lungseg.report.froc import plot_froc

        plot_froc(args.summary, args.output)
    elif args.section == "comparison":
        from lungseg.report.comparison import comparison_html, load

        write_text_atomic(args.output, comparison_html(load(args.json)))
    elif args.section == "paired-dice":
        from lungseg.report.comparison import plot_paired

        plot_paired(args.csv, args.reference, args.output, methods=args.methods, metric=args.metric)
    elif args.section == "sweep":
        from lungseg.report.sweep import SweepSummaryError
        from lungseg.report.sweep import load as load_sweep

        try:
            page = load_sweep(args.folder)
        except SweepSummaryError as exc:
            print(f"lungseg report sweep: error: {exc}", file=sys.stderr)
            return 1
        write_text_atomic(args.output, page)
    elif args.section == "external":
        from lungseg.report.external import external_html, load

        write_text_atomic(args.output, external_html(load(args.internal), load(args.external), args.name,
                                                     args.reference, label=args.label, overlays=args.overlay,
                                                     external_csv=args.external_csv))
    elif args.section == "classification":
        from lungseg.ingest.errors import IngestError
        from lungseg.report.classification import classification_html
        from lungseg.report.classification import load as load_classification

        try:
            inputs = load_classification(args.summaries, args.test_predictions, args.names, args.comparison,
                                         args.training_metrics, args.training_names)
            page = classification_html(**inputs)
        except IngestError:
            raise
        except ValueError as exc:  # unequal argument lists: one line
            print(f"lungseg report classification: error: {exc}", file=sys.stderr)
            return 2
        write_text_atomic(args.output, page)
    elif args.section == "workflow":
        from lungseg.report.workflow_info import config_html, runtimes_html, versions_html

        write_text_atomic(args.config_out, config_html(json.loads(args.config_json)))
        write_text_atomic(args.versions_out, versions_html())
        write_text_atomic(args.runtimes_out, runtimes_html(args.benchmarks))
    return 0
