"""From a validated config to the things the DAG builds: models, queries, attacks, tables.

Paths encode what determines a file (DESIGN.md, "Naming"); every pattern below is relative to
the results root and its ``{wildcards}`` are the Snakemake wildcards of the rule that writes it.
A model is identified by (dataset, role, architecture, variant, training size, seed): each is
trained once, however many studies, attacks, tables and figures use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import study_seeds

SPLIT = "{dataset}/splits/s{seed}.csv"
MODEL = "{dataset}/models/{role}/{arch}/{variant}/n{size}_s{seed}"
QUERY = MODEL + "/queries/{pool}"
ATTACK_MODEL = "{dataset}/attack_models/{attack}/{release}/{arch}/{variant}/n{size}_s{seed}"
EVALUATION = (
    "{dataset}/attacks/{attack}/{release}/{varch}/{vvariant}/vs_{sarch}/{svariant}/n{size}_s{seed}"
)
TABLE = "tables/{study}/{attack}"
FIGURE = "figures/{study}/{figure}"
PREPARED = "prepared/{dataset}"

LEARNED_ATTACKS = ("type1", "type2")
ATTACK_LABELS = {"type1": "Type-I", "type2": "Type-II", "global_loss": "Global loss"}
#: the figures every study of a type renders
STUDY_FIGURES = {"architectures": ("heatmap", "roc")}


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
        """The split pool the model trains on (the victim's pool or the attacker's)."""
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


def study_evaluations(config: dict, name: str) -> list[Evaluation]:
    study = config["studies"][name]
    dataset, size = study["dataset"], train_size(config, study)
    evaluations = []
    if study["type"] == "architectures":
        for seed in study_seeds(config, study):
            for varch in study["architectures"]:
                for sarch in study["architectures"]:
                    victim = Model(dataset, "victim", varch, "none", size, seed)
                    shadow = Model(dataset, "shadow", sarch, "none", size, seed)
                    for attack in study["attacks"]:
                        evaluations.append(Evaluation(dataset, attack, "none", victim, shadow))
    return evaluations


def all_evaluations(config: dict) -> dict[str, list[Evaluation]]:
    return {name: study_evaluations(config, name) for name in config["studies"]}


def all_models(config: dict) -> list[Model]:
    models = {}
    for evaluations in all_evaluations(config).values():
        for ev in evaluations:
            models[ev.victim] = None
            models[ev.shadow] = None
    return list(models)


def study_tables(config: dict, name: str) -> list[str]:
    """Table stems (no extension) of a study: one per attack."""
    return [TABLE.format(study=name, attack=a) for a in config["studies"][name]["attacks"]]


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
    }


def variant_spec(config: dict, name: str) -> dict:
    if name == "none":
        return {"type": "none"}
    raise KeyError(name)


def release_spec(config: dict, name: str) -> dict:
    if name == "none":
        return {"type": "none"}
    raise KeyError(name)
