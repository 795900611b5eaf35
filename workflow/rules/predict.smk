# CPU inference on the test split; masks written in each scan's own geometry.


rule predict:
    input:
        model=f"{RESULTS}/model/{LABEL}/model.pt",
        case=f"{RESULTS}/ingest/{{case}}.h5",
        # the classical lung mask: post-processing, and the region of a model trained on lung crops
        lung=f"{RESULTS}/lungmask/{{case}}.nii.gz",
    output:
        f"{RESULTS}/predictions/{{case}}.nii.gz",
    params:
        batch_size=config["predict"]["batch_size"],
        flips=config["predict"]["flips"],
        # --roi-mask is used only if the model was trained on a region of interest (of the lungs)
        roi=lambda wildcards, input: ["--roi-mask", input.lung] if config["train"].get("roi_label", "lung") == "lung" else [],
        lung=lambda wildcards, input: ["--lung-mask", input.lung] if config["predict"]["restrict_to_lung"] else [],
        components=config["predict"]["largest_components"],
    threads: config["predict"]["threads"]
    log:
        "logs/predict/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg predict {input.case:q} --model {input.model:q} -o {output:q}"
        " --batch-size {params.batch_size} --threads {threads} --flips {params.flips:q} {params.roi:q} {params.lung:q}"
        " --largest-components {params.components} > {log:q} 2>&1"
