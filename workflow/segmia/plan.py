"""From a validated config to the things the DAG builds: models, queries, attacks, tables.

Paths encode what determines a file (results/README.md); every pattern below is relative to
the results root and its ``{wildcards}`` are the Snakemake wildcards of the rule that writes it.
A model is identified by (dataset, role, architecture, variant, training size, seed): each is
trained once, however many studies, attacks, tables and figures use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import protocol
from .attacks import names
from .config import REFERENCE_SETTINGS, RELEASE_DEFENCES, study_seeds
from .data.names import OWN_QUERY, REFERENCE_POOL, reference_unit
from .models.poisoning import DEFAULT_SCHEDULE, TRIGGERS

SPLIT = "{dataset}/splits/s{seed}.csv"
MODEL = "{dataset}/models/{role}/{arch}/{variant}/n{size}_s{seed}"
QUERY = MODEL + "/queries/{pool}"
#: a model's answers on its own pool's MIA set: written by the job that trains it
MIA_QUERY = QUERY.replace("{pool}", OWN_QUERY)
ATTACK_MODEL = "{dataset}/attack_models/{attack}/{release}/{arch}/{variant}/n{size}_s{seed}"
#: every attack on one victim, by one shadow (or reference set), under one release: one job
EVALUATIONS = "{dataset}/attacks/{release}/{varch}/{vvariant}/vs_{sarch}/{svariant}/n{size}_s{seed}"
EVALUATION = EVALUATIONS + "/{attack}"
TABLE = "tables/{study}/{table}"
FIGURE = "figures/{study}/{figure}"
PREPARED = "prepared/{dataset}"
BACKDOOR = MODEL + "/backdoor/{trigger}_k{tsize}_v{tvalue}_{target}.json"
#: a triggered query (a poisoning study's ``query_trigger``): the token its query directory and
#: the release component of its attack models and evaluations end with
QUERY_TRIGGER = "trigger_{trigger}_k{tsize}_v{tvalue}"
QUERY_TRIGGERED = QUERY + "." + QUERY_TRIGGER
_QUERY_TOKEN = re.compile(rf"\.(trigger_({'|'.join(TRIGGERS)})_k\d+_v\d+)$")

#: a reference set (the "shadow variant" of a LiRA/RMIA evaluation): ``refs<K>`` for K undefended
#: reference models, ``refs<K>.<variant>`` for K trained with the training variant ``<variant>``
REFERENCE_SET = r"refs\d+(?:\.[A-Za-z][A-Za-z0-9_.]*)?"
LEARNED_ATTACKS = names.LEARNED
REFERENCE_ATTACKS = names.REFERENCE
#: the figures every study of a type renders
STUDY_FIGURES = {
    "architectures": ("heatmap", "roc"),
    "defences": ("privacy_utility", "roc"),
    "dp_sweep": ("epsilon", "roc"),
    "poisoning": ("poisoning", "roc"),
    "attack_comparison": ("roc",),
    "training_sizes": ("training_size", "roc"),
    "protocol_ablation": ("protocol_ablation",),
}
#: every figure kind a study can render (the ``segmia figure`` choices)
FIGURES = tuple(sorted({f for figures in STUDY_FIGURES.values() for f in figures}))
#: the single table of the study types that have one (architectures: one per attack)
STUDY_TABLES = {
    "defences": "defences",
    "dp_sweep": "epsilon",
    "poisoning": "poisoning",
    "attack_comparison": "attacks",
    "training_sizes": "training_size",
    "protocol_ablation": "protocol_ablation",
}


@dataclass(frozen=True)
class Model:
    dataset: str
    role: str  # victim, shadow
    arch: str
    variant: str
    size: int
    seed: int

    @property
    def pool(self) -> str:
        """The split pool the model trains on: the victim's, the attacker's (shadow), or for a
        reference model (role ``ref<k>``) the reference universe (see ``split.reference_universe``)."""
        if self.role.startswith("ref"):
            return REFERENCE_POOL
        return "victim" if self.role == "victim" else "shadow"

    def path(self) -> str:
        return MODEL.format(**self.__dict__)

    def query(self, trigger: str | None = None) -> str:
        """The model's answers on the MIA set of its own pool (written by its training job);
        ``trigger``: a query-trigger token (:func:`query_token`), the answers with that trigger
        written into the images."""
        path = MIA_QUERY.format(**self.__dict__)
        return f"{path}.{trigger}" if trigger else path

    def reference_query(self) -> str:
        """The model's answers on the reference universe (LiRA/RMIA): a reference model's own
        query, a victim's query of the reference pool."""
        if self.pool == REFERENCE_POOL:
            return self.query()
        return QUERY.format(**self.__dict__, pool=REFERENCE_POOL)


@dataclass(frozen=True)
class Evaluation:
    dataset: str
    attack: str
    release: str
    victim: Model
    shadow: Model

    @property
    def seed(self) -> int:
        return self.victim.seed

    @property
    def attack_name(self) -> str:
        """The attack's config name (``attack`` without a protocol token)."""
        return protocol.split_attack(self.attack)[0]

    @property
    def size(self) -> int:
        return self.victim.size

    @property
    def query(self) -> str | None:
        """The query-trigger token of an attack that queries triggered images (None: clean)."""
        return split_query(self.release)[1]

    def path(self) -> str:
        return f"{self.group()}/{self.attack}"

    def group(self) -> str:
        """The directory of every evaluation of this victim by this shadow under this release,
        written by one job."""
        return EVALUATIONS.format(
            dataset=self.dataset,
            release=self.release,
            varch=self.victim.arch,
            vvariant=self.victim.variant,
            sarch=self.shadow.arch,
            svariant=self.shadow.variant,
            size=self.size,
            seed=self.seed,
        )

    def attack_model(self) -> str | None:
        """The fitted learned attack (None for threshold attacks): one per shadow, many victims."""
        if self.attack not in LEARNED_ATTACKS:
            return None
        return ATTACK_MODEL.format(
            dataset=self.dataset,
            attack=self.attack,
            release=self.release,
            arch=self.shadow.arch,
            variant=self.shadow.variant,
            size=self.size,
            seed=self.seed,
        )


def query_token(trigger: str, size: int, value: int) -> str:
    """The token of queries with ``trigger`` (side/height ``size``, intensity ``value``) written in."""
    return QUERY_TRIGGER.format(trigger=trigger, tsize=size, tvalue=value)


def query_release(release: str, token: str | None) -> str:
    """The release component of an attack that queries with trigger ``token`` (None: clean): the
    release name (protocol tokens included) followed by the query token, e.g.
    ``none.trigger_square_k16_v255``. What the attacker is given is still the release's output;
    the token says on which input."""
    return f"{release}.{token}" if token else release


def split_query(release: str) -> tuple[str, str | None]:
    """(the release name with its protocol tokens, the query-trigger token or None)."""
    found = _QUERY_TOKEN.search(release)
    return (release[: found.start()], found.group(1)) if found else (release, None)


def train_size(config: dict, study: dict) -> int:
    return int(
        study.get("train_size") or config["datasets"][study["dataset"]]["split"]["train_size"]
    )


def variants(config: dict) -> dict[str, dict]:
    """Every training variant the config uses, by the name its model paths carry.

    Training defences keep their config name; a DP sweep adds ``<dp>.eps<e>`` (the base defence
    itself at its own epsilon); a poisoning study adds
    ``poison.<trigger>.k<size>.v<value>.<target>.p<rate>`` for every rate above 0 (rate 0 is the
    clean model, trained once), with ``.fixed_subset`` before ``.p<rate>`` under that schedule
    (the default ``per_load`` adds nothing, so its models keep their paths).
    """
    out = {"none": {"type": "none"}}
    for name, defence in config["defences"].items():
        if defence["type"] not in RELEASE_DEFENCES:
            out[name] = defence
    for study in config["studies"].values():
        for name, spec in _study_variants(config, study).items():
            out[name] = spec
    return out


def releases(config: dict) -> dict[str, dict]:
    """Every output post-processing (release) the config uses, by name."""
    out = {"none": {"type": "none"}}
    for name, defence in config["defences"].items():
        if defence["type"] in RELEASE_DEFENCES:
            out[name] = defence
    return out


def _study_variants(config: dict, study: dict) -> dict[str, dict]:
    """{variant name: spec} of a study's victims (the shadow always trains as 'none')."""
    kind = study["type"]
    if kind == "defences":
        return {
            d: config["defences"].get(d, {"type": "none"})
            for d in study["defences"]
            if d == "none" or config["defences"][d]["type"] not in RELEASE_DEFENCES
        }
    if kind == "dp_sweep":
        base = config["defences"][study["defence"]]
        out = {"none": {"type": "none"}}
        for eps in study["epsilons"]:
            name = study["defence"] if eps == base["epsilon"] else f"{study['defence']}.eps{eps:g}"
            out[name] = {**base, "epsilon": eps}
        return out
    if kind == "poisoning":
        out = {"none": {"type": "none"}}
        for trigger in study["triggers"]:
            for rate in study["rates"]:
                if rate > 0:
                    schedule = study["poison_schedule"]
                    out[poison_variant(study, trigger, rate)] = {
                        "type": "poison",
                        "rate": rate,
                        "trigger": trigger,
                        "size": study["trigger_size"],
                        "value": study["trigger_value"],
                        "target": study["target"],
                        # per_load specs stay as before the key existed (same spec, no rerun)
                        **({} if schedule == DEFAULT_SCHEDULE else {"schedule": schedule}),
                    }
        return out
    return {"none": {"type": "none"}}


def poison_variant(study: dict, trigger: str, rate: float) -> str:
    if rate == 0:
        return "none"
    schedule = study["poison_schedule"]
    tag = "" if schedule == DEFAULT_SCHEDULE else f".{schedule}"
    return f"poison.{trigger}.k{study['trigger_size']}.v{study['trigger_value']}.{study['target']}{tag}.p{rate:g}"


def _defence_pair(config: dict, arch: str, defence: str) -> tuple[str, str, str, str]:
    """(victim arch, victim variant, shadow arch, release) of a defence."""
    if defence != "none" and config["defences"][defence]["type"] in RELEASE_DEFENCES:
        return arch, "none", arch, defence
    return arch, defence, arch, "none"


def reference_set(k: int, variant: str) -> str:
    """The name of K reference models of training variant ``variant`` (``REFERENCE_SET``)."""
    return f"refs{k}" if variant == "none" else f"refs{k}.{variant}"


def reference_set_parts(name: str) -> tuple[int, str]:
    """(K, training variant) of a reference set's name: the inverse of ``reference_set``."""
    if not re.fullmatch(REFERENCE_SET, name):
        raise ValueError(f"{name!r} is not a reference set (refs<K> or refs<K>.<variant>)")
    k, _, variant = name.removeprefix("refs").partition(".")
    return int(k), variant or "none"


def references(model: Model) -> list[Model]:
    """The K reference models of a reference-set identity ``Model(..., role='reference',
    variant=reference_set(K, variant))``: roles ``ref0`` .. ``ref<K-1>``, trained with
    ``variant`` on the victim's dataset, architecture of the set, N and seed."""
    k, variant = reference_set_parts(model.variant)
    return [
        Model(model.dataset, f"ref{i}", model.arch, variant, model.size, model.seed)
        for i in range(k)
    ]


def reference_variant(study: dict, victim: Model) -> str:
    """The training variant of the reference models of an attack on ``victim``: the victim's
    (``reference_variant: victim``) or none (``none``: an attacker who does not know the
    recipe)."""
    return victim.variant if study["reference_variant"] == "victim" else "none"


def study_evaluations(config: dict, name: str) -> list[Evaluation]:
    study = config["studies"][name]
    if study["type"] == "protocol_ablation":
        evaluations = []
        for _, proto, dataset in protocol.ablation_arms(study):
            evaluations += _evaluations(config, {**study, "dataset": dataset}, proto)
        return list(dict.fromkeys(evaluations))
    return _evaluations(config, study, protocol.study_protocol(config, study))


def _evaluations(config: dict, study: dict, proto: dict) -> list[Evaluation]:
    dataset, size = study["dataset"], train_size(config, study)
    kind = study["type"]

    def model(role, arch, variant, n, seed):
        return Model(dataset, role, arch, protocol.model_variant(variant, proto), n, seed)

    def evaluation(attack, release, victim, shadow):
        return Evaluation(
            dataset,
            protocol.attack(attack, proto),
            protocol.release(release, attack, proto),
            victim,
            shadow,
        )

    if kind == "architectures":
        archs = study["architectures"]
        pairs = [(v, "none", s, "none") for v in archs for s in archs]
    elif kind in ("defences", "attack_comparison"):
        pairs = [_defence_pair(config, study["architecture"], d) for d in study["defences"]]
    elif kind == "training_sizes":
        arch = study["architecture"]
        return [
            evaluation(
                attack,
                "none",
                model("victim", arch, "none", n, seed),
                model("shadow", arch, "none", n, seed),
            )
            for seed in study_seeds(config, study)
            for n in study["sizes"]
            for attack in study["attacks"]
        ]
    elif kind == "protocol_ablation":
        arch = study["architecture"]
        pairs = [(arch, "none", arch, "none")]
    else:  # dp_sweep, poisoning: one victim per training variant, undefended shadow
        arch = study["architecture"]
        pairs = [(arch, v, arch, "none") for v in _study_variants(config, study)]
    evaluations = []
    for seed in study_seeds(config, study):
        for varch, vvariant, sarch, release in pairs:
            victim = model("victim", varch, vvariant, size, seed)
            shadow = model("shadow", sarch, "none", size, seed)
            for attack in study["attacks"]:
                if attack in REFERENCE_ATTACKS:  # "shadow" = the set of K reference models
                    k, variant = study["reference_models"], reference_variant(study, victim)
                    refs = Model(dataset, "reference", sarch, reference_set(k, variant), size, seed)
                    evaluations.append(Evaluation(dataset, attack, release, victim, refs))
                else:
                    evaluations.append(evaluation(attack, release, victim, shadow))
    if kind == "poisoning" and study["query_trigger"]:
        evaluations += _triggered(config, study, evaluations)
    return list(dict.fromkeys(evaluations))


def _triggered(config: dict, study: dict, evaluations: list[Evaluation]) -> list[Evaluation]:
    """A poisoning study's ``query_trigger`` evaluations: each clean-query evaluation again with
    victim and shadow queried on trigger-stamped MIA images, a poisoned victim with its own
    trigger, the clean victim (rate 0) with every trigger."""
    specs = _study_variants(config, study)
    out = []
    for ev in evaluations:
        own = specs[protocol.split_variant(ev.victim.variant)[0]].get("trigger")
        for trigger in [own] if own else study["triggers"]:
            token = query_token(trigger, study["trigger_size"], study["trigger_value"])
            release = query_release(ev.release, token)
            out.append(Evaluation(ev.dataset, ev.attack, release, ev.victim, ev.shadow))
    return out


def table_evaluations(config: dict, name: str, table: str | None = None) -> list[Evaluation]:
    """The evaluations a study's table reads (an architectures study: one table per attack)."""
    evaluations = study_evaluations(config, name)
    if config["studies"][name]["type"] == "architectures" and table is not None:
        evaluations = [ev for ev in evaluations if ev.attack_name == table]
    return evaluations


def all_evaluations(config: dict) -> dict[str, list[Evaluation]]:
    return {name: study_evaluations(config, name) for name in config["studies"]}


def evaluation_groups(config: dict) -> dict[str, list[Evaluation]]:
    """Every evaluation the config needs, by group (:meth:`Evaluation.group`): what one job
    evaluates, the attacks of every study on that victim, shadow and release."""
    groups: dict[str, list[Evaluation]] = {}
    for evaluations in all_evaluations(config).values():
        for ev in evaluations:
            group = groups.setdefault(ev.group(), [])
            if ev not in group:
                group.append(ev)
    return groups


def model_studies(config: dict) -> dict[Model, list[str]]:
    """Every segmentation model the config needs, each once, with the studies that use it."""
    models: dict[Model, list[str]] = {}
    for name, evaluations in all_evaluations(config).items():
        for ev in evaluations:
            needed = references(ev.shadow) if ev.shadow.role == "reference" else [ev.shadow]
            for model in (ev.victim, *needed):
                studies = models.setdefault(model, [])
                if name not in studies:
                    studies.append(name)
    return models


def all_models(config: dict) -> list[Model]:
    """Every segmentation model the config needs, each once."""
    return list(model_studies(config))


def study_victims(config: dict, name: str) -> list[Model]:
    return list(dict.fromkeys(ev.victim for ev in study_evaluations(config, name)))


def study_backdoors(config: dict, name: str) -> list[str]:
    """Backdoor evaluations of a poisoning study: each poisoned victim with its own trigger, the
    clean victim (rate 0) with every trigger, as the baseline."""
    study = config["studies"][name]
    if study["type"] != "poisoning":
        return []
    specs = variants(config)
    out = []
    for model in study_victims(config, name):
        own = specs[protocol.split_variant(model.variant)[0]].get("trigger")
        for trigger in [own] if own else study["triggers"]:
            out.append(
                BACKDOOR.format(
                    **model.__dict__,
                    trigger=trigger,
                    tsize=study["trigger_size"],
                    tvalue=study["trigger_value"],
                    target=study["target"],
                )
            )
    return out


def study_tables(config: dict, name: str) -> list[str]:
    """Table stems (no extension) of a study."""
    study = config["studies"][name]
    names = study["attacks"] if study["type"] == "architectures" else [STUDY_TABLES[study["type"]]]
    return [TABLE.format(study=name, table=t) for t in names]


def study_figures(config: dict, name: str) -> list[str]:
    kind = config["studies"][name]["type"]
    return [FIGURE.format(study=name, figure=f) + ".png" for f in STUDY_FIGURES[kind]]


# --- specs: the JSON each step receives (what determines its result) ---------------------------


def model_spec(config: dict, model: Model) -> dict:
    ds = config["datasets"][model.dataset]
    base, switches = protocol.split_variant(model.variant)
    variant = variant_spec(config, model.variant)
    training = ds["training"]
    if switches["input_scale"] != protocol.SEGMIA["input_scale"]:
        training = {**training, "input_scale": switches["input_scale"]}
    # the split sizes: the MIA set the training job queries the model on, the reference
    # universe a reference model draws from (at its membership unit), min-max's inner MIA set
    unit = {"reference_unit": reference_unit(ds["split"])} if model.pool == "reference" else {}
    return {
        "dataset": model.dataset,
        "role": model.role,
        "pool": model.pool,
        "arch_name": model.arch,
        "arch": config["architectures"][model.arch],
        "variant_name": base,
        "variant": variant,
        "train_size": model.size,
        "seed": model.seed,
        "training": training,
        "split": ds["split"],
        **unit,
    }


def variant_spec(config: dict, name: str) -> dict:
    """The training variant of a model's variant name (protocol tokens aside)."""
    return variants(config)[protocol.split_variant(name)[0]]


def release_spec(config: dict, name: str) -> dict:
    """What the attacker is given under a release name (``none.logits``: the raw logits; a
    query-trigger token changes the input, not the release)."""
    base, switches = protocol.split_release(split_query(name)[0])
    spec = releases(config)[base]
    return {**spec, "logits": True} if switches["attacker_input"] == "logits" else spec


def release_name(name: str) -> str:
    """The ``release_name`` of specs and metrics: the release's config name without protocol
    tokens, followed by a triggered query's token (so summaries and tables tell it apart)."""
    base, token = split_query(name)
    return query_release(protocol.split_release(base)[0], token)


def teacher(model: Model) -> Model:
    """The teacher of a distilled victim: the undefended victim (same architecture, size, seed,
    and protocol)."""
    _, switches = protocol.split_variant(model.variant)
    variant = protocol.model_variant("none", switches)
    return Model(model.dataset, model.role, model.arch, variant, model.size, model.seed)


def study_spec(config: dict, name: str) -> dict:
    """The JSON the table and figure jobs receive: the study's config plus the type of each
    defence it names (to find the author's logged numbers)."""
    study = config["studies"][name]
    types = {d: config["defences"][d]["type"] for d in study.get("defences", []) if d != "none"}
    return {**study, "defence_types": types}


def reference_spec(config: dict, victim: Model, reference_set: Model, release: str) -> dict:
    """The JSON the reference-attacks job receives: the victim, its reference set and release,
    and the dataset's reference-attack settings (its attack-comparison studies agree on them,
    which the config check enforces)."""
    study = next(
        s
        for s in config["studies"].values()
        if s["type"] == "attack_comparison" and s["dataset"] == victim.dataset
    )
    return {
        "dataset": victim.dataset,
        "attack": "reference",
        "release_name": release,
        "release": release_spec(config, release),
        "seed": victim.seed,
        "train_size": victim.size,
        "victim": {"arch": victim.arch, "variant": victim.variant},
        "shadow": {"arch": reference_set.arch, "variant": reference_set.variant},
        **{key: study[key] for key in REFERENCE_SETTINGS},
    }


def evaluation_spec(config: dict, ev: Evaluation) -> dict:
    """The JSON an attack job receives: config names without protocol tokens, and the protocol
    switches its path carries (``protocol``)."""
    attack, attack_switches = protocol.split_attack(ev.attack)
    _, release_switches = protocol.split_release(split_query(ev.release)[0])
    victim, victim_switches = protocol.split_variant(ev.victim.variant)
    shadow, _ = protocol.split_variant(ev.shadow.variant)
    return {
        "dataset": ev.dataset,
        "attack": attack,
        "release_name": release_name(ev.release),
        "release": release_spec(config, ev.release),
        "seed": ev.seed,
        "train_size": ev.size,
        "victim": {"arch": ev.victim.arch, "variant": victim},
        "shadow": {"arch": ev.shadow.arch, "variant": shadow},
        "protocol": {**victim_switches, **release_switches, **attack_switches},
    }


def attack_fit_spec(config: dict, attack: str, release: str, shadow: Model) -> dict:
    """The JSON of ``fit_attack``: a learned ``attack`` fitted on the shadow's outputs under
    ``release`` (its name as the path carries it)."""
    return {
        "attack": attack,
        "release_name": release_name(release),
        "release": release_spec(config, release),
        "recipe": config["attack"],
        "shadow": shadow.path(),
    }


def weight_files(config: dict) -> list[str]:
    """The pretrained weight files a validated config needs: the encoders of the architectures its
    models use, the attack classifier's when a study runs a learned attack, and the min-max inner
    attack's."""
    from .models.weights import arch_file, attack_file, inner_file

    models = all_models(config)
    names = {arch_file(config["architectures"][a]) for a in {m.arch for m in models}}
    names |= {inner_file(config, variant_spec(config, m.variant)) for m in models}
    if any(set(s["attacks"]) & set(LEARNED_ATTACKS) for s in config["studies"].values()):
        names.add(attack_file(config["attack"]))
    return sorted(n for n in names if n)
