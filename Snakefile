# lungseg: chest CT (DICOM) -> lung / nodule segmentation model, predictions, metrics, report.
# All logic lives in the `lungseg` package (src/lungseg); the rules only wire files together.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/dicomweb.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/lungmask.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/nodules.smk"
include: "workflow/rules/classification.smk"
include: "workflow/rules/detection.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        all_outputs,
