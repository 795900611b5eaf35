# Model training: one job per experiment and fold, launched with torchrun (gloo on CPU, NCCL on GPUs).
# Each job gets its experiment's resolved settings as one file (`lungseg train --config`); it resumes
# from its checkpoint, and `lungseg train-guard` turns SIGTERM/SIGUSR1 (time limit, preemption) into a
# checkpoint + exit 75.
from lungseg.training.rule_args import write_train_settings


rule train_settings:
    output:
        f"{RESULTS}/experiments/{{experiment}}/train_settings.json",
    log:
        "logs/train_settings/{experiment}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_settings/{{experiment}}.tsv"
    localrule: True
    params:
        # a params change of one experiment rewrites its file only: its jobs rerun, the others' do not
        settings=lambda wildcards: TRAINED[wildcards.experiment],
    run:
        write_train_settings(params.settings, output[0])


rule train:
    input:
        split=f"{RESULTS}/split.tsv",
        settings=f"{RESULTS}/experiments/{{experiment}}/train_settings.json",
        # case files; a classifier's (classification.experiments): the cases' nodule patch files
        train=lambda wildcards: training_files(wildcards, 0),
        val=lambda wildcards: training_files(wildcards, 1),
    output:
        model=f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/model.pt",
        metrics=report(
            f"{RESULTS}/experiments/{{experiment}}/folds/{{fold}}/metrics.csv",
            caption="../report/training_metrics.rst",
            category="Training",
            subcategory="Per-epoch metrics",
            labels={"experiment": "{experiment}", "fold": "{fold}"},
        ),
    log:
        "logs/train/{experiment}/{fold}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{experiment}}/{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: lambda wildcards: TRAINED[wildcards.experiment]["threads"]
    params:
        checkpoint_dir=checkpoint_dir,
        # torchrun --standalone on one node; `lungseg launch` (srun torchrun, c10d rendezvous on the
        # first node) when the SLURM profile gives the job several nodes (cluster.train.nodes);
        # `lungseg fl-run` (Flower server + a client per site) for train.mode flower
        launch=train_launch,
    shell:
        "lungseg train-guard -- {params.launch} --config {input.settings:q}"
        " --train {input.train:q} --val {input.val:q} --out-dir {params.checkpoint_dir:q}"
        " --model-out {output.model:q} --metrics-out {output.metrics:q} --threads {threads} > {log:q} 2>&1"
