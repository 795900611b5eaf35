# Patient-level train/val/test split (and k folds) over the cases that passed ingest. A checkpoint: the rules
# after it (train, predict, evaluate) take their case lists from its output.


if config["source"] == "demo":

    rule demo_case_sheet:
        output:
            CASE_SHEET,
        log:
            "logs/demo_case_sheet/demo_case_sheet.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_case_sheet/demo_case_sheet.tsv"
        run:
            write_case_sheet(output[0], CASES.values())


checkpoint split:
    input:
        cases=CASE_SHEET,
        status=status_files,
    output:
        f"{RESULTS}/split.tsv",
    log:
        "logs/split/split.log",
    benchmark:
        f"{RESULTS}/benchmarks/split/split.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        fractions=" ".join(str(f) for f in config["split"]["fractions"]),
        seed=config["split"]["seed"],
        folds=FOLDS,
        stratify=split_strata_args(),
    shell:
        "lungseg split --cases {input.cases:q} --status {input.status:q} --fractions {params.fractions} --seed {params.seed}"
        " --folds {params.folds} {params.stratify:q} -o {output:q} > {log:q} 2>&1"
