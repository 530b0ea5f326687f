rule fit_attack:
    """Train a learned attack (Type-I/II, loss map) on a shadow model's MIA-set outputs."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        unpack(attack_weights),
        logits=lambda w: f"{ROOT}/{shadow_query(w)}/logits.npy",
        samples=lambda w: f"{ROOT}/{shadow_query(w)}/samples.csv",
    output:
        model=f"{ROOT}/{plan.ATTACK_MODEL}/attack.pt",
        snapshots=f"{ROOT}/{plan.ATTACK_MODEL}/snapshots.pt",
        spec=f"{ROOT}/{plan.ATTACK_MODEL}/spec.json",
        history=f"{ROOT}/{plan.ATTACK_MODEL}/history.csv",
        metrics=f"{ROOT}/{plan.ATTACK_MODEL}/metrics.json",
    log:
        f"{ROOT}/logs/fit_attack/{plan.ATTACK_MODEL}.log",
    benchmark:
        f"{ROOT}/benchmarks/fit_attack/{plan.ATTACK_MODEL}.tsv"
    wildcard_constraints:
        attack="|".join(names.LEARNED),
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        spec=lambda w: as_json(
            plan.attack_fit_spec(
                CFG, w.attack, w.release, model_from(w, role="shadow")
            )
        ),
        data=prepared_dir,
        query=lambda w, input: str(Path(input.logits).parent),
        out=lambda w, output: str(Path(output.model).parent),
        weights=weights_args,
        runtime=RUNTIME,
    shell:
        "python -m segmia fit-attack --shadow-query {params.query} --data {params.data}"
        " --spec {params.spec:q} {params.weights} --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule evaluate:
    """Every attack on one victim by one shadow under one release (learned and threshold): scores, metrics, null control."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        shadow=lambda w: f"{ROOT}/{shadow_of(w).path()}/metrics.json",
        shadow_query=lambda w: f"{ROOT}/{shadow_query(w)}/logits.npy",
        logits=lambda w: f"{ROOT}/{victim_query(w)}/logits.npy",
        samples=lambda w: f"{ROOT}/{victim_query(w)}/samples.csv",
        attacks=lambda w: [
            f"{ROOT}/{path}/attack.pt" for path in group_attack_models(w).values()
        ],
    output:
        directory(f"{ROOT}/{plan.EVALUATIONS}"),
    log:
        f"{ROOT}/logs/evaluate/{plan.EVALUATIONS}.log",
    benchmark:
        f"{ROOT}/benchmarks/evaluate/{plan.EVALUATIONS}.tsv"
    wildcard_constraints:
        svariant=NOT_REFERENCE_SET,
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        # a group of threshold attacks alone needs no GPU
        gpu=lambda w: GPU if group_attack_models(w) else 0,
    params:
        specs=group_specs,
        data=prepared_dir,
        shadow=lambda w, input: str(Path(input.shadow).parent),
        shadow_query=lambda w, input: str(Path(input.shadow_query).parent),
        query=lambda w, input: str(Path(input.logits).parent),
        attack_models=lambda w: " ".join(
            f"{attack}={ROOT}/{path}"
            for attack, path in group_attack_models(w).items()
        ),
        runtime=RUNTIME,
    shell:
        "python -m segmia evaluate --victim-query {params.query} --shadow-model {params.shadow}"
        " --shadow-query {params.shadow_query} --data {params.data} --specs {params.specs:q}"
        " --attack-models {params.attack_models} --out {output} --threads {threads}"
        " {params.runtime} 2> {log}"


rule reference_attacks:
    """LiRA and RMIA on a victim with its K reference models (one job, every variant)."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        unpack(reference_inputs),
    output:
        directory(f"{ROOT}/{REFERENCE_EVALUATIONS}"),
    log:
        f"{ROOT}/logs/reference_attacks/{REFERENCE_EVALUATIONS}.log",
    benchmark:
        f"{ROOT}/benchmarks/reference_attacks/{REFERENCE_EVALUATIONS}.tsv"
    wildcard_constraints:
        refset=plan.REFERENCE_SET,
    conda:
        ENV
    params:
        spec=lambda w: reference_spec(w),
        data=prepared_dir,
        victim=lambda w: f"{ROOT}/{victim_of(w).path()}",
        refs=lambda w: [f"{ROOT}/{m.path()}" for m in reference_models(w)],
        outs=lambda w, output: " ".join(f"{a}={output}/{a}" for a in names.REFERENCE),
    shell:
        "python -m segmia reference-attacks --victim-model {params.victim} --references {params.refs}"
        " --data {params.data} --spec {params.spec:q} --out {params.outs} 2> {log}"
