# Tables and figures for `snakemake --report`, in four categories: Data, Training, Evaluation, Workflow details.
import json

WORKFLOW_PAGES = {name: f"{RESULTS}/report/workflow/{name}.html" for name in ("config", "versions", "runtimes")}


rule plot_training:
    input:
        f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/metrics.csv",
    output:
        report(
            f"{RESULTS}/plots/training/{{experiment}}/{{fold}}.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="Training curves",
            labels={"experiment": "{experiment}", "fold": "{fold}"},
        ),
    log:
        "logs/plot_training/{experiment}/{fold}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_training/{{experiment}}/{{fold}}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg plot-training {input:q} -o {output:q} > {log:q} 2>&1"


rule plot_overlay:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        pred=f"{RESULTS}/experiments/{REFERENCE}/predictions/{{case}}.nii.gz",
    output:
        report(
            f"{RESULTS}/plots/overlays/{{case}}.png",
            caption="../report/overlay.rst",
            category="Evaluation",
            subcategory="Overlays of every test case",
            labels={"case": "{case}"},
        ),
    log:
        "logs/plot_overlay/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_overlay/{{case}}.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        label=LABEL,
    shell:
        "lungseg plot-overlay --case {input.case:q} --pred {input.pred:q} --label {params.label:q} -o {output:q} > {log:q} 2>&1"


rule cohort_table:
    input:
        cases=lambda wildcards: [case_file(c) for c in good_cases()],
        split=f"{RESULTS}/split.tsv",
    output:
        report(
            f"{RESULTS}/report/cohort.html",
            caption="../report/cohort.rst",
            category="Data",
            subcategory="Cohort",
            labels={"table": "cohort"},
        ),
    log:
        "logs/cohort_table/cohort_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/cohort_table/cohort_table.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg report cohort {input.cases:q} --split {input.split:q} -o {output:q} > {log:q} 2>&1"


rule metrics_table:
    input:
        summary=f"{RESULTS}/metrics/summary.json",
        csv=f"{RESULTS}/metrics/metrics.csv",
    output:
        report(
            f"{RESULTS}/report/metrics.html",
            caption="../report/metrics_table.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "summary with 95% CIs, per case"},
        ),
    log:
        "logs/metrics_table/metrics_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/metrics_table/metrics_table.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg report metrics --summary {input.summary:q} --csv {input.csv:q} -o {output:q} > {log:q} 2>&1"


rule comparison_page:
    input:
        f"{RESULTS}/comparison/comparison.json",
    output:
        report(
            f"{RESULTS}/report/comparison.html",
            caption="../report/comparison.rst",
            category="Evaluation",
            subcategory="Comparison",
            labels={"table": "experiments compared with the reference"},
        ),
    log:
        "logs/comparison_page/comparison_page.log",
    benchmark:
        f"{RESULTS}/benchmarks/comparison_page/comparison_page.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg report comparison --json {input:q} -o {output:q} > {log:q} 2>&1"


rule paired_dice:
    input:
        f"{RESULTS}/metrics/metrics.csv",
    output:
        report(
            f"{RESULTS}/report/paired_dice.png",
            caption="../report/paired_dice.rst",
            category="Evaluation",
            subcategory="Comparison",
            labels={"figure": "per-case Dice of every experiment"},
        ),
    log:
        "logs/paired_dice/paired_dice.log",
    benchmark:
        f"{RESULTS}/benchmarks/paired_dice/paired_dice.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        reference=REFERENCE,
    shell:
        "lungseg report paired-dice --csv {input:q} --reference {params.reference:q} -o {output:q} > {log:q} 2>&1"


rule metrics_distribution:
    input:
        f"{RESULTS}/metrics/metrics.csv",
    output:
        report(
            f"{RESULTS}/report/metrics_distribution.png",
            caption="../report/metrics_distribution.rst",
            category="Evaluation",
            subcategory="Figures",
            labels={"figure": "per-case distribution"},
        ),
    log:
        "logs/metrics_distribution/metrics_distribution.log",
    benchmark:
        f"{RESULTS}/benchmarks/metrics_distribution/metrics_distribution.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg report distribution {input:q} -o {output:q} > {log:q} 2>&1"


rule extreme_cases:
    input:
        csv=f"{RESULTS}/metrics/metrics.csv",
        cases=lambda wildcards: [case_file(c) for c in cases_in("test")],
        preds=lambda wildcards: [f"{RESULTS}/experiments/{REFERENCE}/predictions/{c}.nii.gz" for c in cases_in("test")],
    output:
        worst=report(
            f"{RESULTS}/report/worst_cases.png",
            caption="../report/worst_cases.rst",
            category="Evaluation",
            subcategory="Figures",
            labels={"figure": "worst cases"},
        ),
        best=report(
            f"{RESULTS}/report/best_cases.png",
            caption="../report/best_cases.rst",
            category="Evaluation",
            subcategory="Figures",
            labels={"figure": "best cases"},
        ),
    log:
        "logs/extreme_cases/extreme_cases.log",
    benchmark:
        f"{RESULTS}/benchmarks/extreme_cases/extreme_cases.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        label=LABEL,
        pairs=lambda wildcards, input: [arg for c, p in zip(input.cases, input.preds) for arg in ("--pair", f"{c}={p}")],
        method=REFERENCE,
        n_cases=config["report"]["extreme_cases"],
        n_slices=config["report"]["overlay_slices"],
    shell:
        "lungseg report extremes --csv {input.csv:q} {params.pairs:q} --label {params.label:q} --method {params.method:q} --metric dice"
        " --cases {params.n_cases} --slices {params.n_slices} --worst {output.worst:q} --best {output.best:q} > {log:q} 2>&1"


rule workflow_pages:
    input:
        # every final output but these pages: they are made last, so the run-time table is complete
        lambda wildcards: [p for p in flatten(all_outputs(wildcards)) if p not in WORKFLOW_PAGES.values()],
    output:
        config=report(
            WORKFLOW_PAGES["config"],
            caption="../report/config.rst",
            category="Workflow details",
            labels={"page": "configuration"},
        ),
        versions=report(
            WORKFLOW_PAGES["versions"],
            caption="../report/versions.rst",
            category="Workflow details",
            labels={"page": "software versions"},
        ),
        runtimes=report(
            WORKFLOW_PAGES["runtimes"],
            caption="../report/runtimes.rst",
            category="Workflow details",
            labels={"page": "run times"},
        ),
    log:
        "logs/workflow_pages/workflow_pages.log",
    benchmark:
        f"{RESULTS}/benchmarks/workflow_pages/workflow_pages.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        config=json.dumps(config, sort_keys=True),
        benchmarks=f"{RESULTS}/benchmarks",
    shell:
        "lungseg report workflow --config-json {params.config:q} --benchmarks {params.benchmarks:q}"
        " --config-out {output.config:q} --versions-out {output.versions:q} --runtimes-out {output.runtimes:q} > {log:q} 2>&1"


# the table of a `lungseg sweep` (runs made outside the DAG), only when report.sweep names its --out-dir
if config["report"]["sweep"]:

    rule sweep_table:
        input:
            # the sweep's own table: a rerun sweep (newer sweep.csv) makes the page again
            os.path.join(config["report"]["sweep"], "sweep.csv"),
        output:
            report(
                f"{RESULTS}/report/sweep.html",
                caption="../report/sweep.rst",
                category="Training",
                subcategory="Sweep",
                labels={"table": "lungseg sweep runs"},
            ),
        log:
            "logs/sweep_table/sweep_table.log",
        benchmark:
            f"{RESULTS}/benchmarks/sweep_table/sweep_table.tsv"
        conda:
            "../../envs/report.yaml"
        params:
            folder=lambda wildcards, input: os.path.dirname(input[0]),
        shell:
            "lungseg report sweep --folder {params.folder:q} -o {output:q} > {log:q} 2>&1"


if LABEL == "nodule":

    rule froc_plot:
        input:
            f"{RESULTS}/metrics/summary.json",
        output:
            report(
                f"{RESULTS}/report/froc.png",
                caption="../report/froc.rst",
                category="Evaluation",
                subcategory="Figures",
                labels={"figure": "FROC of nodule detection"},
            ),
        log:
            "logs/froc_plot/froc_plot.log",
        benchmark:
            f"{RESULTS}/benchmarks/froc_plot/froc_plot.tsv"
        conda:
            "../../envs/report.yaml"
        shell:
            "lungseg report froc --summary {input:q} -o {output:q} > {log:q} 2>&1"


# the external test set (config external_test, workflow/rules/external.smk): its metrics beside the internal test
# set's, the gap in one sentence, and the overlays
if EXTERNAL:

    rule external_page:
        input:
            internal=f"{RESULTS}/metrics/summary.json",
            external=f"{EXTERNAL_DIR}/metrics/summary.json",
            csv=f"{EXTERNAL_DIR}/metrics/metrics.csv",
            overlays=lambda wildcards: list(external_overlays(wildcards).values()),
        output:
            report(
                external_report_page(),
                caption="../report/external.rst",
                category="External test set",
                labels={"page": "internal vs external test set"},
            ),
        log:
            "logs/external_page/external_page.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_page/external_page.tsv"
        conda:
            "../../envs/report.yaml"
        params:
            name=EXTERNAL["name"],
            reference=REFERENCE,
            label=LABEL,
            overlays=lambda wildcards: [
                arg for key, png in external_overlays(wildcards).items() for arg in ("--overlay", f"{key}={png}")
            ],
        shell:
            "lungseg report external --internal {input.internal:q} --external {input.external:q}"
            " --external-csv {input.csv:q} --name {params.name:q} --reference {params.reference:q}"
            " --label {params.label:q} {params.overlays:q} -o {output:q} > {log:q} 2>&1"
