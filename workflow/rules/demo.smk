# The synthetic demo cohort: one job per case, deterministic from the seed.


if config["source"] == "demo":

    rule demo_case:
        output:
            dicom=[f"{config['demo']['folder']}/{{case}}/dicom/{name}" for name in DEMO_DICOM_NAMES],
            lung=f"{config['demo']['folder']}/{{case}}/labels/lung.nii.gz",
            nodule=f"{config['demo']['folder']}/{{case}}/labels/nodule.nii.gz",
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
        shell:
            "lungseg demo-cohort --out {params.root:q} --case {wildcards.case:q} --seed {params.seed}"
            " --slices {params.slices} --size {params.size} > {log:q} 2>&1"
