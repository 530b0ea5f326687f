"""The protocol-ablation study: one paper cell under the original code's protocol, then with each
protocol switch turned to segmia's value alone, and what each switch changes.

An evaluation serves every arm whose switches it cannot tell apart (e.g. the global-loss attack
does not read ``attacker_input``): rows are matched to arms on the switches that apply to their
attack. Changes are paired by seed (arm minus original, same split), then averaged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..attacks.names import LABELS as ATTACK_LABELS
from ..protocol import SWITCHES, ablation_arms, applies
from .tables import cell, null_cell

METRICS = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR@1%FPR", "accuracy": "acc."}


def arm_label(arm: str, study: dict | None = None) -> str:
    if arm == "original":
        return "original protocol"
    if arm == "segmia":
        return "every switch → segmia"
    if arm == "data":
        return f"data → {study['corrected_data']}" if study else "data"
    return f"{arm} → {SWITCHES[arm].segmia}"


def arms_frame(frame: pd.DataFrame, study: dict) -> pd.DataFrame:
    """One row per (arm, attack, seed): the evaluation that arm's protocol runs."""
    rows = []
    arms = ablation_arms(study)
    for arm, proto, dataset in arms:
        for attack in study["attacks"]:
            keep = (frame["attack"] == attack) & (frame["dataset"] == dataset)
            for switch, value in proto.items():
                if applies(switch, attack):
                    keep &= frame[switch] == value
            rows.append(frame[keep].assign(arm=arm))
    out = pd.concat(rows, ignore_index=True)
    missing = {
        (arm, attack)
        for arm, _, _ in arms
        for attack in study["attacks"]
        if not ((out["arm"] == arm) & (out["attack"] == attack)).any()
    }
    if missing:
        raise ValueError(f"protocol ablation: no evaluation for {sorted(missing)}")
    return out


def changes(frame: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Per (arm, attack): each metric's mean and std over seeds, and its change from the original
    protocol paired by seed (``d_<metric>_mean`` / ``_std``)."""
    base = frame[frame["arm"] == "original"].set_index(["attack", "seed"])
    out = []
    for (arm, attack), sub in frame.groupby(["arm", "attack"], sort=False):
        row = {
            "arm": arm,
            "switch_value": arm_label(arm, study),
            "attack": attack,
            "seeds": len(sub),
        }
        for metric in METRICS:
            values = sub[metric].astype(float)
            diffs = values.to_numpy() - base.loc[
                [(attack, s) for s in sub["seed"]], metric
            ].to_numpy(dtype=float)
            row[f"{metric}_mean"], row[f"{metric}_std"] = values.mean(), values.std(ddof=1)
            row[f"d_{metric}_mean"], row[f"d_{metric}_std"] = diffs.mean(), diffs.std(ddof=1)
        null = sub["null_auc"].astype(float)
        row["null_auc_mean"], row["null_auc_std"] = null.mean(), null.std(ddof=1)
        row["null_flag"] = bool(sub["null_excludes_chance"].any())
        out.append(row)
    return pd.DataFrame(out)


def formatted(numeric: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "protocol": numeric["switch_value"],
            "attack": [ATTACK_LABELS.get(a, a) for a in numeric["attack"]],
        }
    )
    for metric, short in METRICS.items():
        out[short] = [
            cell(m, s, n)
            for m, s, n in zip(
                numeric[f"{metric}_mean"], numeric[f"{metric}_std"], numeric["seeds"], strict=True
            )
        ]
        out[f"Δ {short}"] = [
            "—" if arm == "original" else f"{m:+.3f}" + ("" if n < 2 else f" ± {s:.3f}")
            for arm, m, s, n in zip(
                numeric["arm"],
                numeric[f"d_{metric}_mean"],
                numeric[f"d_{metric}_std"],
                numeric["seeds"],
                strict=True,
            )
        ]
    out["null AUC"] = [
        null_cell(*values)
        for values in zip(
            numeric["null_auc_mean"],
            numeric["null_auc_std"],
            numeric["seeds"],
            numeric["null_flag"],
            strict=True,
        )
    ]
    return out


def note(study: dict, seeds: int) -> str:
    lines = [
        f"Dataset `{study['dataset']}`, {study['architecture']} victim and shadow; "
        f"mean ± standard deviation over {seeds} seed(s); Δ = the arm minus the original "
        "protocol on the same seed (mean ± std of the paired differences). Each arm turns one "
        "switch from the original code's value to segmia's (docs/protocol.md): "
    ]
    lines.append(
        "; ".join(
            f"`{s}` {SWITCHES[s].original} → {SWITCHES[s].segmia} ({SWITCHES[s].about})"
            for s in study["switches"]
        )
        + ". A switch that cannot change an attack (attacker_input: global loss; threshold: "
        "Type-I/II) repeats its original row."
    )
    if study.get("corrected_data"):
        lines.append(
            f" The *data* arm runs the original protocol on dataset `{study['corrected_data']}`: "
            "the same source with segmia's data handling (its prepare and split settings)."
        )
    return "".join(lines)


def figure(numeric: pd.DataFrame, out: str | Path, title: str, dpi: int) -> None:
    """One panel per metric: each switch's change from the original protocol, per attack, with
    the seeds' standard deviation as error bars."""
    from .figures import _pyplot, figure

    _, sns = _pyplot()
    arms = [a for a in dict.fromkeys(numeric["arm"]) if a != "original"]
    attacks = list(dict.fromkeys(numeric["attack"]))
    colours = dict(zip(attacks, sns.color_palette("colorblind", len(attacks)), strict=True))
    with figure(
        out,
        title,
        dpi,
        1,
        len(METRICS),
        figsize=(4.2 * len(METRICS), 0.9 + 0.75 * len(arms)),
        sharey=True,
    ) as (fig, axes):
        height = 0.8 / max(len(attacks), 1)
        for ax, (metric, short) in zip(axes, METRICS.items(), strict=True):
            for j, attack in enumerate(attacks):
                sub = numeric[(numeric["attack"] == attack)].set_index("arm").reindex(arms)
                y = [i - 0.4 + height * (j + 0.5) for i in range(len(arms))]
                ax.errorbar(
                    sub[f"d_{metric}_mean"],
                    y,
                    xerr=sub[f"d_{metric}_std"].fillna(0.0),
                    fmt="o",
                    color=colours[attack],
                    capsize=3,
                    label=ATTACK_LABELS.get(attack, attack),
                )
            ax.axvline(0.0, color="0.3", linewidth=1)
            ax.set_xlabel(f"Δ {short} (segmia value − original)")
            ax.set_yticks(range(len(arms)))
            ax.set_yticklabels(
                [numeric.loc[numeric["arm"] == a, "switch_value"].iloc[0] for a in arms]
            )
            ax.invert_yaxis()
        axes[0].set_ylabel("switch turned to segmia's value")
        axes[-1].legend(title="attack", loc="center left", bbox_to_anchor=(1.02, 0.5))
