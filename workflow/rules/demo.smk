# The synthetic demo cohort: one job per case, deterministic from the seed.


if config["source"] == "demo":

    rule demo_case:
        output:
            dicom=[f"{config['demo']['folder']}/{{case}}/dicom/{name}" for name in DEMO_DICOM_NAMES],
            lung=f"{config['demo']['folder']}/{{case}}/labels/lung.nii.gz",
            nodule=f"{config['demo']['folder']}/{{case}}/labels/nodule.nii.gz",
            nodules=f"{config['demo']['folder']}/{{case}}/labels/nodules.json",  # kind and position of each nodule
        log:
            "logs/demo_case/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_case/{{case}}.tsv"
        conda:
            "../../envs/preprocess.yaml"
        params:
            root=lambda wildcards, output: Path(output.lung).parents[2],
            seed=config["demo"]["seed"],
            slices=config["demo"]["slices"],
            size=config["demo"]["size"],
            nodules=lambda wildcards: [
                *("--nodules-per-case", *map(str, config["demo"]["nodules_per_case"])),
                *("--nodule-diameter-mm", *map(str, config["demo"]["nodule_diameter_mm"])),
                *("--nodule-kinds", *config["demo"]["nodule_kinds"]),
                *("--nodule-positions", *config["demo"]["nodule_positions"]),
                *("--nodule-edges", config["demo"]["nodule_edges"]),
            ],
        shell:
            "lungseg demo-cohort --out {params.root:q} --case {wildcards.case:q} --seed {params.seed}"
            " --slices {params.slices} --size {params.size} {params.nodules:q} > {log:q} 2>&1"
