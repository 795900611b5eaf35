"""lungseg: chest CT to lung / nodule segmentation models, predictions, metrics and a report.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
Modules are imported lazily so that ``lungseg --help`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lungseg import __version__
from lungseg.atomic import as_disk_full_error
from lungseg.cases import CaseSheetError
from lungseg.ingest.errors import IngestError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-cohort": ("lungseg.demo.cli", "write a synthetic chest CT cohort as real DICOM series + NIfTI labels"),
    "demo-xray": ("lungseg.demo.xray_cli",
                  "write synthetic chest radiographs (projections of the CT phantoms) with lung masks as PNG + DICOM DX"),
    "discover": ("lungseg.ingest.discover_cli",
                 "find the axial CT series in a DICOM tree and write a case sheet (pseudonymous IDs)"),
    "ingest": ("lungseg.ingest.cli",
               "read one DICOM series or volume (+ masks, LIDC XML, LUNA16 CSV) into a per-case HDF5 file"),
    "image-sheet": ("lungseg.images.sheet_cli",
                    "find the images and masks of a 2-D image dataset (folder layout or sheet) and write a case sheet"),
    "quarantine-table": ("lungseg.ingest.quarantine", "collect quarantined cases from ingest status files into a TSV"),
    "lung-mask": ("lungseg.lungmask.cli",
                  "classical lung-parenchyma mask (right/left) of a case, DICOM folder or CT volume, in its own geometry"),
    "image-lung-mask": ("lungseg.images.baseline_cli",
                        "classical lung mask of a 2-D radiograph case (Otsu inside the body; or none), the X-ray baseline"),
    "lung-mask-qa": ("lungseg.lungmask.qa_table", "collect per-case lung-mask QA files into one TSV table"),
    "nodule-baseline": ("lungseg.nodules.cli", "classical nodule mask + score map of a scan (Hessian dot filter), a baseline"),
    "nodule-patches": ("lungseg.classification.cli",
                       "the reference nodules of a case: table (TSV, ratings, labels) + 2.5-D patches (HDF5)"),
    "nodule-table": ("lungseg.classification.nodule_table", "concatenate per-case nodule tables into one TSV"),
    "candidates": ("lungseg.detection.candidates",
                   "nodule candidates of a network's probability map: table + 2.5-D patches, for false-positive reduction"),
    "classify": ("lungseg.classification.predict",
                 "malignancy (or candidate: nodule) probability of each nodule of a case (a model or fold ensemble)"),
    "choose-detection-score": ("lungseg.detection.score",
                               "the two-stage detector's candidate score with the best validation FROC (JSON)"),
    "rescore-candidates": ("lungseg.detection.rescore",
                           "a scan's nodule mask and probability map with each candidate scored by the candidate classifier"),
    "diagnose": ("lungseg.classification.diagnose",
                 "a study's nodules found, measured and classified: nodule list (TSV, JSON) + overlay"),
    "diagnosis-evaluate": ("lungseg.classification.diagnosis_evaluation",
                           "the test cases' diagnoses against their reference nodules: detection and malignancy AUC"),
    "classification-metrics": ("lungseg.evaluation.classification_cli",
                               "classification metrics per fold, pooled out-of-fold and on the test nodules (JSON)"),
    "classification-compare": ("lungseg.evaluation.classification_compare",
                               "paired AUC difference of classification experiments to a reference on the same test nodules"),
    "split": ("lungseg.split", "patient-level train/val/test split, reproducible by seed"),
    "train": ("lungseg.training.cli", "train a segmentation model or nodule classifier (run under torchrun for DDP)"),
    "train-guard": ("lungseg.training.guard", "run a training command; on SIGTERM/SIGUSR1 it checkpoints and exits 75 (requeue)"),
    "train-scaling": ("lungseg.training.scaling", "scaling study: single process vs DDP vs FedAvg on the same data and epochs"),
    "fl-server": ("lungseg.federated.server", "Flower federated server: FedAvg over the sites, global model + per-round CSV"),
    "fl-client": ("lungseg.federated.client", "Flower client of one site: trains on its own cases only (--site S)"),
    "fl-run": ("lungseg.federated.local",
               "a Flower run: the server here, one client per site as a local process or a SLURM GPU job"),
    "fl-certificates": ("lungseg.federated.certificates", "throwaway CA, server TLS certificate and per-site tokens for Flower"),
    "launch": ("lungseg.cluster.launch", "start torchrun on one node, or srun torchrun across the nodes of a SLURM job"),
    "sweep": ("lungseg.cluster.sweep_cli", "grid of training runs through submitit (SLURM or local), one metrics table"),
    "profiles": ("lungseg.cluster.profiles_install",
                 "make the slurm and hybrid profiles findable by name: snakemake --profile slurm"),
    "predict": ("lungseg.inference.cli",
                "mask one study (.h5 case, DICOM folder or CT volume) with a trained model, in the scan's geometry"),
    "export-seg": ("lungseg.export.cli",
                   "a predicted mask as a DICOM-SEG on its source series (viewers, PACS); the file carries identifiers"),
    "pacs": ("lungseg.dicomweb.orthanc", "start or stop a local Orthanc PACS with DICOMweb (for trying the PACS round trip)"),
    "dicomweb-retrieve": ("lungseg.dicomweb.retrieve",
                          "query a PACS (QIDO-RS) and retrieve the matching CT series (WADO-RS) into a local archive"),
    "dicomweb-store": ("lungseg.dicomweb.store",
                       "store DICOM files (DICOM-SEG exports) in a PACS (STOW-RS), then query them back"),
    "evaluate": ("lungseg.evaluation.cli", "per-case overlap metrics of a predicted mask against the reference"),
    "aggregate": ("lungseg.evaluation.aggregate", "collect per-case metrics into a CSV table and a JSON summary"),
    "compare": ("lungseg.evaluation.compare",
                "compare experiments and baselines on the test cases: CIs, paired differences to a reference, CV Dice, cost"),
    "plot-training": ("lungseg.report.training_curves", "plot training curves from the per-epoch metrics CSV"),
    "plot-overlay": ("lungseg.report.overlay", "montage of axial slices: reference green, prediction red, agreement yellow"),
    "report": ("lungseg.report.cli",
               "report sections: cohort, metrics tables, distribution, worst/best cases, workflow, experiment comparison, "
               "sweep table, classification"),
}


def build_parser(with_subcommands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:  # exits: the help, --version, or an error naming the bad command
        build_parser().parse_args(argv or ["--help"])
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lungseg {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (IngestError, CaseSheetError) as exc:  # bad input: one line naming the file and the fix
        print(f"lungseg {name}: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:  # a full disk: one line naming the file and the space needed
        disk_full = as_disk_full_error(exc)
        if disk_full is None:
            raise
        print(f"lungseg {name}: error: {disk_full}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
