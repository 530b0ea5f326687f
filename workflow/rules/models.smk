rule train:
    """Train one segmentation model (victim, shadow or reference; any training variant) and query it on its MIA set."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        unpack(teacher_input),
        unpack(arch_weights),
        unpack(inner_weights),
        split=split_file,
    output:
        model=f"{ROOT}/{plan.MODEL}/model.pt",
        spec=f"{ROOT}/{plan.MODEL}/spec.json",
        history=f"{ROOT}/{plan.MODEL}/history.csv",
        metrics=f"{ROOT}/{plan.MODEL}/metrics.json",
        members=f"{ROOT}/{plan.MODEL}/members.csv",
        logits=f"{ROOT}/{plan.MIA_QUERY}/logits.npy",
        samples=f"{ROOT}/{plan.MIA_QUERY}/samples.csv",
    log:
        f"{ROOT}/logs/train/{plan.MODEL}.log",
    benchmark:
        f"{ROOT}/benchmarks/train/{plan.MODEL}.tsv"
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        spec=lambda w: as_json(plan.model_spec(CFG, model_from(w))),
        data=prepared_dir,
        out=lambda w, output: str(Path(output.model).parent),
        teacher=lambda w, input: (
            f"--teacher {Path(input.teacher).parent}"
            if "teacher" in input.keys()
            else ""
        ),
        weights=weights_args,
        runtime=RUNTIME,
    shell:
        "python -m segmia train --data {params.data} --split {input.split} --spec {params.spec:q}"
        " {params.teacher} {params.weights} --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule query:
    """Query a trained model on another pool (a victim on the reference universe): logits, per-image losses."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        split=split_file,
        model=f"{ROOT}/{plan.MODEL}/model.pt",
        spec=f"{ROOT}/{plan.MODEL}/spec.json",
    output:
        logits=f"{ROOT}/{plan.QUERY}/logits.npy",
        samples=f"{ROOT}/{plan.QUERY}/samples.csv",
    log:
        f"{ROOT}/logs/query/{plan.QUERY}.log",
    benchmark:
        f"{ROOT}/benchmarks/query/{plan.QUERY}.tsv"
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        data=prepared_dir,
        model=lambda w, input: str(Path(input.model).parent),
        out=lambda w, output: str(Path(output.logits).parent),
        sizes=lambda w: as_json(CFG["datasets"][w.dataset]["split"]),
        runtime=RUNTIME,
    shell:
        "python -m segmia query --model {params.model} --data {params.data} --split {input.split}"
        " --pool {wildcards.pool} --train-size {wildcards.size} --sizes {params.sizes:q}"
        " --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule query_triggered:
    """Query a model with the poisoning trigger written into the images (masks clean)."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        split=split_file,
        model=f"{ROOT}/{plan.MODEL}/model.pt",
        spec=f"{ROOT}/{plan.MODEL}/spec.json",
    output:
        logits=f"{ROOT}/{plan.QUERY_TRIGGERED}/logits.npy",
        samples=f"{ROOT}/{plan.QUERY_TRIGGERED}/samples.csv",
    log:
        f"{ROOT}/logs/query/{plan.QUERY_TRIGGERED}.log",
    benchmark:
        f"{ROOT}/benchmarks/query/{plan.QUERY_TRIGGERED}.tsv"
    wildcard_constraints:
        pool=OWN_QUERY,
        trigger=alternatives(TRIGGERS),
        tsize=r"\d+",
        tvalue=r"\d+",
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        data=prepared_dir,
        model=lambda w, input: str(Path(input.model).parent),
        out=lambda w, output: str(Path(output.logits).parent),
        sizes=lambda w: as_json(CFG["datasets"][w.dataset]["split"]),
        pool=lambda w: model_from(w).pool,
        runtime=RUNTIME,
    shell:
        "python -m segmia query --model {params.model} --data {params.data} --split {input.split}"
        " --pool {params.pool} --train-size {wildcards.size} --sizes {params.sizes:q}"
        " --trigger {wildcards.trigger} --trigger-size {wildcards.tsize}"
        " --trigger-value {wildcards.tvalue} --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule backdoor:
    """Backdoor metrics of a (poisoned or clean) victim on fully triggered validation images."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        split=split_file,
        model=f"{ROOT}/{plan.MODEL}/model.pt",
        metrics=f"{ROOT}/{plan.MODEL}/metrics.json",
    output:
        f"{ROOT}/{plan.BACKDOOR}",
    log:
        f"{ROOT}/logs/backdoor/{plan.BACKDOOR}.log",
    benchmark:
        f"{ROOT}/benchmarks/backdoor/{plan.BACKDOOR}.tsv"
    wildcard_constraints:
        trigger=alternatives(TRIGGERS),
        target=alternatives(TARGETS),
        tsize=r"\d+",
        tvalue=r"\d+",
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        data=prepared_dir,
        model=lambda w, input: str(Path(input.model).parent),
        runtime=RUNTIME,
    shell:
        "python -m segmia backdoor --model {params.model} --data {params.data} --split {input.split}"
        " --trigger {wildcards.trigger} --size {wildcards.tsize} --value {wildcards.tvalue}"
        " --target {wildcards.target} --out {output} --threads {threads} {params.runtime} 2> {log}"
