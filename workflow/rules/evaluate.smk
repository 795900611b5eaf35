# Per-case metrics (model, baselines) and their aggregation.


rule evaluate:
    input:
        unpack(predictions_to_evaluate),
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        f"{RESULTS}/metrics/cases/{{case}}.json",
    params:
        label=LABEL,
        detection="--detection" if LABEL == "nodule" else "",
        preds=lambda wildcards, input: [arg for k, v in input.items() if k != "case" for arg in ("--pred", f"{k}={v}")],
    log:
        "logs/evaluate/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg evaluate --case {input.case:q} --label {params.label:q} {params.preds:q} {params.detection}"
        " -o {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        lambda wildcards: expand(f"{RESULTS}/metrics/cases/{{case}}.json", case=cases_in("test")),
    output:
        csv=report(
            f"{RESULTS}/metrics/metrics.csv",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "per-case metrics (CSV download)"},
        ),
        json=f"{RESULTS}/metrics/summary.json",
    params:
        samples=config["evaluate"]["bootstrap_samples"],
        seed=config["evaluate"]["bootstrap_seed"],
    log:
        "logs/aggregate/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/aggregate.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg aggregate {input:q} --csv {output.csv:q} --json {output.json:q}"
        " --bootstrap-samples {params.samples} --seed {params.seed} > {log:q} 2>&1"
