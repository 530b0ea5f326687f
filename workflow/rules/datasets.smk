# Public datasets (liver, kvasir, cityscapes): download -> prepare. Synthetic ones: data.smk.
# Downloads are per source under {resources}/raw/<source>/ (archives, then extracted/), shared by
# every dataset of that source and by every config using the same resources directory.


# downloads need the internet (and Cityscapes' credentials): on a cluster they run on the head node
localrules:
    download,


rule download:
    """Fetch a public dataset's archives and verify their checksums."""
    output:
        directory(extracted("{source}")),
    log:
        f"{ROOT}/logs/download/{{source}}.log",
    benchmark:
        f"{ROOT}/benchmarks/download/{{source}}.tsv"
    wildcard_constraints:
        source=alternatives(PUBLIC_USED),
    conda:
        ENV
    params:
        raw=lambda w: raw_dir(w.source),
        download=lambda w: as_json(download_params(w.source)),
        lock=f"{RES}/checksums.lock.json",
    shell:
        "python -m segmia download --source {wildcards.source} --raw {params.raw}"
        " --params {params.download:q} --lock {params.lock} 2> {log}"


rule prepare:
    """Convert a downloaded dataset into the uniform prepared format (images, masks, index)."""
    input:
        raw=lambda w: extracted(PUBLIC[w.dataset]["source"]),
    output:
        **prepared("{dataset}"),
    log:
        f"{ROOT}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{ROOT}/benchmarks/prepare/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=alternatives(PUBLIC),
    conda:
        ENV
    params:
        source=lambda w: PUBLIC[w.dataset]["source"],
        prepare=lambda w: as_json(PUBLIC[w.dataset]["prepare"]),
        out=prepared_dir,
    shell:
        "python -m segmia prepare --source {params.source} --name {wildcards.dataset}"
        " --raw {input.raw} --params {params.prepare:q} --out {params.out} 2> {log}"
