# Config validation, the case table and input functions shared by all rules.
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from lungseg.demo.cohort import demo_case_ids, demo_dicom_names, demo_site
from lungseg.ingest.fingerprint import folder_fingerprint
from lungseg.cases import CaseSheetError, read_case_sheet, write_case_sheet
from lungseg.experiments import reference_experiment, resolve_experiments
from lungseg.classification.experiments import reference_classifier, resolve_classifiers
from lungseg.detection.settings import (
    CANDIDATE_CLASSIFIER,
    CLASSICAL_DETECTOR,
    RESCORED_THRESHOLD,
    candidate_classifier,
    candidate_experiment,
    two_stage_method,
)
from lungseg.cluster.launch import torchrun_prefix
from lungseg.lungmask.methods import baseline_name
from lungseg.training.rule_args import checkpoint_key
from lungseg.split import check_folds, fold_cases, read_split_table
from lungseg.workflow_config import IMAGE_LUNG_MASK_METHODS, ConfigError, check_config

min_version("8.10")


try:  # schema, defaults and cross-key rules; a bad config stops here in one or two lines
    #: the config schema, loaded once (the classifiers' defaults below come from it)
    CONFIG_SCHEMA = check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# the checkout the conda environments (envs/*.yaml, --software-deployment-method conda) install
# lungseg from: pip expands ${LUNGSEG_ROOT} in their pip sections
os.environ.update(LUNGSEG_ROOT=workflow.basedir)

RESULTS = config["results"]
if config["source"] == "dicomweb":
    # discovery reads the series the dicomweb_retrieve rule selected (workflow/rules/dicomweb.smk), with the
    # dicomweb section's pseudonym secret and slice minimum; a discover section in the config is not used
    config["discover"] = {
        "root": f"{RESULTS}/dicomweb/series",
        "min_slices": config["dicomweb"]["min_slices"],
        "secret_env": config["dicomweb"]["secret_env"],
    }
LABEL = config["train"]["label"]
#: experiment name -> its resolved train settings (config `experiments:`, or one from `train:`)
EXPERIMENTS = resolve_experiments(config)
#: the experiment the others are compared against
REFERENCE = reference_experiment(config)
#: classifier name -> its resolved train settings (config classification, if enabled; trained by the train rule too)
CLASSIFIERS = resolve_classifiers(config, CONFIG_SCHEMA)
#: the classifier the others are compared against (None without classifiers)
REFERENCE_CLASSIFIER = reference_classifier(config, CLASSIFIERS)
#: two-stage nodule detection (config detection; workflow/rules/detection.smk): the candidate classifier's settings
#: ({} when off), the experiment giving the candidates and the two-stage method's name in the metrics
DETECTION = config["detection"]["enabled"]
CANDIDATE_CLASSIFIERS = candidate_classifier(config, CONFIG_SCHEMA)
CANDIDATE_EXPERIMENT = candidate_experiment(config, EXPERIMENTS, REFERENCE) if DETECTION else None
TWO_STAGE = two_stage_method(CANDIDATE_EXPERIMENT) if DETECTION else None
#: every model the train rule makes (segmentation experiments and classifiers), name -> train settings
TRAINED = {**EXPERIMENTS, **CLASSIFIERS, **CANDIDATE_CLASSIFIERS}
#: k-fold cross-validation: one model per fold and experiment (1: one train/val split)
FOLDS = config["split"]["folds"]
#: the classical nodule detector's name in the metrics (the nodule target's baseline)
NODULE_BASELINE = CLASSICAL_DETECTOR


wildcard_constraints:
    case=r"[A-Za-z0-9_.-]+",
    experiment="|".join(re.escape(name) for name in TRAINED),
    fold=r"\d+",


def _read_case_sheet(path):
    """Case sheet rows keyed by case_id: dicom folder and label_<name> columns."""
    try:
        return read_case_sheet(path)
    except CaseSheetError as exc:
        raise WorkflowError(str(exc)) from None


def _demo_case_table():
    folder = config["demo"]["folder"]
    return {
        case: {
            "case_id": case,
            "patient_id": case,
            "dicom": f"{folder}/{case}/dicom",
            "label_lung": f"{folder}/{case}/labels/lung.nii.gz",
            "label_nodule": f"{folder}/{case}/labels/nodule.nii.gz",
            "site": demo_site(case),
        }
        for case in demo_case_ids(config["demo"]["n_cases"])
    }


#: the case sheet the split reads: the user's (source: cases), the discovery checkpoint's (source:
#: discover) or one written from the demo config
CASE_SHEET = {
    "cases": config.get("cases"),
    "discover": f"{RESULTS}/discovered/cases.tsv",
    "dicomweb": f"{RESULTS}/discovered/cases.tsv",
    "images": f"{RESULTS}/images/cases.tsv",
}.get(config["source"], f"{RESULTS}/cases.tsv")
#: known when the workflow is parsed (demo, cases); with discover / images, after their checkpoint ran
CASES = {"demo": _demo_case_table, "cases": lambda: _read_case_sheet(CASE_SHEET)}.get(config["source"], dict)()
DEMO_DICOM_NAMES = (
    demo_dicom_names(config["demo"]["seed"], config["demo"]["slices"]) if config["source"] == "demo" else []
)


@functools.lru_cache(maxsize=4)
def _sheet_at(path, mtime_ns):
    return _read_case_sheet(path)


def _check_folds_against_patients():
    """More folds than patients outside the test set: one line when the workflow starts (sheet known)."""
    if FOLDS > 1 and CASES:
        try:
            check_folds(len({row["patient_id"] for row in CASES.values()}), config["split"]["fractions"], FOLDS)
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None


_check_folds_against_patients()


def case_table():
    """case_id -> case sheet row (dicom, label_<name>, series, lidc_xml, luna16 columns)."""
    if config["source"] == "images":
        sheet = checkpoints.image_sheet.get().output.cases
        return _image_sheet_at(sheet, os.stat(sheet).st_mtime_ns)
    if config["source"] not in ("discover", "dicomweb"):
        return CASES
    sheet = checkpoints.discover.get().output.cases
    return _sheet_at(sheet, os.stat(sheet).st_mtime_ns)


# ---- 2-D images (source: images, docs/how-to/2d-images.md) ----


@functools.lru_cache(maxsize=4)
def _image_sheet_at(path, mtime_ns):
    """The image sheet's rows; one warning when images have no patient (they may land in different splits)."""
    cases = _read_case_sheet(path)
    alone = sum(row.get("patient_from") == "image" for row in cases.values())
    if alone:
        print(
            f"lungseg: warning: {alone} of {len(cases)} image(s) have no patient (images.patient_pattern / a patient "
            "column): images of one patient may land in different splits",
            file=sys.stderr,
        )
    return cases


def image_sheet_args(wildcards):
    """`lungseg image-sheet` options from the images section, each an argument of its own."""
    settings = config["images"]
    args = ["--layout", settings["layout"], "--label", settings["label"], "--secret-env", settings["secret_env"]]
    for key in ("mask_suffix", "image_dir", "mask_dir", "right_dir", "left_dir", "patient_pattern", "patient_column"):
        if settings.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", settings[key]]
    return args + (["--allow-default-secret"] if settings["allow_default_secret"] else [])


#: discover settings naming a table -> the `lungseg discover` option it goes to
DISCOVER_TABLES = {"luna16_annotations": "--luna16", "diagnosis_table": "--diagnosis"}


def discover_inputs(wildcards):
    """The tables discovery reads besides the archive (LUNA16 annotations, diagnosis table), when set."""
    return {key: config["discover"][key] for key in DISCOVER_TABLES if config["discover"].get(key)}


def discover_annotation_args(wildcards, input):
    """`lungseg discover` options for those tables, each an argument of its own (shell-quoted by the rule)."""
    args = []
    for key, option in DISCOVER_TABLES.items():
        if key in input.keys():
            args += [option, input[key]]
    if config["discover"].get("diagnosis_patient_column"):
        args += ["--diagnosis-patient-column", config["discover"]["diagnosis_patient_column"]]
    return args


def all_cases():
    """Every case of the sheet, good or bad (each gets an ingest status)."""
    return sorted(case_table())


def status_files(wildcards):
    return [f"{RESULTS}/ingest/{c}.status.json" for c in all_cases()]


@functools.lru_cache(maxsize=4)
def _split_table_at(path, mtime_ns):
    return read_split_table(path)


def split_table():
    """case -> (split, fold) from the split checkpoint, read once per version of the file (input functions ask
    for it once per job: re-reading it each time made planning quadratic in the cases)."""
    path = checkpoints.split.get().output[0]
    return _split_table_at(path, os.stat(path).st_mtime_ns)


def split_of_cases():
    """case -> train/val/test, from the split checkpoint (which leaves quarantined cases out)."""
    return {case: split for case, (split, _fold) in split_table().items()}


def cases_in(split):
    return sorted(c for c, (s, _fold) in split_table().items() if s == split)


def fold_split(fold):
    """(training cases, validation cases) of one fold (fold 0 of 1: the train and val splits)."""
    return fold_cases(split_table(), int(fold), FOLDS)


def fold_of_case(case):
    """The fold whose validation set holds ``case`` (its out-of-fold prediction comes from that fold's model)."""
    return split_table()[case][1]


def out_of_fold_cases():
    """Every case outside the test set (k-fold cross-validation only)."""
    return sorted(c for c, (split, fold) in split_table().items() if fold is not None)


def experiment_dir(experiment):
    return f"{RESULTS}/experiments/{experiment}"


def model_file(experiment, fold):
    return f"{RESULTS}/experiments/{experiment}/folds/{fold}/model.pt"


def fold_models(wildcards):
    """The K fold models of an experiment: the test cases are predicted by their ensemble."""
    return [model_file(wildcards.experiment, fold) for fold in range(FOLDS)]


def good_cases():
    """Cases that passed ingest (every case in the split)."""
    return sorted(split_of_cases())


def case_file(case):
    return f"{RESULTS}/ingest/{case}.h5"


def nodule_patch_file(case):
    return f"{RESULTS}/nodules/{case}.patches.h5"


def candidate_patch_file(case):
    return f"{RESULTS}/candidates/{case}.patches.h5"


def training_files(wildcards, part):
    """`lungseg train --train` (part 0) / `--val` (part 1) of one fold: case files, a classifier's nodule patch files
    or the candidate classifier's candidate patch files."""
    cases = fold_split(wildcards.fold)[part]
    if wildcards.experiment in CANDIDATE_CLASSIFIERS:
        return [candidate_patch_file(c) for c in cases]
    return [(nodule_patch_file if wildcards.experiment in CLASSIFIERS else case_file)(c) for c in cases]


def scan_inputs(source):
    """The inputs standing for a scan: a volume (with the .raw/.zraw of a .mhd), or the DICOM series folder
    itself (its mtime changes when a slice is added or removed; a changed slice reaches the job through
    :func:`scan_fingerprint`). Listing every slice instead costs Snakemake ~20 ms per case of 250 slices."""
    source = Path(source)
    if source.is_file():
        data = [source.with_suffix(s) for s in (".raw", ".zraw")] if source.suffix == ".mhd" else []
        return [str(source)] + [str(p) for p in data if p.is_file()]
    return [str(source)] if source.is_dir() else []  # missing: the ingest job quarantines the case with the reason


def scan_files(case):
    """The inputs of a case's scan: the demo's slices (outputs of its rule), else :func:`scan_inputs`."""
    source = Path(case_table()[case]["dicom"])
    if config["source"] == "demo":
        return [str(source / name) for name in DEMO_DICOM_NAMES]
    return scan_inputs(source)


def scan_fingerprint(wildcards):
    """Size and mtime digest of every file of a DICOM folder (a parameter: a changed slice reruns the case)."""
    source = case_table()[wildcards.case]["dicom"] if config["source"] != "demo" else ""
    return folder_fingerprint(source) if source else ""


#: optional case sheet columns -> the `lungseg ingest` option their file goes to
ANNOTATION_COLUMNS = {"lidc_xml": "--lidc-xml", "luna16": "--luna16", "rtstruct": "--rtstruct", "seg": "--seg"}


def ingest_inputs(wildcards):
    """The scan's files, the label masks (label_<name> columns) and annotation files of one case."""
    row = case_table()[wildcards.case]
    inputs = {"scan": scan_files(wildcards.case)}
    inputs.update({k: v for k, v in row.items() if v and (k.startswith("label_") or k in ANNOTATION_COLUMNS)})
    return inputs


def ingest_args(wildcards, input):
    """`lungseg ingest` options of one case of the sheet: see :func:`ingest_options`."""
    return ingest_options(case_table()[wildcards.case], input)


def ingest_options(row, input):
    """`lungseg ingest` options of one case (labels, annotations, series selector, config's ingest
    section) as a list of arguments, each shell-quoted where the ingest job pastes them (`{params.options:q}`)."""
    args = []
    for key, path in input.items():
        if key.startswith("label_"):
            args += ["--label", f"{key[len('label_'):]}={path}"]
    for key, option in ANNOTATION_COLUMNS.items():
        if key in input.keys():
            args += [option, input[key]]
    if row.get("series"):  # one series of a folder holding several (a sheet of `lungseg discover` without links)
        args += [
            "--series",
            row["series"],
            "--secret-env",
            config.get("discover", {}).get("secret_env", "LUNGSEG_PSEUDONYM_KEY"),
        ]
    if config["source"] == "images":
        args += ["--voi", config["images"]["voi_lut"]]
    settings = config["ingest"]
    if settings.get("target_spacing") and config["source"] != "images":
        args += ["--target-spacing", *(str(s) for s in settings["target_spacing"])]
    args += ["--max-gap", str(settings["max_gap"]), "--agreement", str(settings["lidc_agreement"])]
    if settings.get("structure_labels") and any(k in input.keys() for k in ("rtstruct", "seg")):
        args += ["--structure-labels", json.dumps(settings["structure_labels"], sort_keys=True)]
    return args


def baseline_predictions(wildcards):
    """Baselines evaluated on every test case besides the trivial all-background: for the lung target the
    classical lung mask of the configured method (``classical_threshold_3d`` or ``classical_per_slice_otsu``);
    for nodules the classical nodule detector (workflow/rules/nodules.smk) with its probability map
    (input ``<name>_probabilities``)."""
    if LABEL == "lung" and config["lung_mask"]["method"] == "none":  # 2-D images without a classical mask
        return {}
    if LABEL == "lung":
        return {baseline_name(config["lung_mask"]["method"]): f"{RESULTS}/lungmask/{wildcards.case}.nii.gz"}
    if LABEL == "nodule":
        return {
            NODULE_BASELINE: f"{RESULTS}/baselines/nodules/{wildcards.case}.nii.gz",
            f"{NODULE_BASELINE}_probabilities": f"{RESULTS}/baselines/nodules/{wildcards.case}.probabilities.nii.gz",
        }
    return {}


def baseline_options(wildcards, input):
    """`lungseg evaluate --pred NAME=MASK` (and `--probabilities NAME=MAP`) of every baseline input."""
    options = []
    for name in [k for k in input.keys() if k != "case" and not k.endswith("_probabilities")]:
        options += ["--pred", f"{name}={input[name]}"]
        probabilities = f"{name}_probabilities"
        if probabilities in input.keys():
            options += ["--probabilities", f"{name}={input[probabilities]}"]
    return options


def probabilities_option(wildcards, input):
    """`lungseg evaluate --probabilities`: the candidates of an FROC, for the nodule target."""
    return ["--probabilities", f"{wildcards.experiment}={input.probabilities}"] if LABEL == "nodule" else []


def checkpoint_dir(wildcards):
    """The resumable checkpoints of one experiment's fold, keyed by its training settings (not threads)."""
    key = checkpoint_key(TRAINED[wildcards.experiment])
    return f"{model_file(wildcards.experiment, wildcards.fold).rsplit('/', 1)[0]}/checkpoints/{key}"


def train_launch(wildcards, resources):
    """The training program of an experiment's job: torchrun (srun torchrun on several nodes) + `lungseg train`,
    or with train.mode flower `lungseg fl-run`: a Flower server and one client per site of the case sheet."""
    settings = TRAINED[wildcards.experiment]
    if settings["mode"] != "flower":
        return torchrun_prefix(resources.get("nodes", 1), settings["nproc_per_node"]) + " -m lungseg train"
    fed = config["federated"]
    options = [f"--min-clients {fed['min_clients']}"] if fed["min_clients"] else []
    options += [f"--round-timeout {fed['round_timeout']}"] if fed["round_timeout"] else []
    options += [f"--evaluate-every {fed['evaluate_every']}"] if fed["evaluate_every"] > 1 else []
    options += [f"--proximal-mu {fed['proximal_mu']}"] if fed["proximal_mu"] else []
    options += (
        ["--launcher slurm"] if fed["launcher"] == "slurm" else []
    )  # client GPU jobs sized by the cluster section
    return " ".join(["lungseg fl-run --sites", shlex.quote(CASE_SHEET), *options])


def roi_mask_option(wildcards, input):
    """`lungseg predict --roi-mask`: used only if the experiment's model was trained on a region of interest of the lungs."""
    return ["--roi-mask", input.lung] if EXPERIMENTS[wildcards.experiment].get("roi_label", "lung") == "lung" else []


def evaluated_cases(wildcards):
    """The per-case metrics of one experiment on the test cases."""
    return expand(f"{RESULTS}/experiments/{wildcards.experiment}/metrics/cases/{{case}}.json", case=cases_in("test"))


def comparison_plan(wildcards):
    """The `lungseg compare` plan: reference, and per experiment its folds, training benchmark files, the
    models (each records the GPUs its training ran on) and (k folds) out-of-fold metrics. Nothing in it
    depends on where the jobs ran, so a local `snakemake -n` after a SLURM run has nothing to redo."""
    return json.dumps(
        {
            "reference": REFERENCE,
            "experiments": {
                name: {
                    "folds": FOLDS,
                    "models": [model_file(name, fold) for fold in range(FOLDS)],
                    "train_benchmarks": [f"{RESULTS}/benchmarks/train/{name}/{fold}.tsv" for fold in range(FOLDS)],
                    "oof_metrics": (
                        f"{RESULTS}/experiments/{name}/out_of_fold/metrics/metrics.csv" if FOLDS > 1 else None
                    ),
                }
                for name in EXPERIMENTS
            }
            | two_stage_plan(),
        },
        sort_keys=True,
    )


def two_stage_plan():
    """The two-stage detector in the comparison plan: compared as an experiment, its training cost that of both
    stages (the candidate experiment's fold models and the candidate classifier's)."""
    if not DETECTION:
        return {}
    stages = (
        [CANDIDATE_EXPERIMENT, CANDIDATE_CLASSIFIER] if CANDIDATE_EXPERIMENT in EXPERIMENTS else [CANDIDATE_CLASSIFIER]
    )
    return {
        TWO_STAGE: {
            "folds": FOLDS,
            "models": [model_file(name, fold) for name in stages for fold in range(FOLDS)],
            "train_benchmarks": [
                f"{RESULTS}/benchmarks/train/{name}/{fold}.tsv" for name in stages for fold in range(FOLDS)
            ],
            "oof_metrics": None,
        }
    }


def candidate_maps(case, out_of_fold=False):
    """{mask, probabilities} of a case by the candidate source: the classical detector's maps, or the candidate
    experiment's prediction (``out_of_fold``: its out-of-fold prediction)."""
    if CANDIDATE_EXPERIMENT == NODULE_BASELINE:
        folder = f"{RESULTS}/baselines/nodules"
    else:
        folder = f"{experiment_dir(CANDIDATE_EXPERIMENT)}/{'out_of_fold/' if out_of_fold else ''}predictions"
    return {"mask": f"{folder}/{case}.nii.gz", "probabilities": f"{folder}/{case}.probabilities.nii.gz"}


def candidate_probabilities(case):
    """The probability map a case's candidates come from: the candidate experiment's test prediction (fold
    ensemble) for a test case, else with k folds its out-of-fold prediction (a model that did not train on the
    case, as at test time), else its prediction by the one model (that trained on the training cases); or the
    classical detector's score map."""
    out_of_fold = FOLDS > 1 and case not in cases_in("test")
    return candidate_maps(case, out_of_fold)["probabilities"]


def candidate_source(wildcards):
    """The inputs of the candidates rule: the case's candidate map (:func:`candidate_probabilities`) and the split."""
    return {"probabilities": candidate_probabilities(wildcards.case), "split": f"{RESULTS}/split.tsv"}


def validation_folds():
    """The folds with validation cases (one fold: the val split; k folds: each fold's own cases)."""
    return [fold for fold in range(FOLDS) if fold_split(fold)[1]]


def validation_candidate_inputs(wildcards):
    """The inputs of choose_detection_score: the validation scans' case files and first-stage maps (those their
    candidates came from), and each fold's candidate classifier scores of them."""
    cases = [case for fold in validation_folds() for case in fold_split(fold)[1]]
    return {
        "cases": [case_file(case) for case in cases],
        "probabilities": [candidate_probabilities(case) for case in cases],
        "scores": [f"{RESULTS}/detection/validation/{fold}.scores.tsv" for fold in validation_folds()],
    }


def detection_outputs():
    """The candidate classifier's models and training logs and the two-stage detector's test metrics (in the
    metrics, the comparison and the FROC through rule aggregate), if detection.enabled."""
    if not DETECTION:
        return []
    return [
        expand(
            f"{RESULTS}/experiments/{CANDIDATE_CLASSIFIER}/folds/{{fold}}/{{name}}",
            fold=range(FOLDS),
            name=["model.pt", "metrics.csv"],
        ),
        expand(f"{RESULTS}/detection/metrics/cases/{{case}}.json", case=cases_in("test")),
    ]


def flatten(items):
    """Nested lists of paths (as from expand) -> one flat list."""
    return [p for item in items for p in (flatten(item) if isinstance(item, (list, tuple)) else [item])]


def all_outputs(wildcards):
    test = cases_in("test")
    return flatten(
        [
            f"{RESULTS}/split.tsv",
            f"{RESULTS}/quarantine.tsv",
            expand(f"{RESULTS}/lungmask/{{case}}.qa.json", case=good_cases()),
            f"{RESULTS}/lungmask/qa.tsv",  # lung-mask QA of every case (workflow/rules/lungmask.smk)
            # every model and its per-epoch log is a target of its own: a model that a killed retrain left
            # missing is trained again (resuming its checkpoint), even when the predictions of the old
            # model still exist (Snakemake skips a missing intermediate file whose consumers look done)
            expand(
                f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/{{name}}",
                experiment=EXPERIMENTS,
                fold=range(FOLDS),
                name=["model.pt", "metrics.csv"],
            ),
            expand(f"{RESULTS}/plots/training/{{experiment}}/{{fold}}.png", experiment=EXPERIMENTS, fold=range(FOLDS)),
            expand(
                f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.nii.gz", experiment=EXPERIMENTS, case=test
            ),
            expand(
                f"{RESULTS}/experiments/{{experiment}}/metrics/{{name}}",
                experiment=EXPERIMENTS,
                name=["metrics.csv", "summary.json"],
            ),
            # k-fold cross-validation: out-of-fold metrics of every case outside the test set
            (
                expand(f"{RESULTS}/experiments/{{experiment}}/out_of_fold/metrics/metrics.csv", experiment=EXPERIMENTS)
                if FOLDS > 1
                else []
            ),
            f"{RESULTS}/metrics/metrics.csv",
            f"{RESULTS}/metrics/summary.json",
            f"{RESULTS}/comparison/comparison.csv",
            f"{RESULTS}/comparison/comparison.json",
            # scaling study (workflow/rules/scaling.smk), if scaling.enabled
            (
                [f"{RESULTS}/scaling/scaling.csv", f"{RESULTS}/scaling/scaling.png"]
                if config["scaling"]["enabled"]
                else []
            ),
            expand(f"{RESULTS}/plots/overlays/{{case}}.png", case=test),
            # report pages and figures (workflow/rules/report.smk)
            f"{RESULTS}/report/cohort.html",
            f"{RESULTS}/report/metrics.html",
            f"{RESULTS}/report/comparison.html",
            f"{RESULTS}/report/paired_dice.png",
            f"{RESULTS}/report/metrics_distribution.png",
            f"{RESULTS}/report/worst_cases.png",
            f"{RESULTS}/report/best_cases.png",
            (
                f"{RESULTS}/report/sweep.html" if config["report"]["sweep"] else []
            ),  # a `lungseg sweep` table, if configured
            (f"{RESULTS}/report/froc.png" if LABEL == "nodule" else []),  # nodule detection: the FROC curves
            expand(f"{RESULTS}/report/workflow/{{page}}.html", page=["config", "versions", "runtimes"]),
            external_outputs(),  # the external test set (workflow/rules/external.smk), if external_test is set
            export_outputs(),  # DICOM-SEG files below exports/ (workflow/rules/export.smk), if export.dicom_seg
            dicomweb_outputs(),  # receipts of the SEG files stored in the PACS (workflow/rules/dicomweb.smk), if export.dicomweb
            # nodule tables, patches and classifiers (workflow/rules/classification.smk), if classification.enabled
            classification_outputs(),
            # the two-stage nodule detector (workflow/rules/detection.smk), if detection.enabled
            detection_outputs(),
        ]
    )


def split_strata_args():
    """`lungseg split` stratification: the folds (and the val/test cut) balanced for cases with and without the
    target label (e.g. nodules) and, with classification.enabled, for cases with a nodule their readers rate
    malignant (LIDC reader XML), so that every classifier fold has malignant nodules to learn and validate on."""
    if not config["split"]["stratify"]:
        return []
    malignancy = ["--stratify-malignancy", str(config["classification"]["malignant_min"])]
    return ["--stratify-label", LABEL] + (malignancy if config["classification"]["enabled"] else [])


# ---- nodule tables and patches (workflow/rules/classification.smk) ----

#: classification settings `lungseg nodule-patches --settings` reads
NODULE_PATCH_KEYS = ("patch_mm", "patch_size", "benign_max", "malignant_min", "indeterminate")


def nodule_patch_settings(wildcards):
    """`lungseg nodule-patches --settings`: the patch size and label protocol of the classification section."""
    return json.dumps({key: config["classification"][key] for key in NODULE_PATCH_KEYS}, sort_keys=True)


def nodule_patient(wildcards):
    return case_table()[wildcards.case]["patient_id"]


@functools.lru_cache(maxsize=4)
def _diagnosis_rows_at(path, mtime_ns):
    """The discovered diagnosis table (keyed by patient pseudonym): patient_id -> row."""
    import csv

    with open(path, newline="") as f:
        return {row["patient_id"]: row for row in csv.DictReader(f, delimiter="\t")}


def nodule_pathology(wildcards):
    """The case's patient-level pathology (benign, malignant or empty) from its case-sheet column, else the
    discovered diagnosis table; an unknown value stops the workflow with one line naming file, value and fix."""
    from lungseg.classification.labels import case_pathology
    from lungseg.ingest.errors import IngestError

    diagnosis, diagnosis_path = None, "diagnosis table"
    if config["source"] in ("discover", "dicomweb") and config["discover"].get("diagnosis_table"):
        diagnosis_path = checkpoints.discover.get().output.diagnosis
        diagnosis = _diagnosis_rows_at(diagnosis_path, os.stat(diagnosis_path).st_mtime_ns)
        diagnosis_path = f"{diagnosis_path} (discover.diagnosis_table {config['discover']['diagnosis_table']})"
    try:
        return case_pathology(
            case_table()[wildcards.case],
            diagnosis,
            column=config["classification"]["pathology_column"],
            sheet=CASE_SHEET,
            diagnosis_path=diagnosis_path,
        )
    except IngestError as exc:
        raise WorkflowError(str(exc)) from None


def nodule_table_file(case):
    return f"{RESULTS}/nodules/{case}.nodules.tsv"


def classifier_validation_predictions(experiment):
    """One classifier's out-of-fold predictions, fold by fold (fold i of k: the models of fold i on its validation cases)."""
    return [f"{RESULTS}/experiments/{experiment}/classification/folds/{fold}/validation.tsv" for fold in range(FOLDS)]


def classification_outputs():
    """Nodule tables, the classifiers (models and training logs per fold), their predictions, metrics, the comparison
    and the report page, if classification.enabled (workflow/rules/classification.smk)."""
    if not config["classification"]["enabled"]:
        return []
    return [
        f"{RESULTS}/nodules/nodules.tsv",
        expand(
            f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/{{name}}",
            experiment=CLASSIFIERS,
            fold=range(FOLDS),
            name=["model.pt", "metrics.csv"],
        ),
        expand(f"{RESULTS}/experiments/{{experiment}}/classification/summary.json", experiment=CLASSIFIERS),
        f"{RESULTS}/classification/comparison.json",
        f"{RESULTS}/report/classification.html",
        # the nodule target: each test case diagnosed end to end, matched to its reference nodules
        ([f"{RESULTS}/diagnosis/evaluation.json"] if diagnoses_planned() else []),
    ]


def diagnoses_planned():
    """`lungseg diagnose` per test case: for the nodule target, with a reference classifier of the readers' malignancy."""
    return LABEL == "nodule" and CLASSIFIERS[REFERENCE_CLASSIFIER]["cls_task"] != "pathology"


def nodule_tables(wildcards):
    """The nodule table of every case that passed ingest."""
    return expand(f"{RESULTS}/nodules/{{case}}.nodules.tsv", case=good_cases())


# ---- external test set (config external_test; its rules: workflow/rules/external.smk) ----

#: the external test set's settings ({name, cases}), or None
EXTERNAL = config.get("external_test")
#: where its outputs go: results/external/<name>
EXTERNAL_DIR = f"{RESULTS}/external/{EXTERNAL['name']}" if EXTERNAL else None


def _external_case_table():
    """case_id -> row of the external case sheet, checked when the workflow starts: IDs that repeat a folder name
    of their own paths (LIDC-IDRI-0001/, a PatientID) are refused, and so are patients of the cohort itself."""
    if not EXTERNAL:
        return {}
    sheet = EXTERNAL["cases"]
    try:
        cases = read_case_sheet(sheet)
    except CaseSheetError as exc:
        raise WorkflowError(f"external_test.cases: {exc}") from None
    for case, row in cases.items():
        folders = {
            part.lower()
            for key, path in row.items()
            if path and (key == "dicom" or key.startswith("label_") or key in ANNOTATION_COLUMNS)
            for part in Path(path).parts
            if part not in ("..", ".", "/")
        }
        for column in ("case_id", "patient_id"):
            if row[column].lower() in folders:
                raise WorkflowError(
                    f"external_test.cases: {sheet}, case {case}: {column} {row[column]!r} is a folder name of its own "
                    f"paths (often the PatientID, as in LIDC-IDRI-0001/): give the case a pseudonym (e.g. ext001)"
                )
    shared = sorted({row["patient_id"] for row in cases.values()} & {row["patient_id"] for row in CASES.values()})
    if shared:
        raise WorkflowError(
            f"external_test.cases: {sheet}: patient(s) {', '.join(shared[:5])} are in the cohort too (config "
            f"{config['source']}): an external test set must hold other patients than the model was trained on"
        )
    return cases


#: case_id -> row of the external case sheet (empty without external_test)
EXTERNAL_CASES = _external_case_table()


def external_scan_files(case):
    """The inputs of an external case's scan (:func:`scan_inputs`)."""
    return scan_inputs(EXTERNAL_CASES[case]["dicom"])


def external_scan_fingerprint(wildcards):
    return folder_fingerprint(EXTERNAL_CASES[wildcards.case]["dicom"])


def external_ingest_inputs(wildcards):
    """The scan's files, label masks and annotation files (lidc_xml, luna16) of one external case."""
    row = EXTERNAL_CASES[wildcards.case]
    inputs = {"scan": external_scan_files(wildcards.case)}
    inputs.update({k: v for k, v in row.items() if v and (k.startswith("label_") or k in ANNOTATION_COLUMNS)})
    return inputs


def external_ingest_args(wildcards, input):
    """`lungseg ingest` options of one external case, as :func:`ingest_options` gives them for the cohort's."""
    return ingest_options(EXTERNAL_CASES[wildcards.case], input)


def external_status_files(wildcards):
    return [f"{EXTERNAL_DIR}/ingest/{c}.status.json" for c in sorted(EXTERNAL_CASES)]


def external_good_cases():
    """External cases that passed ingest: the sheet's, less those in the external_quarantine checkpoint's table."""
    import csv

    with open(checkpoints.external_quarantine.get().output[0], newline="") as f:
        quarantined = {row["case"] for row in csv.DictReader(f, delimiter="\t")}
    return sorted(set(EXTERNAL_CASES) - quarantined)


def external_baseline_predictions(wildcards):
    """The baselines of one external case, as :func:`baseline_predictions` gives them for a test case."""
    if LABEL == "lung":
        return {baseline_name(config["lung_mask"]["method"]): f"{EXTERNAL_DIR}/lungmask/{wildcards.case}.nii.gz"}
    if LABEL == "nodule":
        return {
            NODULE_BASELINE: f"{EXTERNAL_DIR}/baselines/nodules/{wildcards.case}.nii.gz",
            f"{NODULE_BASELINE}_probabilities": f"{EXTERNAL_DIR}/baselines/nodules/{wildcards.case}.probabilities.nii.gz",
        }
    return {}


def external_evaluated(wildcards):
    """Per-case metrics of every experiment and of the baselines on the external cases that passed ingest."""
    cases = external_good_cases()
    return [
        *expand(
            f"{EXTERNAL_DIR}/experiments/{{experiment}}/metrics/cases/{{case}}.json", experiment=EXPERIMENTS, case=cases
        ),
        *expand(f"{EXTERNAL_DIR}/baselines/metrics/cases/{{case}}.json", case=cases),
    ]


def external_overlays(wildcards):
    """experiment/case -> overlay of that experiment's prediction on an external case."""
    return {
        f"{experiment}/{case}": f"{EXTERNAL_DIR}/plots/overlays/{experiment}/{case}.png"
        for experiment in EXPERIMENTS
        for case in external_good_cases()
    }


def external_report_page():
    return f"{RESULTS}/report/external_{EXTERNAL['name']}.html"


def external_outputs():
    """The external test set's final outputs (none without external_test)."""
    if not EXTERNAL:
        return []
    cases = external_good_cases()
    return [
        f"{EXTERNAL_DIR}/quarantine.tsv",
        expand(f"{EXTERNAL_DIR}/lungmask/{{case}}.qa.json", case=cases),
        expand(
            f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.nii.gz", experiment=EXPERIMENTS, case=cases
        ),
        f"{EXTERNAL_DIR}/metrics/metrics.csv",
        f"{EXTERNAL_DIR}/metrics/summary.json",
        list(external_overlays(None).values()),
        external_report_page(),
    ]


# ---- DICOM-SEG export (workflow/rules/export.smk): a SEG carries identifiers, so never below results/

from lungseg.export.dicom_seg import LABEL_KINDS
from lungseg.ingest.scan import VOLUME_SUFFIXES

#: where the SEG files go (config export.folder)
EXPORTS = config["export"]["folder"].rstrip("/")
if config["export"]["dicom_seg"] and (
    Path(EXPORTS).resolve() == Path(RESULTS).resolve() or Path(RESULTS).resolve() in Path(EXPORTS).resolve().parents
):
    raise WorkflowError(
        f"export.folder {EXPORTS!r} lies inside results ({RESULTS!r}); DICOM-SEG files carry patient identifiers "
        "and must stay out of results/: choose a folder beside it, e.g. exports"
    )
_EXPORT_SKIPS_SHOWN = set()


def _export_skip(reason):
    """One line on stderr per reason (all_outputs is evaluated more than once)."""
    if reason not in _EXPORT_SKIPS_SHOWN:
        _EXPORT_SKIPS_SHOWN.add(reason)
        print(f"export_seg: {reason}", file=sys.stderr)


def is_volume_case(case):
    """Whether a case's scan is a volume file (no DICOM instances a SEG could reference)."""
    return str(case_table()[case]["dicom"]).lower().endswith(VOLUME_SUFFIXES)


def export_outputs():
    """The DICOM-SEG of every test case of the reference experiment read from DICOM, if export.dicom_seg."""
    if not config["export"]["dicom_seg"]:
        return []
    if LABEL not in LABEL_KINDS:
        _export_skip(f"no DICOM-SEG export for target '{LABEL}' (export knows {', '.join(LABEL_KINDS)})")
        return []
    cases = []
    for case in cases_in("test"):
        if is_volume_case(case):
            _export_skip(f"case {case} is a volume file, not a DICOM series: no DICOM-SEG for it")
        else:
            cases.append(case)
    return expand(f"{EXPORTS}/{REFERENCE}/{{case}}.seg.dcm", case=cases)


def export_series_options(wildcards):
    """`lungseg export-seg` options picking the case's series (as ingest does) and ingest's gap tolerance."""
    row = case_table()[wildcards.case]
    args = ["--max-gap", str(config["ingest"]["max_gap"])]
    if row.get("series"):
        args += [
            "--series",
            row["series"],
            "--secret-env",
            config.get("discover", {}).get("secret_env", "LUNGSEG_PSEUDONYM_KEY"),
        ]
    return args


# ---- a PACS in the loop (workflow/rules/dicomweb.smk)

#: the links to this query's series that discovery reads (config["discover"]["root"], set in common.smk)
DICOMWEB_SERIES = f"{RESULTS}/dicomweb/series"

if config["export"]["dicomweb"] and not (config["source"] == "dicomweb" and config["export"]["dicom_seg"]):
    raise WorkflowError(
        "export.dicomweb stores the DICOM-SEG exports back in the PACS they came from: it needs source: dicomweb "
        "and export.dicom_seg: true"
    )


def dicomweb_series(wildcards):
    """The discover checkpoint's input with source dicomweb: the links dicomweb_retrieve writes ({} otherwise)."""
    return {"retrieved": DICOMWEB_SERIES} if config["source"] == "dicomweb" else {}


def dicomweb_connection_args(wildcards):
    """`--url`, `--timeout` and the names (never the values) of the credential variables."""
    settings = config["dicomweb"]
    args = ["--url", settings["url"], "--timeout", str(settings["timeout"])]
    for key in ("user_env", "password_env"):
        if settings.get(key):
            args += [f"--{key.replace('_', '-')}", settings[key]]
    return args


def dicomweb_filter_args(wildcards):
    """`--filter KEY=VALUE` per dicomweb.filters entry (a list: its values joined by '\\', DICOM's "any of"),
    and `--labels` with dicomweb.labels."""
    args = []
    for key, value in sorted(config["dicomweb"]["filters"].items()):
        text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
        args += ["--filter", f"{key}={text}"]
    return args + (["--labels"] if config["dicomweb"]["labels"] else [])


def dicomweb_outputs():
    """Receipts of the DICOM-SEG files stored in the PACS, if export.dicomweb (none otherwise)."""
    if not config["export"]["dicomweb"]:
        return []
    return [
        f"{RESULTS}/dicomweb/stored/{Path(seg).parent.name}/{Path(seg).name.removesuffix('.seg.dcm')}.json"
        for seg in export_outputs()
    ]


#: the lungseg command of the configured lung-mask method (CT volumes or 2-D radiographs)
LUNG_MASK_COMMAND = "image-lung-mask" if config["lung_mask"]["method"] in IMAGE_LUNG_MASK_METHODS else "lung-mask"
