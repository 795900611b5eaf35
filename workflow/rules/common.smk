# Config validation, the case table and input functions shared by all rules.
import hashlib
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from lungseg.demo.cohort import demo_case_ids, demo_dicom_names
from lungseg.ingest.dicom_series import list_dicom_files
from lungseg.ingest.errors import IngestError
from lungseg.cases import CaseSheetError, read_case_sheet, write_case_sheet
from lungseg.split import read_split

min_version("8.10")


validate(config, "../schemas/config.schema.yaml")

# the checkout the conda environments (envs/*.yaml, --software-deployment-method conda) install
# lungseg from: pip expands ${LUNGSEG_ROOT} in their pip sections
os.environ.update(LUNGSEG_ROOT=workflow.basedir)

RESULTS = config["results"]
LABEL = config["train"]["label"]


wildcard_constraints:
    case=r"[A-Za-z0-9_.-]+",


def _read_case_sheet(path):
    """Case sheet rows keyed by case_id: dicom folder and label_<name> columns."""
    try:
        return read_case_sheet(path)
    except CaseSheetError as exc:
        raise WorkflowError(str(exc)) from None


def _case_table():
    if config["source"] == "demo":
        folder = config["demo"]["folder"]
        return {
            case: {
                "case_id": case,
                "patient_id": case,
                "dicom": f"{folder}/{case}/dicom",
                "label_lung": f"{folder}/{case}/labels/lung.nii.gz",
                "label_nodule": f"{folder}/{case}/labels/nodule.nii.gz",
            }
            for case in demo_case_ids(config["demo"]["n_cases"])
        }
    return _read_case_sheet(config["cases"])


CASES = _case_table()
DEMO_DICOM_NAMES = demo_dicom_names(config["demo"]["seed"], config["demo"]["slices"]) if config["source"] == "demo" else []
#: the case sheet the split reads: the user's (source: cases) or one written from the demo config
CASE_SHEET = config["cases"] if config["source"] == "cases" else f"{RESULTS}/cases.tsv"


def split_of_cases():
    """case -> train/val/test, from the split checkpoint (which leaves quarantined cases out)."""
    return read_split(checkpoints.split.get().output[0])


def cases_in(split):
    return sorted(c for c, s in split_of_cases().items() if s == split)


def good_cases():
    """Cases that passed ingest (every case in the split)."""
    return sorted(split_of_cases())


def case_file(case):
    return f"{RESULTS}/ingest/{case}.h5"


def dicom_files(case):
    """Every slice file of a case's series: listed as inputs so that changing one reruns that case only."""
    folder = CASES[case]["dicom"]
    if config["source"] == "demo":
        return [f"{folder}/{name}" for name in DEMO_DICOM_NAMES]
    try:
        return [str(p) for p in list_dicom_files(Path(folder))]
    except IngestError:  # missing or empty folder: the ingest job quarantines the case with the reason
        return []


def ingest_inputs(wildcards):
    """The series' slice files and the label masks (label_<name> columns) of one case."""
    row = CASES[wildcards.case]
    inputs = {"dicom": dicom_files(wildcards.case)}
    inputs.update({k: v for k, v in row.items() if k.startswith("label_") and v})
    return inputs


def label_args(wildcards, input):
    return " ".join(f"--label {key[len('label_'):]}={path}" for key, path in input.items() if key.startswith("label_"))


def train_config_hash():
    """Short hash of the training settings: a resumable checkpoint is only reused for the same settings."""
    return hashlib.sha256(json.dumps(config["train"], sort_keys=True).encode()).hexdigest()[:12]


def predictions_to_evaluate(wildcards):
    preds = {"unet": f"{RESULTS}/predictions/{wildcards.case}.nii.gz"}
    if LABEL == "lung":  # the classical lung mask (of the configured method) is a baseline for the lung target
        preds[f"lungmask_{config['lung_mask']['method']}"] = f"{RESULTS}/lungmask/{wildcards.case}.nii.gz"
    return preds


def flatten(items):
    """Nested lists of paths (as from expand) -> one flat list."""
    return [p for item in items for p in (flatten(item) if isinstance(item, (list, tuple)) else [item])]


def all_outputs(wildcards):
    test = cases_in("test")
    return flatten([
        f"{RESULTS}/split.tsv",
        f"{RESULTS}/quarantine.tsv",
        expand(f"{RESULTS}/lungmask/{{case}}.qa.json", case=good_cases()),
        f"{RESULTS}/lungmask/qa.tsv",  # lung-mask QA of every case (workflow/rules/lungmask.smk)
        expand(f"{RESULTS}/predictions/{{case}}.nii.gz", case=test),
        f"{RESULTS}/metrics/metrics.csv",
        f"{RESULTS}/metrics/summary.json",
        f"{RESULTS}/plots/training_curves.png",
        f"{RESULTS}/scaling/scaling.csv",  # scaling study (workflow/rules/scaling.smk)
        f"{RESULTS}/scaling/scaling.png",
        expand(f"{RESULTS}/plots/overlays/{{case}}.png", case=test),
        # report pages and figures (workflow/rules/report.smk)
        f"{RESULTS}/report/cohort.html",
        f"{RESULTS}/report/metrics.html",
        f"{RESULTS}/report/metrics_distribution.png",
        f"{RESULTS}/report/worst_cases.png",
        f"{RESULTS}/report/best_cases.png",
        expand(f"{RESULTS}/report/workflow/{{page}}.html", page=["config", "versions", "runtimes"]),
    ])
