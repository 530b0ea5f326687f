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


rule eval_attack:
    """Score a victim's MIA set with a fitted learned attack: scores, metrics, null control."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        attack=lambda w: f"{ROOT}/{evaluation_of(w).attack_model()}/attack.pt",
        logits=lambda w: f"{ROOT}/{victim_query(w)}/logits.npy",
        samples=lambda w: f"{ROOT}/{victim_query(w)}/samples.csv",
    output:
        scores=f"{ROOT}/{plan.EVALUATION}/scores.csv",
        metrics=f"{ROOT}/{plan.EVALUATION}/metrics.json",
    log:
        f"{ROOT}/logs/eval_attack/{plan.EVALUATION}.log",
    benchmark:
        f"{ROOT}/benchmarks/eval_attack/{plan.EVALUATION}.tsv"
    wildcard_constraints:
        attack="|".join(names.LEARNED),
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        spec=evaluation_spec,
        data=prepared_dir,
        attack=lambda w, input: str(Path(input.attack).parent),
        query=lambda w, input: str(Path(input.logits).parent),
        out=lambda w, output: str(Path(output.metrics).parent),
        runtime=RUNTIME,
    shell:
        "python -m segmia eval-attack --attack-model {params.attack} --victim-query {params.query}"
        " --data {params.data} --spec {params.spec:q} --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule threshold_attack:
    """Global-loss or loss-aggregate threshold attack on a victim's MIA set."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        shadow=lambda w: f"{ROOT}/{shadow_of(w).path()}/metrics.json",
        shadow_query=lambda w: f"{ROOT}/{shadow_query(w)}/logits.npy",
        logits=lambda w: f"{ROOT}/{victim_query(w)}/logits.npy",
        samples=lambda w: f"{ROOT}/{victim_query(w)}/samples.csv",
    output:
        scores=f"{ROOT}/{plan.EVALUATION}/scores.csv",
        metrics=f"{ROOT}/{plan.EVALUATION}/metrics.json",
    log:
        f"{ROOT}/logs/threshold_attack/{plan.EVALUATION}.log",
    benchmark:
        f"{ROOT}/benchmarks/threshold_attack/{plan.EVALUATION}.tsv"
    wildcard_constraints:
        attack=rf"({'|'.join(names.THRESHOLD)})(\.{THRESHOLD_TOKEN})?",
    conda:
        ENV
    params:
        spec=evaluation_spec,
        data=prepared_dir,
        shadow=lambda w, input: str(Path(input.shadow).parent),
        shadow_query=lambda w, input: str(Path(input.shadow_query).parent),
        query=lambda w, input: str(Path(input.logits).parent),
        out=lambda w, output: str(Path(output.metrics).parent),
    shell:
        "python -m segmia threshold-attack --shadow-model {params.shadow} --shadow-query {params.shadow_query}"
        " --victim-query {params.query}"
        " --data {params.data} --spec {params.spec:q} --out {params.out} 2> {log}"


rule reference_attacks:
    """LiRA and RMIA on a victim with its K reference models (one job, every variant)."""
    input:
        unpack(lambda w: prepared(w.dataset)),
        unpack(reference_inputs),
    output:
        **{
            attack: f"{ROOT}/{reference_evaluation(attack)}/metrics.json"
            for attack in names.REFERENCE
        },
        **{
            f"{attack}_scores": f"{ROOT}/{reference_evaluation(attack)}/scores.csv"
            for attack in names.REFERENCE
        },
    log:
        f"{ROOT}/logs/reference_attacks/{reference_evaluation('all')}.log",
    benchmark:
        f"{ROOT}/benchmarks/reference_attacks/{reference_evaluation('all')}.tsv"
    wildcard_constraints:
        refset=plan.REFERENCE_SET,
    conda:
        ENV
    params:
        spec=lambda w: reference_spec(w),
        data=prepared_dir,
        victim=lambda w: f"{ROOT}/{victim_of(w).path()}",
        refs=lambda w: [f"{ROOT}/{m.path()}" for m in reference_models(w)],
        outs=lambda w, output: " ".join(
            f"{a}={Path(output[a]).parent}" for a in names.REFERENCE
        ),
    shell:
        "python -m segmia reference-attacks --victim-model {params.victim} --references {params.refs}"
        " --data {params.data} --spec {params.spec:q} --out {params.outs} 2> {log}"
