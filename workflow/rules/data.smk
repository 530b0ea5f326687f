SYNTHETIC = [
    d for d, ds in CFG["datasets"].items() if ds["source"].startswith("synthetic")
]


rule synthesize:
    """Generate an embedded synthetic dataset (demo and tests) in the prepared format."""
    output:
        **prepared("{dataset}"),
    log:
        f"{ROOT}/logs/synthesize/{{dataset}}.log",
    benchmark:
        f"{ROOT}/benchmarks/synthesize/{{dataset}}.tsv"
    wildcard_constraints:
        dataset="|".join(SYNTHETIC) or "^$",
    conda:
        ENV
    params:
        source=lambda w: CFG["datasets"][w.dataset]["source"],
        synthetic=lambda w: as_json(CFG["datasets"][w.dataset]["synthetic"]),
        out=prepared_dir,
    shell:
        "python -m segmia synthesize --source {params.source} --name {wildcards.dataset}"
        " --params {params.synthetic:q} --out {params.out} 2> {log}"


rule split:
    """Assign every sample of a dataset to a pool and role for one seed (membership unit kept whole)."""
    input:
        **prepared("{dataset}"),
    output:
        f"{ROOT}/{plan.SPLIT}",
    log:
        f"{ROOT}/logs/split/{{dataset}}_s{{seed}}.log",
    benchmark:
        f"{ROOT}/benchmarks/split/{{dataset}}_s{{seed}}.tsv"
    conda:
        ENV
    params:
        sizes=lambda w: as_json(CFG["datasets"][w.dataset]["split"]),
        data=prepared_dir,
    shell:
        "python -m segmia split --data {params.data} --params {params.sizes:q} --seed {wildcards.seed}"
        " --out {output} 2> {log}"
