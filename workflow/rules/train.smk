# Model training, launched with torchrun (gloo on CPU, NCCL on GPUs). Resumes from its checkpoint;
# `lungseg train-guard` turns SIGTERM/SIGUSR1 (time limit, preemption) into a checkpoint + exit 75.
from lungseg.cluster.launch import torchrun_prefix
from lungseg.training.rule_args import checkpoint_key, train_options


rule train:
    input:
        split=f"{RESULTS}/split.tsv",
        train=lambda wildcards: [case_file(c) for c in cases_in("train")],
        val=lambda wildcards: [case_file(c) for c in cases_in("val")],
    output:
        model=f"{RESULTS}/model/{LABEL}/model.pt",
        metrics=report(
            f"{RESULTS}/model/{LABEL}/metrics.csv",
            caption="../report/training_metrics.rst",
            category="Training",
        ),
    params:
        cfg=config["train"],
        checkpoint_dir=lambda wildcards: f"{RESULTS}/model/{LABEL}/checkpoints/{checkpoint_key(config['train'])}",
        # torchrun --standalone on one node; `lungseg launch` (srun torchrun, c10d rendezvous on the
        # first node) when the SLURM profile gives the job several nodes (cluster.train.nodes)
        launch=lambda wildcards, resources: torchrun_prefix(resources.get("nodes", 1), config["train"]["nproc_per_node"]),
        options=train_options(config["train"]),
    threads: config["train"]["threads"]
    log:
        f"logs/train/{LABEL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{LABEL}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "lungseg train-guard -- {params.launch} -m lungseg train"
        " --train {input.train:q} --val {input.val:q} --out-dir {params.checkpoint_dir:q}"
        " --model-out {output.model:q} --metrics-out {output.metrics:q}"
        " --arch {params.cfg[arch]} --label {params.cfg[label]} --epochs {params.cfg[epochs]}"
        " --batch-size {params.cfg[batch_size]} --lr {params.cfg[lr]} --base-channels {params.cfg[base_channels]}"
        " --depth {params.cfg[depth]} --image-size {params.cfg[image_size]}"
        " --hu-window {params.cfg[hu_window][0]} {params.cfg[hu_window][1]} --seed {params.cfg[seed]}"
        " --num-workers {params.cfg[num_workers]} --threads {threads} {params.options} > {log:q} 2>&1"
