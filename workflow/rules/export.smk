# Opt-in (export.dicom_seg): the reference experiment's test predictions as DICOM-SEG files on their
# source series, below export.folder (default exports/), never below results/: a SEG carries the source
# study's patient module and UIDs (docs/how-to/dicom-seg-export.md). Each SEG is read back through its
# references and compared with the prediction before the job succeeds (--check). The log names no UID
# and no patient. A case read from a volume file (NIfTI, ...) has no instances to reference: left out.


rule export_seg:
    input:
        mask=f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
        models=fold_models,  # the algorithm version: lungseg's + a hash of the models
        scan=lambda wildcards: scan_files(wildcards.case),
    output:
        f"{EXPORTS}/{{experiment}}/{{case}}.seg.dcm",
    log:
        "logs/export_seg/{experiment}/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_seg/{{experiment}}/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        dicom=lambda wildcards: case_table()[wildcards.case]["dicom"],
        models=lambda wildcards, input: [arg for model in input.models for arg in ("--model", model)],
        label=LABEL,
        series=export_series_options,
    shell:
        "lungseg export-seg {input.mask:q} --dicom={params.dicom:q} -o {output:q} {params.models:q}"
        " --experiment {wildcards.experiment:q} --label {params.label:q} {params.series:q} --check > {log:q} 2>&1"


rule export_seg_all:
    # `snakemake export_seg_all`: only the DICOM-SEG files (and what they need), not the whole workflow
    input:
        lambda wildcards: export_outputs(),
