"""From a validated config to the things the DAG builds: models, queries, attacks, tables.

Paths encode what determines a file (results/README.md); every pattern below is relative to
the results root and its ``{wildcards}`` are the Snakemake wildcards of the rule that writes it.
A model is identified by (dataset, role, architecture, variant, training size, seed): each is
trained once, however many studies, attacks, tables and figures use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attacks import names
from .config import RELEASE_DEFENCES, study_seeds
from .data.names import REFERENCE_POOL

SPLIT = "{dataset}/splits/s{seed}.csv"
MODEL = "{dataset}/models/{role}/{arch}/{variant}/n{size}_s{seed}"
QUERY = MODEL + "/queries/{pool}"
ATTACK_MODEL = "{dataset}/attack_models/{attack}/{release}/{arch}/{variant}/n{size}_s{seed}"
EVALUATION = (
    "{dataset}/attacks/{attack}/{release}/{varch}/{vvariant}/vs_{sarch}/{svariant}/n{size}_s{seed}"
)
TABLE = "tables/{study}/{table}"
FIGURE = "figures/{study}/{figure}"
PREPARED = "prepared/{dataset}"
BACKDOOR = MODEL + "/backdoor/{trigger}_k{tsize}_v{tvalue}_{target}.json"

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

    def query(self) -> str:
        """The model's answers on the MIA set of its own pool."""
        return QUERY.format(**self.__dict__, pool=self.pool)


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
    def size(self) -> int:
        return self.victim.size

    def path(self) -> str:
        return EVALUATION.format(
            dataset=self.dataset,
            attack=self.attack,
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


def train_size(config: dict, study: dict) -> int:
    return int(
        study.get("train_size") or config["datasets"][study["dataset"]]["split"]["train_size"]
    )


def variants(config: dict) -> dict[str, dict]:
    """Every training variant the config uses, by the name its model paths carry.

    Training defences keep their config name; a DP sweep adds ``<dp>.eps<e>`` (the base defence
    itself at its own epsilon); a poisoning study adds
    ``poison.<trigger>.k<size>.v<value>.<target>.p<rate>`` for every rate above 0 (rate 0 is the
    clean model, trained once).
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
                    out[poison_variant(study, trigger, rate)] = {
                        "type": "poison",
                        "rate": rate,
                        "trigger": trigger,
                        "size": study["trigger_size"],
                        "value": study["trigger_value"],
                        "target": study["target"],
                    }
        return out
    return {"none": {"type": "none"}}


def poison_variant(study: dict, trigger: str, rate: float) -> str:
    if rate == 0:
        return "none"
    return f"poison.{trigger}.k{study['trigger_size']}.v{study['trigger_value']}.{study['target']}.p{rate:g}"


def _defence_pair(config: dict, arch: str, defence: str) -> tuple[str, str, str, str]:
    """(victim arch, victim variant, shadow arch, release) of a defence."""
    if defence != "none" and config["defences"][defence]["type"] in RELEASE_DEFENCES:
        return arch, "none", arch, defence
    return arch, defence, arch, "none"


def references(model: Model, k: int) -> list[Model]:
    """The K reference models of an attack on ``model``'s dataset (undefended, like a shadow)."""
    return [
        Model(model.dataset, f"ref{i}", model.arch, "none", model.size, model.seed)
        for i in range(k)
    ]


def study_evaluations(config: dict, name: str) -> list[Evaluation]:
    study = config["studies"][name]
    dataset, size = study["dataset"], train_size(config, study)
    kind = study["type"]
    if kind == "architectures":
        archs = study["architectures"]
        pairs = [(v, "none", s, "none") for v in archs for s in archs]
    elif kind in ("defences", "attack_comparison"):
        pairs = [_defence_pair(config, study["architecture"], d) for d in study["defences"]]
    elif kind == "training_sizes":
        arch = study["architecture"]
        return [
            Evaluation(
                dataset,
                attack,
                "none",
                Model(dataset, "victim", arch, "none", n, seed),
                Model(dataset, "shadow", arch, "none", n, seed),
            )
            for seed in study_seeds(config, study)
            for n in study["sizes"]
            for attack in study["attacks"]
        ]
    else:  # dp_sweep, poisoning: one victim per training variant, undefended shadow
        arch = study["architecture"]
        pairs = [(arch, v, arch, "none") for v in _study_variants(config, study)]
    evaluations = []
    for seed in study_seeds(config, study):
        for varch, vvariant, sarch, release in pairs:
            victim = Model(dataset, "victim", varch, vvariant, size, seed)
            shadow = Model(dataset, "shadow", sarch, "none", size, seed)
            for attack in study["attacks"]:
                if attack in REFERENCE_ATTACKS:  # "shadow" = the set of K reference models
                    refs = Model(
                        dataset, "reference", sarch, f"refs{study['reference_models']}", size, seed
                    )
                    evaluations.append(Evaluation(dataset, attack, release, victim, refs))
                else:
                    evaluations.append(Evaluation(dataset, attack, release, victim, shadow))
    return list(dict.fromkeys(evaluations))


def reference_count(model: Model) -> int:
    """K of a reference-set identity ``Model(..., role='reference', variant='refs<K>')``."""
    return int(model.variant.removeprefix("refs"))


def all_evaluations(config: dict) -> dict[str, list[Evaluation]]:
    return {name: study_evaluations(config, name) for name in config["studies"]}


def all_models(config: dict) -> list[Model]:
    """Every segmentation model the config needs, each once."""
    models = {}
    for evaluations in all_evaluations(config).values():
        for ev in evaluations:
            models[ev.victim] = None
            if ev.shadow.role == "reference":
                for ref in references(ev.shadow, reference_count(ev.shadow)):
                    models[ref] = None
            else:
                models[ev.shadow] = None
    return list(models)


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
        own = specs[model.variant].get("trigger")
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
    return {
        "dataset": model.dataset,
        "role": model.role,
        "pool": model.pool,
        "arch_name": model.arch,
        "arch": config["architectures"][model.arch],
        "variant_name": model.variant,
        "variant": variant_spec(config, model.variant),
        "train_size": model.size,
        "seed": model.seed,
        "training": ds["training"],
        **({"split": ds["split"]} if model.pool == "reference" else {}),
    }


def variant_spec(config: dict, name: str) -> dict:
    return variants(config)[name]


def release_spec(config: dict, name: str) -> dict:
    return releases(config)[name]


def teacher(model: Model) -> Model:
    """The teacher of a distilled victim: the undefended victim (same architecture, size, seed)."""
    return Model(model.dataset, model.role, model.arch, "none", model.size, model.seed)
