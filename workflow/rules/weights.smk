# Pretrained weights (ImageNet encoders, the ResNet attack classifier): each file the config needs
# is fetched once into {resources}/weights/<file name> and verified (segmia.models.weights); the
# jobs that start from it (train, fit_attack) get it as an input and only load it.
from segmia.models import weights as pretrained

WEIGHTS = pretrained.needed(CFG)


def weights_file(name):
    return f"{RES}/weights/{name}"


def arch_weights(wildcards):
    """{"weights": file} when the model's encoder starts from pretrained weights."""
    name = pretrained.arch_file(CFG["architectures"][wildcards.arch])
    return {"weights": weights_file(name)} if name else {}


def attack_weights(wildcards):
    """{"weights": file} when the attack classifier starts from pretrained weights."""
    name = pretrained.attack_file(CFG["attack"])
    return {"weights": weights_file(name)} if name else {}


def weights_args(wildcards, input):
    """--weights FILE --weights-digest DIGEST of a job with a weights input (derived from the
    input, so no tracked parameter: the file's modification time is what reruns the job).
    """
    if "weights" not in input.keys():
        return ""
    digest = pretrained.digest_text(
        Path(input.weights).name, CFG["weights"]["checksums"]
    )
    return f"--weights {input.weights} --weights-digest {digest}"


# downloads need the internet: on a cluster they run on the submitting machine
localrules:
    fetch_weights,


rule fetch_weights:
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
