# DICOM series (+ label masks) -> per-case HDF5 (HU volume, labels, geometry). A bad series does not
# fail the job: its status file says why (quarantined) and the split leaves it out.


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        status=f"{RESULTS}/ingest/{{case}}.status.json",
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
        "lungseg ingest {params.series} --case-id {wildcards.case} {params.labels}"
        " -o {output.case} --status {output.status} > {log} 2>&1"


rule quarantine_table:
    input:
        [f"{RESULTS}/ingest/{c}.status.json" for c in sorted(CASES)],
    output:
        report(
            f"{RESULTS}/quarantine.tsv",
            caption="../report/quarantine.rst",
            category="Data",
        ),
    log:
        "logs/quarantine_table/quarantine_table.log",
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg quarantine-table {input} -o {output} > {log} 2>&1"
