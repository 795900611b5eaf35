# Per-case metrics of each experiment and of the baselines, their aggregation per experiment and over
# all methods, and the comparison of the experiments with the reference.


rule evaluate:
    input:
        pred=f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/experiments/{{experiment}}/predictions/{{case}}.probabilities.nii.gz",
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        f"{RESULTS}/experiments/{{experiment}}/metrics/cases/{{case}}.json",
    log:
        "logs/evaluate/{experiment}/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{experiment}}/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        label=LABEL,
        detection="--detection" if LABEL == "nodule" else "",
        pred=lambda wildcards, input: ["--pred", f"{wildcards.experiment}={input.pred}"],
        probabilities=probabilities_option,
        fold=[],
    shell:
        "lungseg evaluate --case {input.case:q} --label {params.label:q} {params.pred:q} {params.probabilities:q}"
        " --no-baseline {params.fold:q} {params.detection} -o {output:q} > {log:q} 2>&1"


use rule evaluate as evaluate_out_of_fold with:
    input:
        pred=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/predictions/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/predictions/{{case}}.probabilities.nii.gz",
        case=f"{RESULTS}/ingest/{{case}}.h5",
        # the fold of the case (params) comes from the split checkpoint: a job run elsewhere (SLURM) needs it as input
        split=f"{RESULTS}/split.tsv",
    output:
        f"{RESULTS}/experiments/{{experiment}}/out_of_fold/metrics/cases/{{case}}.json",
    log:
        "logs/evaluate_out_of_fold/{experiment}/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_out_of_fold/{{experiment}}/{{case}}.tsv"
    params:
        label=LABEL,
        detection="--detection" if LABEL == "nodule" else "",
        pred=lambda wildcards, input: ["--pred", f"{wildcards.experiment}={input.pred}"],
        probabilities=probabilities_option,
        fold=lambda wildcards: ["--fold", str(fold_of_case(wildcards.case))],


rule evaluate_baselines:
    input:
        unpack(baseline_predictions),
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        f"{RESULTS}/baselines/metrics/cases/{{case}}.json",
    log:
        "logs/evaluate_baselines/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_baselines/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        label=LABEL,
        detection="--detection" if LABEL == "nodule" else "",
        preds=baseline_options,
    shell:
        "lungseg evaluate --case {input.case:q} --label {params.label:q} {params.preds:q} {params.detection}"
        " -o {output:q} > {log:q} 2>&1"


rule aggregate_experiment:
    input:
        evaluated_cases,
    output:
        csv=f"{RESULTS}/experiments/{{experiment}}/metrics/metrics.csv",
        json=f"{RESULTS}/experiments/{{experiment}}/metrics/summary.json",
    log:
        "logs/aggregate_experiment/{experiment}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate_experiment/{{experiment}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        samples=config["evaluate"]["bootstrap_samples"],
        seed=config["evaluate"]["bootstrap_seed"],
    shell:
        "lungseg aggregate {input:q} --csv {output.csv:q} --json {output.json:q}"
        " --bootstrap-samples {params.samples} --seed {params.seed} > {log:q} 2>&1"


use rule aggregate_experiment as aggregate_out_of_fold with:
    input:
        lambda wildcards: expand(
            f"{RESULTS}/experiments/{wildcards.experiment}/out_of_fold/metrics/cases/{{case}}.json",
            case=out_of_fold_cases(),
        ),
    output:
        csv=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/metrics/metrics.csv",
        json=f"{RESULTS}/experiments/{{experiment}}/out_of_fold/metrics/summary.json",
    log:
        "logs/aggregate_out_of_fold/{experiment}.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate_out_of_fold/{{experiment}}.tsv"


use rule aggregate_experiment as aggregate with:
    input:
        lambda wildcards: [
            *expand(
                f"{RESULTS}/experiments/{{experiment}}/metrics/cases/{{case}}.json",
                experiment=EXPERIMENTS,
                case=cases_in("test"),
            ),
            *expand(f"{RESULTS}/baselines/metrics/cases/{{case}}.json", case=cases_in("test")),
            *(expand(f"{RESULTS}/detection/metrics/cases/{{case}}.json", case=cases_in("test")) if DETECTION else []),
        ],
    output:
        csv=report(
            f"{RESULTS}/metrics/metrics.csv",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "per-case metrics (CSV download)"},
        ),
        json=f"{RESULTS}/metrics/summary.json",
    log:
        "logs/aggregate/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate/aggregate.tsv"


rule compare:
    input:
        csv=f"{RESULTS}/metrics/metrics.csv",
        # the trained models (their benchmark files hold the training times) and out-of-fold metrics
        models=expand(
            f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/model.pt", experiment=EXPERIMENTS, fold=range(FOLDS)
        ),
        oof=(
            expand(f"{RESULTS}/experiments/{{experiment}}/out_of_fold/metrics/metrics.csv", experiment=EXPERIMENTS)
            if FOLDS > 1
            else []
        ),
    output:
        csv=report(
            f"{RESULTS}/comparison/comparison.csv",
            caption="../report/comparison_table.rst",
            category="Evaluation",
            subcategory="Comparison",
            labels={"table": "experiments compared (CSV download)"},
        ),
        json=f"{RESULTS}/comparison/comparison.json",
    log:
        "logs/compare/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare/compare.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        plan=comparison_plan,
        samples=config["evaluate"]["bootstrap_samples"],
        seed=config["evaluate"]["bootstrap_seed"],
    shell:
        "lungseg compare {input.csv:q} --plan {params.plan:q} --csv {output.csv:q} --json {output.json:q}"
        " --bootstrap-samples {params.samples} --seed {params.seed} > {log:q} 2>&1"
