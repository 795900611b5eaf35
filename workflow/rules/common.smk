# Config validation, the case table and input functions shared by all rules.
import csv
import hashlib
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from lungseg.demo.cohort import demo_case_ids, demo_dicom_names
from lungseg.ingest.dicom_series import list_dicom_files
from lungseg.split import assign_splits

min_version("8.10")


validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
LABEL = config["train"]["label"]


wildcard_constraints:
    case=r"[A-Za-z0-9_.-]+",


def _read_case_sheet(path):
    """Case sheet rows keyed by case_id: dicom folder and label_<name> columns."""
    if not Path(path).is_file():
        raise WorkflowError(f"case sheet {path} not found: write it (see config/cases.example.tsv) or set source: demo")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = {"case_id", "patient_id", "dicom"} - set(rows[0] if rows else {})
    if missing:
        raise WorkflowError(f"case sheet {path} lacks column(s) {sorted(missing)}")
    cases = {}
    for row in rows:
        if row["case_id"] in cases:
            raise WorkflowError(f"case sheet {path}: case_id {row['case_id']} appears twice")
        cases[row["case_id"]] = row
    return cases


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
SPLITS = assign_splits(
    {c: row["patient_id"] for c, row in CASES.items()},
    config["split"]["fractions"],
    config["split"]["seed"],
)


def cases_in(split):
    return sorted(c for c, s in SPLITS.items() if s == split)


def case_file(case):
    return f"{RESULTS}/ingest/{case}.h5"


def dicom_files(case):
    """Every slice file of a case's series: listed as inputs so that changing one reruns that case only."""
    folder = CASES[case]["dicom"]
    if config["source"] == "demo":
        return [f"{folder}/{name}" for name in DEMO_DICOM_NAMES]
    return [str(p) for p in list_dicom_files(Path(folder))]


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
    if LABEL == "lung":  # the classical lung mask is a baseline for the lung target
        preds["seed001"] = f"{RESULTS}/lungmask/{wildcards.case}.nii.gz"
    return preds


def all_outputs():
    test = cases_in("test")
    return [
        f"{RESULTS}/split.tsv",
        expand(f"{RESULTS}/lungmask/{{case}}.qa.json", case=sorted(CASES)),
        expand(f"{RESULTS}/predictions/{{case}}.nii.gz", case=test),
        f"{RESULTS}/metrics/metrics.csv",
        f"{RESULTS}/metrics/summary.json",
        f"{RESULTS}/plots/training_curves.png",
        expand(f"{RESULTS}/plots/overlays/{{case}}.png", case=test),
    ]
