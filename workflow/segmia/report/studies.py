"""Tables and figures of each study type, from metrics files only.

Every evaluation row gets a ``label`` saying what it compares (a victim/shadow pair, a defence, an
epsilon, a poison rate and trigger); tables show mean (± standard deviation over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..attacks.metrics import FPR_LEVELS
from ..attacks.names import FAMILY
from ..attacks.names import LABELS as ATTACK_LABELS
from ..io import atomic_path, read_json, write_csv
from ..plan import query_token, split_query
from . import ablation, figures, paper
from .summary import collect_evaluations
from .tables import NULL_NOTE, cell, null_cell, null_flags, write_grid_tables

ATTACK_METRICS = ["auc", "tpr_at_1pct_fpr", "accuracy", "null_auc"]
SHORT = {
    "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR@1%FPR",
    "tpr_at_0.1pct_fpr": "TPR@0.1%FPR",
    "accuracy": "acc.",
    "f1": "F1",
    "balanced_accuracy": "bal. acc.",
    "null_auc": "null AUC",
}


def load(
    study_name: str,
    study: dict,
    evaluations: list[str],
    models: list[str],
    backdoors: list[str] | None = None,
):
    """(evaluations with labels, victim models, backdoor results) of a study."""
    frame = collect_evaluations(study_name, evaluations)
    victims = pd.DataFrame([read_json(p) for p in models])
    kind = study["type"]
    if kind == "architectures":
        frame["label"] = "victim " + frame["victim"] + " / shadow " + frame["shadow"]
    elif kind in ("defences", "attack_comparison"):
        frame["label"] = np.where(frame["release"] != "none", frame["release"], frame["variant"])
        order = {d: i for i, d in enumerate(study["defences"])}
        frame = frame.sort_values("label", key=lambda s: s.map(order), kind="stable")
    elif kind == "training_sizes":
        frame["label"] = [f"N = {n}" for n in frame["train_size"]]
        frame = frame.sort_values("train_size", kind="stable")
    elif kind == "dp_sweep":
        eps = (
            victims.set_index(["variant", "seed"])["target_epsilon"]
            if "target_epsilon" in victims
            else None
        )
        frame["epsilon"] = [
            math.inf if v == "none" or eps is None else float(eps.get((v, s), math.inf))
            for v, s in zip(frame["variant"], frame["seed"], strict=True)
        ]
        frame["label"] = [
            ("non-private" if math.isinf(e) else f"ε = {e:g}") for e in frame["epsilon"]
        ]
        frame = frame.sort_values("epsilon", kind="stable")
    elif kind == "poisoning":
        frame = _poisoning_frame(frame, study, victims, models)
    elif kind == "protocol_ablation":
        frame = ablation.arms_frame(frame, study)
        frame["label"] = frame["arm"]
    back = pd.DataFrame([read_json(p) for p in backdoors]) if backdoors else pd.DataFrame()
    return frame, victims, back


def _poisoning_frame(
    frame: pd.DataFrame, study: dict, victims: pd.DataFrame, models: list[str]
) -> pd.DataFrame:
    """A poisoning study's evaluations, one row per trigger (the clean model is rate 0 of every
    trigger): ``case`` (trigger and rate), ``query`` (clean, or triggered: the attacker stamps
    the trigger into the queried images), ``label`` (the case, and a triggered query), and for a
    ``fixed_subset`` victim the AUC of its poisoned and of its clean members against all
    non-members (``auc_poisoned_members``, ``auc_clean_members``; the clean model's members are
    all clean)."""
    specs = {m["variant"]: m.get("variant_spec", {}) for m in victims.to_dict("records")}
    fixed = study["poison_schedule"] == "fixed_subset"
    poisoned = {}  # (variant, seed) -> sample ids poisoned in every epoch (fixed_subset)
    for path, m in zip(models if fixed else [], victims.to_dict("records"), strict=False):
        # the train job's members.csv beside metrics.json (the clean model's has no column)
        members = pd.read_csv(Path(path).parent / "members.csv", dtype={"sample_id": str})
        if "poisoned" in members:
            ids = members["sample_id"][members["poisoned"] == 1]
            poisoned[(m["variant"], m["seed"])] = set(ids)
    rows = []
    for row in frame.to_dict("records"):
        spec = specs.get(row["variant"], {})
        token = split_query(row["release"])[1]
        triggers = [spec["trigger"]] if spec.get("type") == "poison" else study["triggers"]
        if token:  # a triggered query: the case of its own trigger only
            triggers = [
                t
                for t in triggers
                if token == query_token(t, study["trigger_size"], study["trigger_value"])
            ]
        split = {}
        if fixed and not token:
            split = _member_split_aucs(row["path"], poisoned.get((row["variant"], row["seed"])))
        for trigger in triggers:
            rows.append(
                {
                    **row,
                    **split,
                    "trigger": trigger,
                    "rate": float(spec.get("rate", 0.0)),
                    "query": "triggered" if token else "clean",
                }
            )
    frame = pd.DataFrame(rows).sort_values(["trigger", "rate", "query"], kind="stable")
    frame["case"] = [
        f"{t}, p = {r:g}" for t, r in zip(frame["trigger"], frame["rate"], strict=True)
    ]
    frame["label"] = frame["case"].where(
        frame["query"] == "clean", frame["case"] + ", triggered query"
    )
    return frame


def _member_split_aucs(evaluation: str, poisoned: set[str] | None) -> dict[str, float]:
    """AUC of an evaluation's poisoned members and of its clean members, each against all its
    non-members (``poisoned``: the victim's poisoned sample ids; None: none poisoned)."""
    from sklearn.metrics import roc_auc_score

    scores = pd.read_csv(Path(evaluation) / "scores.csv", dtype={"sample_id": str})
    hit = scores["sample_id"].isin(poisoned or set())
    out = {}
    for name, members in (("poisoned", hit), ("clean", ~hit)):
        part = scores[(scores["member"] == 0) | ((scores["member"] == 1) & members)]
        both = part["member"].nunique() == 2
        out[f"auc_{name}_members"] = (
            float(roc_auc_score(part["member"], part["score"])) if both else np.nan
        )
    return out


def _poisoning_design(study: dict) -> str:
    """The caption of a poisoning table: the schedule, the queries, the backdoor metrics."""
    if study["poison_schedule"] == "fixed_subset":
        schedule = (
            "Schedule fixed_subset: a fixed, seeded subset of round(p N) training images is "
            "poisoned in every epoch and the other images never, so clean members get all their "
            "clean passes; poisoned members are never seen clean. *AUC, clean members* / *AUC, "
            "poisoned members*: each group of members against all non-members (the clean model's "
            "members are all clean)."
        )
    else:
        schedule = (
            "Schedule per_load (the study's): each load of each training image is poisoned with "
            "probability p, so every image is poisoned in about a fraction p of its epochs and "
            "members get about (1 - p) x the clean passes of the clean model's."
        )
    queries = "Attacks query clean images (victim and shadow)"
    if study["query_trigger"]:
        queries += (
            "; *AUC, triggered query* (beyond the paper): the attacker writes the trigger into "
            "the images it queries (victim and shadow; a poisoned victim's own trigger, the clean "
            "victim's per row; the true masks stay clean; global loss keeps the shadow's clean "
            "training-loss threshold)"
        )
    return (
        f"{schedule} {queries}. Realised p: poisoned loads over all training loads. On fully "
        "triggered validation images: target pixel agreement = fraction of pixels predicted as "
        "the poisoned target; pred./true fg = predicted over true foreground mass; backdoor "
        "success = 1 - min(pred./true fg, 1), the share of the foreground the trigger erases."
    )


def _ci_units(frame: pd.DataFrame) -> str:
    """What the bootstrap intervals resampled: whole groups (how many) or samples."""
    units = [
        f"{n} groups" if unit == "group" else "samples"
        for unit, n in zip(frame["ci_unit"], frame["ci_groups"], strict=True)
    ]
    return ", ".join(dict.fromkeys(units))


def _attack_order(order: dict[str, int]):
    """A sort key: attacks in the study's order, other columns as they are."""
    return lambda column: column.map(order) if column.name == "attack" else column


def _seed_intervals(rows: pd.DataFrame) -> pd.Series:
    """Each seed's 95 % interval of the AUC and of the null AUC, as text ("s<seed>" when several)."""

    def text(low: str, high: str) -> str:
        parts = [
            ("" if len(rows) < 2 else f"s{seed} ") + f"[{lo:.2f}, {hi:.2f}]"
            for seed, lo, hi in zip(rows["seed"], rows[low], rows[high], strict=True)
            if not pd.isna(lo)
        ]
        return "; ".join(parts)

    return pd.Series(
        {
            "intervals": text("auc_ci_low", "auc_ci_high"),
            "null_intervals": text("null_auc_ci_low", "null_auc_ci_high"),
        }
    )


def _stats(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=False)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    return out.join(grouped.size().rename("seeds")).reset_index()


def _utility(victims: pd.DataFrame) -> pd.DataFrame:
    """Validation Dice/IoU and training cost relative to the undefended model, per variant."""
    stats = _stats(victims, ["variant"], ["val_dice", "val_iou", "train_seconds"])
    base = stats.loc[stats["variant"] == "none", "train_seconds_mean"]
    stats["relative_cost"] = stats["train_seconds_mean"] / (
        float(base.iloc[0]) if len(base) else np.nan
    )
    if "epsilon" in victims:
        spent = victims.groupby("variant", sort=False)["epsilon"].mean().rename("spent_epsilon")
        stats = stats.merge(spent, on="variant", how="left")
    return stats


def _wide(frame: pd.DataFrame, key: str, attacks: list[str]) -> pd.DataFrame:
    """One row per ``key`` value, columns <attack>_<metric>_{mean,std}."""
    parts = []
    for attack in attacks:
        sub = frame[frame["attack"] == attack]
        stats = _stats(sub, [key], ATTACK_METRICS).drop(columns="seeds").set_index(key)
        stats = stats.join(null_flags(sub, [key]))
        stats.columns = [f"{attack}_{c}" for c in stats.columns]
        parts.append(stats)
    return pd.concat(parts, axis=1).reset_index()


def _formatted(
    wide: pd.DataFrame, key: str, attacks: list[str], extra: dict[str, str], seeds: int
) -> pd.DataFrame:
    out = pd.DataFrame({key: wide[key]})
    for attack in attacks:
        for m in ATTACK_METRICS:
            mean, std = wide[f"{attack}_{m}_mean"], wide[f"{attack}_{m}_std"]
            out[f"{ATTACK_LABELS.get(attack, attack)} {SHORT[m]}"] = (
                [
                    null_cell(a, b, seeds, f)
                    for a, b, f in zip(mean, std, wide[f"{attack}_null_flag"], strict=True)
                ]
                if m == "null_auc"
                else [cell(a, b, seeds) for a, b in zip(mean, std, strict=True)]
            )
    for column, title in extra.items():
        if column in wide:
            out[title] = [("" if pd.isna(v) else f"{v:.3f}") for v in wide[column]]
    return out


def _unresolved(n_nonmembers: int) -> set[str]:
    """The TPR-at-FPR metrics whose FPR is below 1 / #non-members (one false positive)."""
    return {m for m, level in FPR_LEVELS.items() if level < 1.0 / max(n_nonmembers, 1)}


def write_study_table(
    stem: Path, numeric: pd.DataFrame, formatted: pd.DataFrame, title: str, note: str
) -> None:
    write_csv(stem.with_suffix(".csv"), numeric)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"# {title}\n\n{note}\n\n{formatted.to_markdown(index=False)}\n")
    with atomic_path(stem.with_suffix(".tex")) as tmp:
        tmp.write_text(
            formatted.to_latex(
                index=False,
                caption=title,
                label=f"tab:{stem.parent.name}".replace("_", "-"),
                escape=True,
            )
        )


def _logs_note(reference: str | None) -> str:
    if not reference:
        return ""
    return (
        f" Columns marked *author's logs* are the numbers logged by the paper's author for "
        f"{paper.REFERENCES[reference]} (accuracy, original protocol), shown beside the "
        "reproduced *acc.* columns."
    )


@dataclass
class _Table:
    """What every study type's table writer reads: the study, its collected rows, where to
    write, and the note every table starts with."""

    study_name: str
    study: dict
    table: str
    frame: pd.DataFrame
    victims: pd.DataFrame
    back: pd.DataFrame
    stem: Path

    @property
    def attacks(self) -> list[str]:
        return self.study["attacks"]

    @property
    def reference(self) -> str | None:
        return self.study.get("paper")

    @property
    def seeds(self) -> int:
        return int(self.frame.groupby(["label", "attack"]).size().max())

    @property
    def note(self) -> str:
        return (
            f"Dataset `{self.study['dataset']}`; mean ± standard deviation over {self.seeds} "
            "seed(s); chance AUC 0.5."
        )

    def write(self, numeric: pd.DataFrame, formatted: pd.DataFrame, title: str, note: str) -> None:
        """CSV, Markdown and LaTeX; "n/a" where the FPR is not resolvable, and the null note."""
        n = int(self.frame["n_nonmembers"].min())
        unresolved = _unresolved(n)
        for column in formatted.columns:
            if any(SHORT[m] in column for m in unresolved):
                formatted[column] = "n/a"
        if unresolved:
            note += (
                f" n/a: with {n} non-members the smallest resolvable FPR is 1/{n} = {1 / n:.3g}; "
                f"a TPR at {', '.join(SHORT[m].split('@')[1] for m in sorted(unresolved))} "
                "would be the TPR at zero false positives (the CSV keeps that number)."
            )
        if any(SHORT["null_auc"] in column for column in formatted.columns):
            note += " " + NULL_NOTE
        write_study_table(self.stem, numeric, formatted, title, note)


def _architectures_table(t: _Table) -> None:
    title = f"{t.study_name}: {ATTACK_LABELS.get(t.table, t.table)} attack, victim (rows) x shadow (columns)"
    write_grid_tables(
        t.frame,
        t.stem,
        title,
        reference=paper.architecture_grid(t.reference, t.table),
        reference_title=paper.REFERENCES.get(t.reference, ""),
    )


def _protocol_ablation_table(t: _Table) -> None:
    numeric = ablation.changes(t.frame, t.study)
    t.write(
        numeric,
        ablation.formatted(numeric),
        f"{t.study_name}: what each protocol switch changes",
        ablation.note(t.study, t.seeds),
    )


def _training_sizes_table(t: _Table) -> None:
    wide = _wide(t.frame, "train_size", t.attacks)
    formatted = _formatted(wide, "train_size", t.attacks, {}, t.seeds).rename(
        columns={"train_size": "training-set size N"}
    )
    for attack, logged in paper.size_accuracy(t.reference).items():
        if attack in t.attacks:
            wide[f"paper_{attack}_accuracy"] = wide["train_size"].map(logged)
            formatted[f"{ATTACK_LABELS[attack]} acc. (author's logs)"] = [
                ("" if pd.isna(v) else f"{v:.3f}") for v in wide[f"paper_{attack}_accuracy"]
            ]
    t.write(
        wide,
        formatted,
        f"{t.study_name}: attack vs training-set size",
        t.note + _logs_note(t.reference),
    )


def _defences_table(t: _Table) -> None:
    utility = _utility(t.victims)
    wide = _wide(t.frame, "label", t.attacks)
    variant_of = t.frame.drop_duplicates("label").set_index("label")["variant"]
    wide = wide.merge(
        utility, left_on=wide["label"].map(variant_of), right_on="variant", how="left"
    ).drop(columns=["key_0"], errors="ignore")
    extra = {
        "val_dice_mean": "val. Dice",
        "val_iou_mean": "val. IoU",
        "relative_cost": "cost vs none",
        "spent_epsilon": "spent ε",
    }
    formatted = _formatted(wide, "label", t.attacks, extra, t.seeds).rename(
        columns={"label": "defence"}
    )
    types = t.study.get("defence_types", {})
    for attack, logged in paper.defence_accuracy(t.reference).items():
        if attack in t.attacks:
            values = [logged.get(types.get(d, d)) for d in wide["label"]]
            wide[f"paper_{attack}_accuracy"] = values
            formatted[f"{ATTACK_LABELS[attack]} acc. (author's logs)"] = [
                "" if v is None else f"{v:.3f}" for v in values
            ]
    t.write(
        wide,
        formatted,
        f"{t.study_name}: defences (privacy and utility)",
        t.note + " Argmax and output noise post-process the outputs of the undefended victim (and"
        " of the shadow); the other defences are training variants of the victim."
        + _logs_note(t.reference),
    )


def _dp_sweep_table(t: _Table) -> None:
    wide = _wide(t.frame, "label", t.attacks)
    variant_of = t.frame.drop_duplicates("label").set_index("label")["variant"]
    wide = wide.merge(
        _utility(t.victims), left_on=wide["label"].map(variant_of), right_on="variant", how="left"
    ).drop(columns=["key_0"], errors="ignore")
    extra = {
        "spent_epsilon": "spent ε",
        "val_dice_mean": "val. Dice",
        "val_iou_mean": "val. IoU",
        "relative_cost": "cost vs none",
    }
    t.write(
        wide,
        _formatted(wide, "label", t.attacks, extra, t.seeds).rename(columns={"label": "target ε"}),
        f"{t.study_name}: DP-SGD epsilon sweep",
        t.note + " Spent ε as reported by the Opacus accountant at δ = 1/N unless configured.",
    )


def _attack_comparison_table(t: _Table) -> None:
    order = {a: i for i, a in enumerate(t.attacks)}
    frame = t.frame.sort_values(["attack", "seed"], key=_attack_order(order), kind="stable")
    metrics = ["auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy", "null_auc"]
    stats = _stats(frame, ["attack", "label"], metrics).merge(
        null_flags(frame, ["attack", "label"]).reset_index(), on=["attack", "label"]
    )
    # every seed's own interval: a victim per seed, so the intervals are not averaged
    intervals = frame.groupby(["attack", "label"], sort=False).apply(
        _seed_intervals, include_groups=False
    )
    stats = stats.merge(intervals.reset_index(), on=["attack", "label"])
    # the numbers: one row per attack, defence and seed, with each seed's intervals
    numeric = frame[
        ["attack", "label", "seed", *metrics, *(c for c in frame if "_ci_" in c)]
        + ["null_excludes_chance", "ci_unit", "ci_groups"]
    ].rename(columns={"label": "defence"})
    numeric.insert(1, "family", numeric["attack"].map(FAMILY))
    attack_order = list(dict.fromkeys(stats["attack"]))
    formatted = pd.DataFrame({"attack": [ATTACK_LABELS.get(a, a) for a in attack_order]})
    formatted.insert(1, "family", [FAMILY.get(a, "") for a in attack_order])
    for defence in dict.fromkeys(stats["label"]):
        sub = stats[stats["label"] == defence].set_index("attack").reindex(attack_order)
        formatted[f"{defence}: AUC [95% CI]"] = [
            f"{cell(m, sd, t.seeds)} {ci}"
            for m, sd, ci in zip(sub["auc_mean"], sub["auc_std"], sub["intervals"], strict=True)
        ]
        for m in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy"):
            formatted[f"{defence}: {SHORT[m]}"] = [
                cell(a, b, t.seeds) for a, b in zip(sub[f"{m}_mean"], sub[f"{m}_std"], strict=True)
            ]
        formatted[f"{defence}: {SHORT['null_auc']} [95% CI]"] = [
            f"{null_cell(m, sd, t.seeds, flag)} {ci}"
            for m, sd, flag, ci in zip(
                sub["null_auc_mean"],
                sub["null_auc_std"],
                sub["null_flag"],
                sub["null_intervals"],
                strict=True,
            )
        ]
    t.write(
        numeric,
        formatted,
        f"{t.study_name}: attack comparison",
        t.note + f" AUC CI: 95 % bootstrap at the membership unit ({_ci_units(frame)}), each seed's"
        " own interval (one victim per seed; the CSV has one row per seed).",
    )


def _poisoning_table(t: _Table) -> None:
    clean = t.frame[t.frame["query"] == "clean"]
    wide = _wide(clean, "case", t.attacks)
    lookup = clean.drop_duplicates("case").set_index("case")
    wide.insert(1, "trigger", wide["case"].map(lookup["trigger"]))
    wide.insert(2, "rate", wide["case"].map(lookup["rate"]))
    if len(t.back):
        b = _stats(
            t.back,
            ["trigger", "rate"],
            ["backdoor_success", "target_agreement", "foreground_ratio", "clean_dice"],
        ).drop(columns="seeds")
        wide = wide.merge(b, on=["trigger", "rate"], how="left")
    realised = (
        t.victims.groupby("variant")["poison_rate_realised"].mean()
        if "poison_rate_realised" in t.victims
        else pd.Series(dtype=float)
    )
    wide["realised_rate"] = wide["case"].map(lookup["variant"]).map(realised).fillna(0.0)
    # AUC columns beside the clean-query ones: members split (fixed_subset), triggered query
    splits = [c for c in ("auc_clean_members", "auc_poisoned_members") if c in t.frame]
    extra_auc = {
        c.removeprefix("auc_"): (clean, c, c.removeprefix("auc_").replace("_", " ")) for c in splits
    }
    if t.study["query_trigger"]:
        extra_auc["triggered"] = (
            t.frame[t.frame["query"] == "triggered"],
            "auc",
            "triggered query",
        )
    titles = {}
    for name, (part, metric, what) in extra_auc.items():
        for attack in t.attacks:
            stats = _stats(part[part["attack"] == attack], ["case"], [metric])
            column = f"{attack}_{name}_auc"
            wide = wide.merge(
                stats.drop(columns="seeds").rename(
                    columns={
                        f"{metric}_mean": f"{column}_mean",
                        f"{metric}_std": f"{column}_std",
                    }
                ),
                on="case",
                how="left",
            )
            titles[column] = f"{ATTACK_LABELS.get(attack, attack)} AUC, {what}"
    extra = {
        "realised_rate": "realised p",
        "clean_dice_mean": "clean Dice",
        "backdoor_success_mean": "backdoor success",
        "target_agreement_mean": "target pixel agreement",
        "foreground_ratio_mean": "pred./true fg",
    }
    formatted = _formatted(wide, "case", t.attacks, extra, t.seeds)
    for column, title in titles.items():  # blank where undefined (no poisoned members)
        formatted[title] = [
            "" if pd.isna(a) else cell(a, b, t.seeds)
            for a, b in zip(wide[f"{column}_mean"], wide[f"{column}_std"], strict=True)
        ]
    t.write(
        wide,
        formatted.rename(columns={"case": "trigger, rate"}),
        f"{t.study_name}: model poisoning (dishonest adversary), {t.study['poison_schedule']} schedule",
        t.note + " " + _poisoning_design(t.study),
    )


#: the table writer of each study type
TABLE_WRITERS = {
    "architectures": _architectures_table,
    "protocol_ablation": _protocol_ablation_table,
    "training_sizes": _training_sizes_table,
    "defences": _defences_table,
    "dp_sweep": _dp_sweep_table,
    "attack_comparison": _attack_comparison_table,
    "poisoning": _poisoning_table,
}


def write_table(
    study_name: str, study: dict, table: str, evaluations, models, backdoors, stem: str | Path
) -> None:
    """Write the study's table ``table`` (``stem``.csv, .md and .tex)."""
    frame, victims, back = load(study_name, study, evaluations, models, backdoors)
    try:
        writer = TABLE_WRITERS[study["type"]]
    except KeyError:
        raise ValueError(f"no table for study type {study['type']!r}") from None
    writer(_Table(study_name, study, table, frame, victims, back, Path(stem)))


def draw_figure(
    study_name: str,
    study: dict,
    figure: str,
    evaluations,
    models,
    backdoors,
    out: str | Path,
    dpi: int,
    min_fpr: float,
) -> None:
    frame, victims, back = load(study_name, study, evaluations, models, backdoors)
    if figure == "roc":
        curves: dict[str, dict[str, list[str]]] = {}
        by_defence = study["type"] == "attack_comparison"  # panel per defence, curve per attack
        if by_defence:
            order = {a: i for i, a in enumerate(study["attacks"])}
            frame = frame.sort_values("attack", key=lambda c: c.map(order), kind="stable")
        for row in frame.itertuples():
            attack = ATTACK_LABELS.get(row.attack, row.attack)
            panel, label = (f"defence: {row.label}", attack) if by_defence else (attack, row.label)
            curves.setdefault(panel, {}).setdefault(label, []).append(
                str(Path(row.path) / "scores.csv")
            )
        for panel in curves:  # one curve per seed file, deduplicated (poisoning repeats rate 0)
            curves[panel] = {k: list(dict.fromkeys(v)) for k, v in curves[panel].items()}
        figures.roc_figure(
            curves, out, f"{study_name}: ROC (log-log, mean over seeds)", min_fpr, dpi
        )
    elif figure == "heatmap":
        figures.heatmap(frame, out, f"{study_name}: attack ROC-AUC", ATTACK_LABELS, dpi=dpi)
    elif figure == "privacy_utility":
        dice = victims.groupby("variant")["val_dice"].agg(["mean", "std"])
        frame = frame.assign(
            dice=frame["variant"].map(dice["mean"]), dice_std=frame["variant"].map(dice["std"])
        )
        figures.privacy_utility(frame, out, f"{study_name}: privacy vs utility", ATTACK_LABELS, dpi)
    elif figure == "epsilon":
        dice = victims.groupby("variant")["val_dice"].mean()
        frame = frame.assign(dice=frame["variant"].map(dice))
        figures.epsilon_curves(
            frame, out, f"{study_name}: attacks vs DP-SGD budget", ATTACK_LABELS, dpi
        )
    elif figure == "training_size":
        logged = paper.size_accuracy(study.get("paper"))
        figures.size_curves(
            frame, logged, out, f"{study_name}: attacks vs training-set size", ATTACK_LABELS, dpi
        )
    elif figure == "poisoning":
        figures.poisoning_curves(
            frame, back, out, f"{study_name}: leakage under poisoning", ATTACK_LABELS, dpi
        )
    elif figure == "protocol_ablation":
        ablation.figure(
            ablation.changes(frame, study),
            out,
            f"{study_name}: change from the original protocol per switch",
            dpi,
        )
    else:
        raise ValueError(f"no figure {figure!r}")
