# CPU inference on the test split; masks written in each scan's own geometry.


rule predict:
    input:
        model=f"{RESULTS}/model/{LABEL}/model.pt",
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        f"{RESULTS}/predictions/{{case}}.nii.gz",
    params:
        batch_size=config["predict"]["batch_size"],
    threads: config["predict"]["threads"]
    log:
        "logs/predict/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg predict {input.case} --model {input.model} -o {output}"
        " --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"
