# Scaling study (seed 000 Table 5, seed 002 Table 1): the same data and epochs trained as one process,
# DDP over N processes and FedAvg with N clients; a table and a figure for the report.

from lungseg.training.rule_args import scaling_train_settings, write_train_settings


rule scaling_settings:
    localrule: True
    output:
        f"{RESULTS}/scaling/train_settings.json",
    params:
        # train: with the study's image size, without the settings each run of the study chooses
        settings=scaling_train_settings(config),
    log:
        "logs/scaling_settings/scaling_settings.log",
    run:
        write_train_settings(params.settings, output[0])


rule scaling:
    input:
        split=f"{RESULTS}/split.tsv",
        settings=f"{RESULTS}/scaling/train_settings.json",
        # the training and validation cases of fold 0 (with one fold: the train and val splits)
        train=lambda wildcards: [case_file(c) for c in fold_split(0)[0]],
        val=lambda wildcards: [case_file(c) for c in fold_split(0)[1]],
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
    params:
        runs=f"{RESULTS}/scaling/runs",
        cfg=config["scaling"],
    threads: config["scaling"]["nproc"] * config["scaling"]["threads_per_process"]
    log:
        "logs/scaling/scaling.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling/scaling.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "lungseg train-scaling --train {input.train:q} --val {input.val:q} --out-dir {params.runs:q}"
        " --table {output.table:q} --plot {output.plot:q} --nproc {params.cfg[nproc]} --epochs {params.cfg[epochs]}"
        " --threads-per-process {params.cfg[threads_per_process]} --train-config {input.settings:q} > {log:q} 2>&1"
