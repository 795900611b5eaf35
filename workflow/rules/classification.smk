# Nodule malignancy classification, step 1 (docs/reference/nodule-table.md): every reference nodule of a case
# (LIDC readers' consensus with their malignancy ratings, LUNA16 spheres, or the nodule label's components)
# becomes a table row and a 2.5-D patch; rule all asks for them when classification.enabled.


rule nodule_patches:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        patches=f"{RESULTS}/nodules/{{case}}.patches.h5",
        table=f"{RESULTS}/nodules/{{case}}.nodules.tsv",
    log:
        "logs/nodule_patches/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/nodule_patches/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        settings=nodule_patch_settings,
        patient=nodule_patient,
        # the patient's pathology (case sheet or diagnosis table), checked when the job is planned
        pathology=nodule_pathology,
    shell:
        "lungseg nodule-patches {input.case:q} --out-patches {output.patches:q} --out-table {output.table:q}"
        " --settings {params.settings:q} --patient {params.patient:q} --pathology={params.pathology:q} > {log:q} 2>&1"


rule nodule_table:
    input:
        nodule_tables,
    output:
        f"{RESULTS}/nodules/nodules.tsv",
    log:
        "logs/nodule_table/nodule_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/nodule_table/nodule_table.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg nodule-table {output:q} {input:q} > {log:q} 2>&1"


# Step 2 (docs/explanation/classification.md): the classifiers of classification.experiments train per fold through
# rule train (workflow/rules/train.smk, on the cases' patch files); each fold's model classifies its validation
# nodules (out of fold), the fold ensemble the test nodules; metrics per classifier, a paired comparison with the
# reference classifier on the same test nodules, and a report page.


rule classify_out_of_fold:
    input:
        model=f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/model.pt",
        patches=lambda wildcards: [nodule_patch_file(c) for c in fold_split(wildcards.fold)[1]],
        tables=lambda wildcards: [nodule_table_file(c) for c in fold_split(wildcards.fold)[1]],
    output:
        f"{RESULTS}/experiments/{{experiment}}/classification/folds/{{fold}}/validation.tsv",
    log:
        "logs/classify_out_of_fold/{experiment}/{fold}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_out_of_fold/{{experiment}}/{{fold}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    shell:
        "lungseg classify --model {input.model:q} --patches {input.patches:q} --out {output:q} --threads {threads}"
        " > {log:q} 2>&1"


rule classify_test:
    input:
        models=fold_models,
        patches=lambda wildcards: [nodule_patch_file(c) for c in cases_in("test")],
        tables=lambda wildcards: [nodule_table_file(c) for c in cases_in("test")],
    output:
        f"{RESULTS}/experiments/{{experiment}}/classification/test.tsv",
    log:
        "logs/classify_test/{experiment}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_test/{{experiment}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    shell:
        "lungseg classify --model {input.models:q} --patches {input.patches:q} --out {output:q} --threads {threads}"
        " > {log:q} 2>&1"


rule classification_metrics:
    input:
        out_of_fold=lambda wildcards: classifier_validation_predictions(wildcards.experiment),
        test=f"{RESULTS}/experiments/{{experiment}}/classification/test.tsv",
    output:
        f"{RESULTS}/experiments/{{experiment}}/classification/summary.json",
    log:
        "logs/classification_metrics/{experiment}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classification_metrics/{{experiment}}.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        threshold=config["classification"]["threshold"],
        samples=config["classification"]["bootstrap_samples"],
    shell:
        "lungseg classification-metrics --out-of-fold {input.out_of_fold:q} --test {input.test:q} --out {output:q}"
        " --threshold {params.threshold} --samples {params.samples} > {log:q} 2>&1"


rule classification_compare:
    input:
        summaries=[f"{RESULTS}/experiments/{name}/classification/summary.json" for name in CLASSIFIERS],
        test=[f"{RESULTS}/experiments/{name}/classification/test.tsv" for name in CLASSIFIERS],
    output:
        f"{RESULTS}/classification/comparison.json",
    log:
        "logs/classification_compare/classification_compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/classification_compare/classification_compare.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        names=list(CLASSIFIERS),
        reference=REFERENCE_CLASSIFIER,
        samples=config["classification"]["bootstrap_samples"],
    shell:
        "lungseg classification-compare --summaries {input.summaries:q} --test-predictions {input.test:q}"
        " --names {params.names:q} --reference {params.reference:q} --samples {params.samples}"
        " --out {output:q} > {log:q} 2>&1"


rule classification_page:
    input:
        summaries=[f"{RESULTS}/experiments/{name}/classification/summary.json" for name in CLASSIFIERS],
        test=[f"{RESULTS}/experiments/{name}/classification/test.tsv" for name in CLASSIFIERS],
        comparison=f"{RESULTS}/classification/comparison.json",
        training=[f"{RESULTS}/experiments/{name}/folds/0/metrics.csv" for name in CLASSIFIERS],
    output:
        report(
            f"{RESULTS}/report/classification.html",
            caption="../report/classification.rst",
            category="Evaluation",
            subcategory="Nodule malignancy",
            labels={"page": "classification"},
        ),
    log:
        "logs/classification_page/classification_page.log",
    benchmark:
        f"{RESULTS}/benchmarks/classification_page/classification_page.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        names=list(CLASSIFIERS),
    shell:
        "lungseg report classification --summaries {input.summaries:q} --comparison {input.comparison:q}"
        " --test-predictions {input.test:q} --names {params.names:q} --training-metrics {input.training:q}"
        " --training-names {params.names:q} --out {output:q} > {log:q} 2>&1"


# Step 3, for the nodule target (train.label nodule): every test case diagnosed end to end (the reference segmentation
# experiment's fold models find the nodules, the reference classifier's fold models classify them), and the
# diagnoses matched to the reference nodules (detection sensitivity, false positives, malignancy AUC on the hits).


rule diagnose:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        seg=lambda wildcards: [model_file(REFERENCE, fold) for fold in range(FOLDS)],
        cls=lambda wildcards: [model_file(REFERENCE_CLASSIFIER, fold) for fold in range(FOLDS)],
    output:
        table=f"{RESULTS}/diagnosis/{{case}}/nodules.tsv",
        summary=f"{RESULTS}/diagnosis/{{case}}/nodules.json",
        overlay=report(
            f"{RESULTS}/diagnosis/{{case}}/overlay.png",
            caption="../report/diagnosis.rst",
            category="Evaluation",
            subcategory="Nodule malignancy",
            labels={"case": "{case}", "figure": "diagnosis"},
        ),
    log:
        "logs/diagnose/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnose/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    params:
        out_dir=lambda wildcards: f"{RESULTS}/diagnosis/{wildcards.case}",
        patch_mm=config["classification"]["patch_mm"],
        patch_size=config["classification"]["patch_size"],
    shell:
        "lungseg diagnose {input.case:q} --seg-model {input.seg:q} --cls-model {input.cls:q} --out-dir {params.out_dir:q}"
        " --patch-mm {params.patch_mm} --patch-size {params.patch_size} --threads {threads} > {log:q} 2>&1"


rule diagnosis_evaluation:
    input:
        diagnoses=lambda wildcards: [f"{RESULTS}/diagnosis/{c}/nodules.tsv" for c in cases_in("test")],
        tables=lambda wildcards: [nodule_table_file(c) for c in cases_in("test")],
    output:
        summary=f"{RESULTS}/diagnosis/evaluation.json",
        matches=f"{RESULTS}/diagnosis/matches.tsv",
    log:
        "logs/diagnosis_evaluation/diagnosis_evaluation.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnosis_evaluation/diagnosis_evaluation.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        threshold=config["classification"]["threshold"],
        samples=config["classification"]["bootstrap_samples"],
    shell:
        "lungseg diagnosis-evaluate --diagnoses {input.diagnoses:q} --tables {input.tables:q} --out {output.summary:q}"
        " --matches {output.matches:q} --threshold {params.threshold} --samples {params.samples} > {log:q} 2>&1"
