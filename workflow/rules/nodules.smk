# The classical nodule detector: the baseline a trained nodule model must beat (train.label: nodule).


rule nodule_baseline:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        lung=f"{RESULTS}/lungmask/{{case}}.nii.gz",
    output:
        mask=f"{RESULTS}/baselines/nodules/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/baselines/nodules/{{case}}.probabilities.nii.gz",
    log:
        "logs/nodule_baseline/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/nodule_baseline/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg nodule-baseline {input.case:q} --lung-mask {input.lung:q} -o {output.mask:q}"
        " --probabilities {output.probabilities:q} > {log:q} 2>&1"
