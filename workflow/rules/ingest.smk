# DICOM series (+ label masks) -> per-case HDF5 (HU volume, labels, geometry). A bad series does not
# fail the job: its status file says why (quarantined) and the split leaves it out.
# With `source: discover` a checkpoint first finds the series below discover.root and writes the sheet;
# with `source: images` one finds the 2-D images and masks below images.root (one-slice cases); with
# `source: dicomweb` discovery reads the series the dicomweb_retrieve rule selected (workflow/rules/dicomweb.smk).


if config["source"] in ("discover", "dicomweb"):

    checkpoint discover:
        input:
            unpack(discover_inputs),
            unpack(dicomweb_series),
        output:
            cases=f"{RESULTS}/discovered/cases.tsv",
            skipped=report(
                f"{RESULTS}/discovered/skipped.tsv",
                caption="../report/discovery_skipped.rst",
                category="Data",
                subcategory="Discovery",
                labels={"table": "series skipped by discovery"},
            ),
            # one folder of links per series: pseudonymous paths in the sheet, inputs and logs
            links=directory(f"{RESULTS}/discovered/series"),
            # the diagnosis table keyed by patient pseudonym (header only without discover.diagnosis_table)
            diagnosis=f"{RESULTS}/discovered/diagnosis.tsv",
        log:
            "logs/discover/discover.log",
        benchmark:
            f"{RESULTS}/benchmarks/discover/discover.tsv"
        conda:
            "../../envs/preprocess.yaml"
        params:
            root=config["discover"]["root"],
            min_slices=config["discover"]["min_slices"],
            secret_env=config["discover"]["secret_env"],
            annotations=discover_annotation_args,
        shell:
            "lungseg discover {params.root:q} -o {output.cases:q} --skipped {output.skipped:q} --link-dir {output.links:q}"
            " --diagnosis-out {output.diagnosis:q} --min-slices {params.min_slices} --secret-env {params.secret_env:q}"
            " {params.annotations:q} --no-progress > {log:q} 2>&1"


if config["source"] == "images":

    # 2-D images: the sheet of images and masks found below images.root (docs/how-to/2d-images.md)
    checkpoint image_sheet:
        output:
            cases=f"{RESULTS}/images/cases.tsv",
            skipped=report(
                f"{RESULTS}/images/skipped.tsv",
                caption="../report/image_skipped.rst",
                category="Data",
                subcategory="Discovery",
                labels={"table": "images and masks skipped"},
            ),
        log:
            "logs/image_sheet/image_sheet.log",
        benchmark:
            f"{RESULTS}/benchmarks/image_sheet/image_sheet.tsv"
        conda:
            "../../envs/preprocess.yaml"
        params:
            root=config["images"]["root"],
            options=image_sheet_args,
        shell:
            "lungseg image-sheet {params.root:q} -o {output.cases:q} --skipped {output.skipped:q} {params.options:q}"
            " > {log:q} 2>&1"


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        case=f"{RESULTS}/ingest/{{case}}.h5",
        status=f"{RESULTS}/ingest/{{case}}.status.json",
    log:
        "logs/ingest/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        source=lambda wildcards: case_table()[wildcards.case]["dicom"],
        options=ingest_args,
        fingerprint=scan_fingerprint,  # not in the command: a changed slice changes it, which reruns the case
    # the scan path after `--`: a folder name starting with a dash stays a path
    shell:
        "lungseg ingest --case-id {wildcards.case:q} {params.options:q} -o {output.case:q} --status {output.status:q}"
        " -- {params.source:q} > {log:q} 2>&1"


rule quarantine_table:
    input:
        status_files,
    output:
        report(
            f"{RESULTS}/quarantine.tsv",
            caption="../report/quarantine.rst",
            category="Data",
        ),
    log:
        "logs/quarantine_table/quarantine_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/quarantine_table/quarantine_table.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg quarantine-table {input:q} -o {output:q} > {log:q} 2>&1"
