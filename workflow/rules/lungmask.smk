# Classical lung-parenchyma mask per case, in the scan's geometry, with QA figures.


rule lung_mask:
    input:
        f"{RESULTS}/ingest/{{case}}.h5",
    output:
        mask=f"{RESULTS}/lungmask/{{case}}.nii.gz",
        qa=f"{RESULTS}/lungmask/{{case}}.qa.json",
    params:
        method=config["lung_mask"]["method"],
    log:
        "logs/lung_mask/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lung_mask/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg lung-mask {input} --method {params.method} -o {output.mask} --qa {output.qa} > {log} 2>&1"
