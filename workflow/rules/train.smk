# Model training, launched with torchrun (gloo on CPU, NCCL on GPUs). Resumes from its checkpoint.


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
        checkpoint_dir=lambda wildcards: f"{RESULTS}/model/{LABEL}/checkpoints/{train_config_hash()}",
    threads: config["train"]["threads"]
    log:
        f"logs/train/{LABEL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{LABEL}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "torchrun --standalone --nnodes=1 --nproc_per_node={params.cfg[nproc_per_node]} -m lungseg train"
        " --train {input.train} --val {input.val} --out-dir {params.checkpoint_dir}"
        " --model-out {output.model} --metrics-out {output.metrics}"
        " --arch {params.cfg[arch]} --label {params.cfg[label]} --epochs {params.cfg[epochs]}"
        " --batch-size {params.cfg[batch_size]} --lr {params.cfg[lr]} --base-channels {params.cfg[base_channels]}"
        " --depth {params.cfg[depth]} --image-size {params.cfg[image_size]}"
        " --hu-window {params.cfg[hu_window][0]} {params.cfg[hu_window][1]} --seed {params.cfg[seed]}"
        " --num-workers {params.cfg[num_workers]} --threads {threads} > {log} 2>&1"
