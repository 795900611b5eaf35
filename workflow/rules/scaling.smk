# Scaling study (seed 000 Table 5, seed 002 Table 1), switched on with scaling.enabled: the same data and
# epochs trained as one process, as DDP over N processes and as FedAvg with N clients for every N of
# scaling.devices, each a job of its own (rule scaling_run; a GPU job on SLURM, N GPUs); rule scaling puts
# them side by side (speed-up, efficiency, final loss and validation Dice) in a table and a figure.

from lungseg.training.rule_args import scaling_train_settings, write_train_settings
from lungseg.training.scaling import run_name, study_runs

#: the folder of every run of the study: single-1, then ddp-N and fedavg-N for each N > 1 of scaling.devices
SCALING_RUN_DIRS = [
    f"{RESULTS}/scaling/runs/{run_name(mode, n)}" for mode, n in study_runs(config["scaling"]["devices"])
]


rule scaling_settings:
    output:
        f"{RESULTS}/scaling/train_settings.json",
    log:
        "logs/scaling_settings/scaling_settings.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling_settings/scaling_settings.tsv"
    localrule: True
    params:
        # train: with the study's image size, without the settings each run of the study chooses
        settings=scaling_train_settings(config),
    run:
        write_train_settings(params.settings, output[0])


rule scaling_run:
    input:
        split=f"{RESULTS}/split.tsv",
        settings=f"{RESULTS}/scaling/train_settings.json",
        # the training and validation cases of fold 0 (with one fold: the train and val splits)
        train=lambda wildcards: [case_file(c) for c in fold_split(0)[0]],
        val=lambda wildcards: [case_file(c) for c in fold_split(0)[1]],
    output:
        metrics=f"{RESULTS}/scaling/runs/{{mode}}-{{devices}}/metrics.csv",
        record=f"{RESULTS}/scaling/runs/{{mode}}-{{devices}}/run.json",
    log:
        "logs/scaling_run/{mode}-{devices}.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling_run/{{mode}}-{{devices}}.tsv"
    wildcard_constraints:
        mode="single|ddp|fedavg",
        devices=r"[1-9][0-9]*",
    conda:
        "../../envs/train.yaml"
    # every process is one "device" with scaling.threads_per_process threads
    threads: lambda wildcards: int(wildcards.devices) * config["scaling"]["threads_per_process"]
    resources:
        # GPUs of this job on SLURM (the plugin's --gpus); partition and account: the profile's set-resources.
        # Unconstrained locally (no --resources gpu=...).
        gpu=lambda wildcards: int(wildcards.devices),
        # one at a time, for timings no other run of the study disturbs: --resources scaling_runs=1
        scaling_runs=1,
    params:
        run_dir=lambda wildcards: f"{RESULTS}/scaling/runs/{run_name(wildcards.mode, wildcards.devices)}",
        cfg=config["scaling"],
    shell:
        "lungseg train-scaling run --mode {wildcards.mode} --devices {wildcards.devices}"
        " --train {input.train:q} --val {input.val:q} --out-dir {params.run_dir:q} --epochs {params.cfg[epochs]}"
        " --threads-per-process {params.cfg[threads_per_process]} --train-config {input.settings:q} > {log:q} 2>&1"


rule scaling:
    input:
        runs=[f"{run_dir}/run.json" for run_dir in SCALING_RUN_DIRS],
        metrics=[f"{run_dir}/metrics.csv" for run_dir in SCALING_RUN_DIRS],
    output:
        table=report(
            f"{RESULTS}/scaling/scaling.csv",
            caption="../report/scaling_table.rst",
            category="Training",
            subcategory="Scaling study",
        ),
        plot=report(
            f"{RESULTS}/scaling/scaling.png",
            caption="../report/scaling_plot.rst",
            category="Training",
            subcategory="Scaling study",
        ),
    log:
        "logs/scaling/scaling.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling/scaling.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "lungseg train-scaling table --runs {input.runs:q} --table {output.table:q} --plot {output.plot:q} > {log:q} 2>&1"
