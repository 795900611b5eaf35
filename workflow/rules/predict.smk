# CPU inference in each scan's own geometry: the test cases by the ensemble of an experiment's fold
# models (one model without cross-validation), and with k folds the out-of-fold prediction of every
# other case by the model of the fold that validated on it.


rule predict:
    input:
        models=fold_models,
        case=f"{RESULTS}/ingest/{{case}}.h5",
        # the classical lung mask: post-processing, and the region of a model trained on lung crops
        lung=f"{RESULTS}/lungmask/{{case}}.nii.gz",
    output:
        mask=f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
        # the foreground probability map (uint8, 255 p): the FROC of nodule detections is read from it
        probabilities=f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.probabilities.nii.gz",
    log:
        "logs/predict/{experiment}/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{experiment}}/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    params:
        models=lambda wildcards, input: [arg for model in input.models for arg in ("--model", model)],
        batch_size=config["predict"]["batch_size"],
        flips=config["predict"]["flips"],
        roi=roi_mask_option,
        lung=lambda wildcards, input: ["--lung-mask", input.lung] if config["predict"]["restrict_to_lung"] else [],
        components=config["predict"]["largest_components"],
    shell:
        "lungseg predict {input.case:q} {params.models:q} -o {output.mask:q} --probabilities {output.probabilities:q}"
        " --batch-size {params.batch_size} --threads {threads} --flips {params.flips:q} {params.roi:q} {params.lung:q}"
        " --largest-components {params.components} > {log:q} 2>&1"


use rule predict as predict_out_of_fold with:
    input:
        models=lambda wildcards: [model_file(wildcards.experiment, fold_of_case(wildcards.case))],
        case=f"{RESULTS}/ingest/{{case}}.h5",
        split=f"{RESULTS}/split.tsv",  # the case's fold (the model to use) comes from the split checkpoint
        lung=f"{RESULTS}/lungmask/{{case}}.nii.gz",
    output:
        mask=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/predictions/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/predictions/{{case}}.probabilities.nii.gz",
    log:
        "logs/predict_out_of_fold/{experiment}/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_out_of_fold/{{experiment}}/{{case}}.tsv"
