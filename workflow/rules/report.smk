# Figures for `snakemake --report`: training curves and per-case overlays.


rule plot_training:
    input:
        f"{RESULTS}/model/{LABEL}/metrics.csv",
    output:
        report(
            f"{RESULTS}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "logs/plot_training/plot_training.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg plot-training {input} -o {output} > {log} 2>&1"


rule plot_overlay:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        pred=f"{RESULTS}/predictions/{{case}}.nii.gz",
    output:
        report(
            f"{RESULTS}/plots/overlays/{{case}}.png",
            caption="../report/overlay.rst",
            category="Evaluation",
            subcategory="Overlays",
            labels={"case": "{case}"},
        ),
    params:
        label=LABEL,
    log:
        "logs/plot_overlay/{case}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "lungseg plot-overlay --case {input.case} --pred {input.pred} --label {params.label} -o {output} > {log} 2>&1"
