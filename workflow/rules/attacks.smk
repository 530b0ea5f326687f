rule fit_attack:
    input:
        unpack(lambda w: prepared(w.dataset)),
        logits=lambda w: f"{ROOT}/{model_from(w, role='shadow').query()}/logits.npy",
        samples=lambda w: f"{ROOT}/{model_from(w, role='shadow').query()}/samples.csv",
    output:
        model=f"{ROOT}/{plan.ATTACK_MODEL}/attack.pt",
        snapshots=f"{ROOT}/{plan.ATTACK_MODEL}/snapshots.pt",
        spec=f"{ROOT}/{plan.ATTACK_MODEL}/spec.json",
        log=f"{ROOT}/{plan.ATTACK_MODEL}/log.csv",
        metrics=f"{ROOT}/{plan.ATTACK_MODEL}/metrics.json",
    log:
        f"{ROOT}/logs/fit_attack/{plan.ATTACK_MODEL}.log",
    benchmark:
        f"{ROOT}/benchmarks/fit_attack/{plan.ATTACK_MODEL}.tsv"
    wildcard_constraints:
        attack="|".join(plan.LEARNED_ATTACKS),
    conda:
        ENV
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    params:
        spec=lambda w: as_json(
            {
                "attack": w.attack,
                "release_name": w.release,
                "release": plan.release_spec(CFG, w.release),
                "recipe": CFG["attack"],
                "shadow": model_from(w, role="shadow").path(),
            }
        ),
        data=prepared_dir,
        query=lambda w, input: str(Path(input.logits).parent),
        out=lambda w, output: str(Path(output.model).parent),
        runtime=RUNTIME,
    shell:
        "python -m segmia fit-attack --shadow-query {params.query} --data {params.data}"
        " --spec {params.spec:q} --out {params.out} --threads {threads} {params.runtime} 2> {log}"


rule eval_attack:
    input:
        unpack(lambda w: prepared(w.dataset)),
        attack=lambda w: f"{ROOT}/{plan.Evaluation(w.dataset, w.attack, w.release, victim_of(w), shadow_of(w)).attack_model()}/attack.pt",
        logits=lambda w: f"{ROOT}/{victim_of(w).query()}/logits.npy",
        samples=lambda w: f"{ROOT}/{victim_of(w).query()}/samples.csv",
    output:
        scores=f"{ROOT}/{plan.EVALUATION}/scores.csv",
        metrics=f"{ROOT}/{plan.EVALUATION}/metrics.json",
    log:
        f"{ROOT}/logs/eval_attack/{plan.EVALUATION}.log",
    benchmark:
        f"{ROOT}/benchmarks/eval_attack/{plan.EVALUATION}.tsv"
    wildcard_constraints:
        attack="|".join(plan.LEARNED_ATTACKS),
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


rule global_loss:
    input:
        unpack(lambda w: prepared(w.dataset)),
        shadow=lambda w: f"{ROOT}/{shadow_of(w).path()}/metrics.json",
        logits=lambda w: f"{ROOT}/{victim_of(w).query()}/logits.npy",
        samples=lambda w: f"{ROOT}/{victim_of(w).query()}/samples.csv",
    output:
        scores=f"{ROOT}/{plan.EVALUATION}/scores.csv",
        metrics=f"{ROOT}/{plan.EVALUATION}/metrics.json",
    log:
        f"{ROOT}/logs/global_loss/{plan.EVALUATION}.log",
    benchmark:
        f"{ROOT}/benchmarks/global_loss/{plan.EVALUATION}.tsv"
    wildcard_constraints:
        attack="global_loss",
    conda:
        ENV
    params:
        spec=evaluation_spec,
        data=prepared_dir,
        shadow=lambda w, input: str(Path(input.shadow).parent),
        query=lambda w, input: str(Path(input.logits).parent),
        out=lambda w, output: str(Path(output.metrics).parent),
    shell:
        "python -m segmia global-loss --shadow-model {params.shadow} --victim-query {params.query}"
        " --data {params.data} --spec {params.spec:q} --out {params.out} 2> {log}"
