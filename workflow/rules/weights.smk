# Pretrained weights (ImageNet encoders, the ResNet attack classifier): each file the config needs
# is fetched once into {resources}/weights/<file name> and verified (segmia.models.weights); the
# jobs that start from it (train, fit_attack) get it as an input and only load it (the helpers
# that wire it are in common.smk).


# downloads need the internet: on a cluster they run on the submitting machine
localrules:
    fetch_weights,


rule fetch_weights:
    """Fetch a pretrained weight file (ImageNet encoders, attack classifiers) and verify it."""
    output:
        weights_file("{weights}"),
    log:
        f"{ROOT}/logs/fetch_weights/{{weights}}.log",
    benchmark:
        f"{ROOT}/benchmarks/fetch_weights/{{weights}}.tsv"
    wildcard_constraints:
        weights=alternatives(WEIGHTS),
    conda:
        ENV
    params:
        # derived from the output, so not a tracked parameter: a new mirror (base_url) or digest
        # fetches no verified file again (and retrains nothing); jobs check the digest on loading
        weights=lambda w, output: as_json(CFG["weights"]),
    shell:
        "python -m segmia fetch-weights --out {output} --params {params.weights:q} 2> {log}"
