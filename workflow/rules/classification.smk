# Nodule malignancy classification, step 1 (docs/reference/nodule-table.md): every reference nodule of a case
# (LIDC readers' consensus with their malignancy ratings, LUNA16 spheres, or the nodule label's components)
# becomes a table row and a 2.5-D patch; rule all asks for them when classification.enabled.


rule nodule_patches:
    input:
        case=f"{RESULTS}/ingest/{{case}}.h5",
    output:
        patches=f"{RESULTS}/nodules/{{case}}.patches.h5",
        table=f"{RESULTS}/nodules/{{case}}.nodules.tsv",
    log:
        "logs/nodule_patches/{case}.log",
    benchmark:
        f"{RESULTS}/benchmarks/nodule_patches/{{case}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    params:
        settings=nodule_patch_settings,
        patient=nodule_patient,
        # the patient's pathology (case sheet or diagnosis table), checked when the job is planned
        pathology=nodule_pathology,
    shell:
        "lungseg nodule-patches {input.case:q} --out-patches {output.patches:q} --out-table {output.table:q}"
        " --settings {params.settings:q} --patient {params.patient:q} --pathology={params.pathology:q} > {log:q} 2>&1"


rule nodule_table:
    input:
        nodule_tables,
    output:
        f"{RESULTS}/nodules/nodules.tsv",
    log:
        "logs/nodule_table/nodule_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/nodule_table/nodule_table.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "lungseg nodule-table {output:q} {input:q} > {log:q} 2>&1"
