# The external test set (config external_test: {name, cases}), e.g. real LIDC-IDRI scans beside the demo's
# phantoms: every case of its case sheet is ingested (bad ones quarantined), lung-masked, predicted by every
# experiment's fold ensemble exactly as the test cases are, evaluated with the baselines, aggregated and drawn as
# overlays, all below results/external/<name>/. The rules are the cohort's (`use rule ... with:`) on other paths;
# the report page (external_page) is in report.smk. Nothing here runs without external_test.


if EXTERNAL:

    use rule ingest as external_ingest with:
        input:
            unpack(external_ingest_inputs),
        output:
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
            status=f"{EXTERNAL_DIR}/ingest/{{case}}.status.json",
        log:
            "logs/external_ingest/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_ingest/{{case}}.tsv"
        params:
            source=lambda wildcards: EXTERNAL_CASES[wildcards.case]["dicom"],
            options=external_ingest_args,
            fingerprint=external_scan_fingerprint,

    # which external cases go on: those not in this table (a checkpoint); fails when none could be ingested
    checkpoint external_quarantine:
        input:
            external_status_files,
        output:
            report(
                f"{EXTERNAL_DIR}/quarantine.tsv",
                caption="../report/external_quarantine.rst",
                category="External test set",
                labels={"table": "external cases left out"},
            ),
        log:
            "logs/external_quarantine/external_quarantine.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_quarantine/external_quarantine.tsv"
        conda:
            "../../envs/preprocess.yaml"
        shell:
            "lungseg quarantine-table {input:q} -o {output:q} --require-ok > {log:q} 2>&1"

    use rule lung_mask as external_lung_mask with:
        input:
            f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
        output:
            mask=f"{EXTERNAL_DIR}/lungmask/{{case}}.nii.gz",
            h5=f"{EXTERNAL_DIR}/lungmask/{{case}}.h5",
            qa=f"{EXTERNAL_DIR}/lungmask/{{case}}.qa.json",
        log:
            "logs/external_lung_mask/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_lung_mask/{{case}}.tsv"

    # the ensemble of the experiment's fold models, with predict's settings (params, threads)
    use rule predict as external_predict with:
        input:
            models=fold_models,
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
            lung=f"{EXTERNAL_DIR}/lungmask/{{case}}.nii.gz",
        output:
            mask=f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
            probabilities=f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.probabilities.nii.gz",
        log:
            "logs/external_predict/{experiment}/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_predict/{{experiment}}/{{case}}.tsv"

    use rule nodule_baseline as external_nodule_baseline with:
        input:
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
            lung=f"{EXTERNAL_DIR}/lungmask/{{case}}.nii.gz",
        output:
            mask=f"{EXTERNAL_DIR}/baselines/nodules/{{case}}.nii.gz",
            probabilities=f"{EXTERNAL_DIR}/baselines/nodules/{{case}}.probabilities.nii.gz",
        log:
            "logs/external_nodule_baseline/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_nodule_baseline/{{case}}.tsv"

    # evaluate's params: --detection and --probabilities for the nodule target
    use rule evaluate as external_evaluate with:
        input:
            pred=f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
            probabilities=f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.probabilities.nii.gz",
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
        output:
            f"{EXTERNAL_DIR}/experiments/{{experiment}}/metrics/cases/{{case}}.json",
        log:
            "logs/external_evaluate/{experiment}/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_evaluate/{{experiment}}/{{case}}.tsv"

    use rule evaluate_baselines as external_evaluate_baselines with:
        input:
            unpack(external_baseline_predictions),
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
        output:
            f"{EXTERNAL_DIR}/baselines/metrics/cases/{{case}}.json",
        log:
            "logs/external_evaluate_baselines/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_evaluate_baselines/{{case}}.tsv"

    # every experiment and baseline on the external cases, as `aggregate` does on the test cases
    use rule aggregate_experiment as external_aggregate with:
        input:
            external_evaluated,
        output:
            csv=report(
                f"{EXTERNAL_DIR}/metrics/metrics.csv",
                caption="../report/external_metrics.rst",
                category="External test set",
                labels={"table": "per-case metrics on the external cases (CSV download)"},
            ),
            json=f"{EXTERNAL_DIR}/metrics/summary.json",
        log:
            "logs/external_aggregate/external_aggregate.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_aggregate/external_aggregate.tsv"

    use rule plot_overlay as external_overlay with:
        input:
            case=f"{EXTERNAL_DIR}/ingest/{{case}}.h5",
            pred=f"{EXTERNAL_DIR}/experiments/{{experiment}}/predictions/{{case}}.nii.gz",
        output:
            report(
                f"{EXTERNAL_DIR}/plots/overlays/{{experiment}}/{{case}}.png",
                caption="../report/external_overlay.rst",
                category="External test set",
                subcategory="Overlays",
                labels={"experiment": "{experiment}", "case": "{case}"},
            ),
        log:
            "logs/external_overlay/{experiment}/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_overlay/{{experiment}}/{{case}}.tsv"
