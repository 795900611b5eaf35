# Patient-level train/val/test split (the same function decides which cases each rule sees).


rule split:
    output:
        f"{RESULTS}/split.tsv",
    params:
        cases=" ".join(f"--case {c} {row['patient_id']}" for c, row in sorted(CASES.items())),
        fractions=" ".join(str(f) for f in config["split"]["fractions"]),
        seed=config["split"]["seed"],
    log:
        "logs/split/split.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg split {params.cases} --fractions {params.fractions} --seed {params.seed} -o {output} > {log} 2>&1"
