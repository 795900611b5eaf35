# DICOM series (+ label masks) -> per-case HDF5 (HU volume, labels, geometry).


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        f"{RESULTS}/ingest/{{case}}.h5",
    params:
        series=lambda wildcards: CASES[wildcards.case]["dicom"],
        labels=label_args,
    log:
        "logs/ingest/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg ingest {params.series} --case-id {wildcards.case} {params.labels} -o {output} > {log} 2>&1"
