# A PACS in the loop (source: dicomweb; docs/how-to/pacs-dicomweb.md). dicomweb_retrieve queries the PACS
# (QIDO-RS) for the CT series matching dicomweb.filters and retrieves them (WADO-RS) into dicomweb.archive,
# resuming what an earlier run left; results/dicomweb/series links exactly this query's series, which the
# discover checkpoint (workflow/rules/ingest.smk) reads. With export.dicomweb, dicomweb_store sends each
# DICOM-SEG export back (STOW-RS), finds it again (QIDO-RS) and writes a receipt, so it runs once per file.
# Both talk to the PACS, so they run where Snakemake runs (localrule), never in a cluster job. Credentials
# come from the environment variables dicomweb.user_env / dicomweb.password_env; no log names a UID.

if config["source"] == "dicomweb":

    rule dicomweb_retrieve:
        output:
            manifest=f"{RESULTS}/dicomweb/retrieved.tsv",
            series=directory(DICOMWEB_SERIES),
        log:
            "logs/dicomweb/retrieve.log",
        benchmark:
            f"{RESULTS}/benchmarks/dicomweb/retrieve.tsv"
        localrule: True
        conda:
            "../../envs/preprocess.yaml"
        params:
            connection=dicomweb_connection_args,
            filters=dicomweb_filter_args,
            archive=config["dicomweb"]["archive"],
            secret_env=config["dicomweb"]["secret_env"],
        shell:
            "lungseg dicomweb-retrieve {params.connection:q} {params.filters:q} --out {params.archive:q}"
            " --manifest {output.manifest:q} --links {output.series:q} --secret-env {params.secret_env:q}"
            " --no-progress > {log:q} 2>&1"

    rule dicomweb_store:
        input:
            seg=f"{config['export']['folder'].rstrip('/')}/{{experiment}}/{{case}}.seg.dcm",
        output:
            f"{RESULTS}/dicomweb/stored/{{experiment}}/{{case}}.json",
        log:
            "logs/dicomweb/store/{experiment}/{case}.log",
        benchmark:
            f"{RESULTS}/benchmarks/dicomweb/store/{{experiment}}/{{case}}.tsv"
        localrule: True
        conda:
            "../../envs/preprocess.yaml"
        params:
            connection=dicomweb_connection_args,
        shell:
            "lungseg dicomweb-store {params.connection:q} --receipt {output:q} -- {input.seg:q} > {log:q} 2>&1"

    rule dicomweb_store_all:
        # `snakemake dicomweb_store_all`: only the SEG files stored in the PACS (and what they need)
        input:
            lambda wildcards: dicomweb_outputs(),
