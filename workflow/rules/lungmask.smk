# Classical lung-parenchyma mask per case (right/left lungs), in the scan's geometry, with QA.
# 2-D images (lung_mask.method radiograph_otsu or none) get theirs from `lungseg image-lung-mask`.


rule lung_mask:
    input:
        f"{RESULTS}/ingest/{{case}}.h5",
    output:
        mask=f"{RESULTS}/lungmask/{{case}}.nii.gz",
        h5=f"{RESULTS}/lungmask/{{case}}.h5",
        qa=f"{RESULTS}/lungmask/{{case}}.qa.json",
    log:
        "logs/lung_mask/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lung_mask/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        command=LUNG_MASK_COMMAND,
        method=config["lung_mask"]["method"],
    shell:
        "lungseg {params.command} {input:q} --method {params.method:q} -o {output.mask:q} --h5 {output.h5:q}"
        " --qa {output.qa:q} > {log:q} 2>&1"


rule lung_mask_qa:
    input:
        lambda wildcards: expand(f"{RESULTS}/lungmask/{{case}}.qa.json", case=good_cases()),
    output:
        report(
            f"{RESULTS}/lungmask/qa.tsv",
            caption="../report/lungmask_qa.rst",
            category="Data",
            subcategory="Lung masks",
            labels={"table": "lung-mask QA per case (TSV)"},
        ),
    log:
        "logs/lung_mask_qa/lung_mask_qa.log",
    benchmark:
        f"{RESULTS}/benchmarks/lung_mask_qa/lung_mask_qa.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg lung-mask-qa {input:q} -o {output:q} > {log:q} 2>&1"
