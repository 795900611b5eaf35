# Two-stage nodule detection (config detection; docs/how-to/nodule-segmentation.md): the candidates of a
# segmentation experiment's probability map (or the classical detector's score map) become 2.5-D patches (every
# case), the candidate classifier trains on the training cases' candidates through rule train
# (workflow/rules/train.smk), each fold's classifier scores its validation cases' candidates and the candidate score
# (classifier or product) is chosen on them, the fold ensemble scores the test cases' candidates, and each test
# scan's mask and probability map are rewritten with those scores and evaluated as the method <candidates>_fp_reduced.


rule candidates:
    input:
        unpack(candidate_source),
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        patches=f"{RESULTS}/candidates/{{case}}.patches.h5",
        table=f"{RESULTS}/candidates/{{case}}.nodules.tsv",
    log:
        "logs/candidates/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/candidates/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        settings=json.dumps({key: config["detection"][key] for key in ("patch_mm", "patch_size")}, sort_keys=True),
        patient=nodule_patient,
        threshold=config["detection"]["candidate_threshold"],
        # detection.reference_nodules: the reference nodules of the cases the classifier trains and validates on too
        reference=lambda wildcards: (
            "--with-reference"
            if config["detection"]["reference_nodules"] and split_of_cases()[wildcards.case] != "test"
            else ""
        ),
    shell:
        "lungseg candidates {input.case:q} --probabilities {input.probabilities:q} --out-patches {output.patches:q}"
        " --out-table {output.table:q} --threshold {params.threshold} --settings {params.settings:q}"
        " --patient {params.patient:q} {params.reference} > {log:q} 2>&1"


rule classify_candidates:
    input:
        models=expand(f"{RESULTS}/experiments/{CANDIDATE_CLASSIFIER}/folds/{{fold}}/model.pt", fold=range(FOLDS)),
        patches=lambda wildcards: [candidate_patch_file(c) for c in cases_in("test")],
    output:
        f"{RESULTS}/detection/scores.tsv",
    log:
        "logs/classify_candidates/classify_candidates.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_candidates/classify_candidates.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    params:
        flips=config["detection"]["flips"],
    shell:
        "lungseg classify --model {input.models:q} --patches {input.patches:q} --out {output:q} --threads {threads}"
        " --flips {params.flips} > {log:q} 2>&1"


rule classify_validation_candidates:
    input:
        model=f"{RESULTS}/experiments/{CANDIDATE_CLASSIFIER}/folds/{{fold}}/model.pt",
        patches=lambda wildcards: [candidate_patch_file(c) for c in fold_split(wildcards.fold)[1]],
    output:
        f"{RESULTS}/detection/validation/{{fold}}.scores.tsv",
    log:
        "logs/classify_validation_candidates/{fold}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_validation_candidates/{{fold}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: config["predict"]["threads"]
    params:
        flips=config["detection"]["flips"],
    shell:
        "lungseg classify --model {input.model:q} --patches {input.patches:q} --out {output:q} --threads {threads}"
        " --flips {params.flips} > {log:q} 2>&1"


rule choose_detection_score:
    input:
        unpack(validation_candidate_inputs),
    output:
        f"{RESULTS}/detection/score.json",
    log:
        "logs/choose_detection_score/choose_detection_score.log",
    benchmark:
        f"{RESULTS}/benchmarks/choose_detection_score/choose_detection_score.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        score=config["detection"]["score"],
        threshold=config["detection"]["candidate_threshold"],
    shell:
        "lungseg choose-detection-score --case {input.cases:q} --probabilities {input.probabilities:q}"
        " --scores {input.scores:q} --out {output:q} --threshold {params.threshold} --score {params.score}"
        " > {log:q} 2>&1"


rule rescore_candidates:
    input:
        unpack(lambda wildcards: candidate_maps(wildcards.case)),
        case=f"{RESULTS}/ingest/{{case}}.h5",
        scores=f"{RESULTS}/detection/scores.tsv",
        score_choice=f"{RESULTS}/detection/score.json",
    output:
        mask=f"{RESULTS}/detection/predictions/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/detection/predictions/{{case}}.probabilities.nii.gz",
    log:
        "logs/rescore_candidates/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rescore_candidates/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        threshold=config["detection"]["candidate_threshold"],
        mask_threshold=config["detection"]["mask_threshold"],
    shell:
        "lungseg rescore-candidates {input.case:q} --mask {input.mask:q} --probabilities {input.probabilities:q}"
        " --scores {input.scores:q} --score-choice {input.score_choice:q} -o {output.mask:q} --out-probabilities {output.probabilities:q}"
        " --threshold {params.threshold} --mask-threshold {params.mask_threshold} > {log:q} 2>&1"


rule evaluate_detection:
    input:
        pred=f"{RESULTS}/detection/predictions/{{case}}.nii.gz",
        probabilities=f"{RESULTS}/detection/predictions/{{case}}.probabilities.nii.gz",
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        f"{RESULTS}/detection/metrics/cases/{{case}}.json",
    log:
        "logs/evaluate_detection/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_detection/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        pred=lambda wildcards, input: ["--pred", f"{TWO_STAGE}={input.pred}"],
        probabilities=lambda wildcards, input: ["--probabilities", f"{TWO_STAGE}={input.probabilities}"],
        # every candidate of the rescored map (its lowest value, 1/255): the FROC ranks the first stage's candidates
        threshold=RESCORED_THRESHOLD,
    shell:
        "lungseg evaluate --case {input.case:q} --label nodule {params.pred:q} {params.probabilities:q} --no-baseline"
        " --detection --candidate-threshold {params.threshold} -o {output:q} > {log:q} 2>&1"
