# Scaling study (seed 000 Table 5, seed 002 Table 1): the same data and epochs trained as one process,
# DDP over N processes and FedAvg with N clients; a table and a figure for the report.

from lungseg.training.rule_args import scaling_train_args


rule scaling:
    input:
        split=f"{RESULTS}/split.tsv",
        train=lambda wildcards: [case_file(c) for c in cases_in("train")],
        val=lambda wildcards: [case_file(c) for c in cases_in("val")],
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
        train_args=lambda wildcards: scaling_train_args(config),
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
        " --threads-per-process {params.cfg[threads_per_process]} {params.train_args} > {log:q} 2>&1"
