"""Figures: attack heatmaps and log-log ROC curves (PNG, for the report and for reading)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..attacks.metrics import roc_curve
from ..io import atomic_path, read_csv


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    return plt, sns


@contextlib.contextmanager
def figure(path: str | Path, title: str, dpi: int, *grid, **subplots):
    """``(fig, axes)`` of ``plt.subplots(*grid, **subplots)``; on leaving, the figure gets its
    title and a tight layout, is saved to ``path`` (atomically) and closed."""
    plt, _ = _pyplot()
    fig, axes = plt.subplots(*grid, **subplots)
    try:
        yield fig, axes
        fig.suptitle(title)
        fig.tight_layout()
        save(fig, path, dpi)
    finally:
        plt.close(fig)


def save(fig, path: str | Path, dpi: int) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))


def heatmap(
    frame: pd.DataFrame,
    path: str | Path,
    title: str,
    attack_labels: dict[str, str],
    metric: str = "auc",
    dpi: int = 150,
) -> None:
    """One victim x shadow panel per attack, cells = mean ``metric`` over seeds."""
    _, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    n = len(frame["victim"].unique())
    with figure(
        path,
        title,
        dpi,
        1,
        len(attacks),
        figsize=(1.2 + 2.4 * len(attacks) + 0.3 * n, 1.4 + 0.55 * n),
        squeeze=False,
    ) as (fig, axes):
        for ax, attack in zip(axes[0], attacks, strict=True):
            sub = frame[frame["attack"] == attack]
            grid = sub.pivot_table(
                index="victim", columns="shadow", values=metric, aggfunc="mean", sort=False
            )
            sns.heatmap(
                grid,
                ax=ax,
                vmin=0.0,
                vmax=1.0,
                center=0.5,
                cmap="vlag",
                annot=True,
                fmt=".2f",
                cbar=ax is axes[0][-1],
                cbar_kws={"label": "ROC-AUC (0.5 = chance)"},
                square=True,
                linewidths=0.5,
            )
            ax.set_title(attack_labels.get(attack, attack))
            ax.set_xlabel("shadow architecture")
            ax.set_ylabel("victim architecture" if ax is axes[0][0] else "")
            ax.tick_params(axis="x", rotation=30)
            ax.tick_params(axis="y", rotation=0)


def mean_roc(
    runs: list[pd.DataFrame], grid: np.ndarray, labels: str = "member"
) -> tuple[np.ndarray, float]:
    """Mean TPR over runs (seeds' ``scores.csv``) at the FPR values of ``grid`` (step
    interpolation), and the smallest FPR the runs resolve (1 / fewest negatives). ``labels``: the
    column that says what is positive, ``member`` or ``null_half`` (the null control: rows without
    a half are left out)."""
    tprs, negatives = [], []
    for scores in runs:
        scores = scores.dropna(subset=[labels])
        labels_ = scores[labels].to_numpy().astype(int)
        fpr, tpr = roc_curve(labels_, scores["score"].to_numpy())
        idx = np.searchsorted(fpr, grid, side="right") - 1
        tprs.append(tpr[np.clip(idx, 0, len(tpr) - 1)])
        negatives.append(int((labels_ == 0).sum()))
    return np.mean(tprs, axis=0), 1.0 / max(min(negatives), 1)


def null_band(
    curves: dict[str, list[pd.DataFrame]], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The range (lowest, highest TPR at each FPR of ``grid``) of the curves' null-control ROCs,
    each averaged over its seeds; None when no score file has a null control."""
    nulls = [
        mean_roc(runs, grid, labels="null_half")[0]
        for runs in curves.values()
        if all("null_half" in r and r["null_half"].nunique() == 2 for r in runs)
    ]
    return (np.min(nulls, axis=0), np.max(nulls, axis=0)) if nulls else None


def roc_figure(
    curves: dict[str, dict[str, list[str]]],
    path: str | Path,
    title: str,
    min_fpr: float = 1e-5,
    dpi: int = 150,
) -> None:
    """Log-log ROC curves: ``curves[panel][label]`` = score files (one per seed), averaged.

    Below 1 / #non-members no FPR can be measured: curves start there and the region is shaded.
    The hatched band is the range of the curves' null controls (each attack's ROC between two halves
    of the non-member groups): where an attack that only tells groups apart would lie.
    """
    _, sns = _pyplot()
    grid = np.logspace(np.log10(min_fpr), 0, 400)
    panels = list(curves)
    n_curves = max(len(c) for c in curves.values())
    colours = sns.color_palette("tab10" if n_curves <= 10 else "tab20", n_curves)
    with figure(
        path,
        title,
        dpi,
        1,
        len(panels),
        figsize=(0.5 + 3.8 * len(panels), 4.2),
        squeeze=False,
        sharey=True,
    ) as (fig, axes):
        for ax, panel in zip(axes[0], panels, strict=True):
            resolution = min_fpr
            # each score file read once, for its curve and for the null band
            runs = {
                label: [read_csv(f, required=("member", "score")) for f in files]
                for label, files in curves[panel].items()
            }
            for colour, (label, frames) in zip(colours, runs.items(), strict=False):
                tpr, resolved = mean_roc(frames, grid)
                keep = grid >= resolved
                ax.plot(grid[keep], tpr[keep], label=label, linewidth=1.4, color=colour)
                resolution = max(resolution, resolved)
            ax.plot(
                [min_fpr, 1],
                [min_fpr, 1],
                color="grey",
                linestyle="--",
                linewidth=1,
                label="chance",
            )
            band = null_band(runs, grid)
            if band is not None:
                ax.fill_between(
                    grid,
                    np.maximum(band[0], min_fpr),
                    np.maximum(band[1], min_fpr),
                    where=grid >= resolution,
                    step="post",
                    facecolor="none",
                    edgecolor="0.45",
                    hatch="////",
                    linewidth=0,
                    label="null control (range over curves)",
                )
            if resolution > min_fpr:
                ax.axvspan(min_fpr, resolution, color="0.9", zorder=0)
                ax.text(
                    np.sqrt(min_fpr * resolution),
                    2 * min_fpr,
                    "FPR below\n1 / #non-members",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="0.4",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(min_fpr, 1)
            ax.set_ylim(min_fpr, 1.05)
            ax.set_title(panel)
            ax.set_xlabel("false positive rate")
            if ax is axes[0][0]:
                ax.set_ylabel("true positive rate")
        # one legend for all panels (their curves share labels), outside the axes
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
        )


def privacy_utility(
    frame: pd.DataFrame, path: str | Path, title: str, attack_labels: dict[str, str], dpi: int = 150
) -> None:
    """Attack AUC against validation Dice, one point per defence (error bars: std over seeds)."""
    _, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    labels = list(dict.fromkeys(frame["label"]))
    palette = dict(zip(labels, sns.color_palette("tab10", len(labels)), strict=True))
    with figure(
        path,
        title,
        dpi,
        1,
        len(attacks),
        figsize=(0.6 + 3.8 * len(attacks), 3.8),
        squeeze=False,
        sharey=True,
    ) as (fig, axes):
        for ax, attack in zip(axes[0], attacks, strict=True):
            sub = frame[frame["attack"] == attack]
            stats = sub.groupby("label", sort=False).agg(
                auc=("auc", "mean"),
                auc_std=("auc", "std"),
                dice=("dice", "mean"),
                dice_std=("dice_std", "mean"),
            )
            for label, row in stats.iterrows():
                ax.errorbar(
                    row["dice"],
                    row["auc"],
                    xerr=np.nan_to_num(row["dice_std"]),
                    yerr=np.nan_to_num(row["auc_std"]),
                    fmt="o",
                    color=palette[label],
                    label=label,
                    capsize=3,
                    markersize=6,
                )
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
            ax.set_title(attack_labels.get(attack, attack))
            ax.set_xlabel("victim validation Dice (utility)")
            if ax is axes[0][0]:
                ax.set_ylabel("attack ROC-AUC (privacy risk)")
            ax.set_ylim(0.3, 1.02)
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            title="defence",
            frameon=False,
        )


def _mean_std_line(ax, rows: pd.DataFrame, x: str, metric: str, colour, label: str) -> None:
    """``metric`` against ``x``: the mean over seeds, error bars one standard deviation."""
    sub = rows.groupby(x)[metric].agg(["mean", "std"])
    ax.errorbar(
        sub.index,
        sub["mean"],
        yerr=np.nan_to_num(sub["std"]),
        marker="o",
        capsize=3,
        color=colour,
        label=label,
    )


def epsilon_curves(
    frame: pd.DataFrame, path: str | Path, title: str, attack_labels: dict[str, str], dpi: int = 150
) -> None:
    """AUC, TPR at 1% FPR and Dice against the DP-SGD target epsilon (log axis); the non-private
    model is the dashed line of each attack."""
    _, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    colours = dict(zip(attacks, sns.color_palette("tab10", len(attacks)), strict=True))
    private = frame[np.isfinite(frame["epsilon"])]
    public = frame[~np.isfinite(frame["epsilon"])]
    with figure(path, title, dpi, 1, 3, figsize=(12, 3.8)) as (fig, axes):
        for ax, metric, ylabel in zip(
            axes[:2], ["auc", "tpr_at_1pct_fpr"], ["attack ROC-AUC", "TPR at 1% FPR"], strict=True
        ):
            for attack in attacks:
                _mean_std_line(
                    ax,
                    private[private["attack"] == attack],
                    "epsilon",
                    metric,
                    colours[attack],
                    attack_labels.get(attack, attack),
                )
                base = public.loc[public["attack"] == attack, metric]
                if len(base):
                    ax.axhline(base.mean(), color=colours[attack], linestyle="--", linewidth=1)
            ax.set_xscale("log")
            ax.set_xlabel("target ε (log scale)")
            ax.set_ylabel(ylabel)
            if metric == "auc":
                ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        dice = frame.drop_duplicates(["variant", "seed"])
        sub = dice[np.isfinite(dice["epsilon"])].groupby("epsilon")["dice"].mean()
        axes[2].plot(sub.index, sub.values, marker="o", color="black", label="DP-SGD")
        base = dice.loc[~np.isfinite(dice["epsilon"]), "dice"]
        if len(base):
            axes[2].axhline(
                base.mean(), color="black", linestyle="--", linewidth=1, label="non-private"
            )
        axes[2].set_xscale("log")
        axes[2].set_xlabel("target ε (log scale)")
        axes[2].set_ylabel("victim validation Dice")
        axes[2].legend(fontsize=8)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.02),
            ncol=len(attacks),
            frameon=False,
            title="attack (dashed: non-private victim)",
        )


def poisoning_curves(
    frame: pd.DataFrame,
    backdoor: pd.DataFrame,
    path: str | Path,
    title: str,
    attack_labels: dict[str, str],
    dpi: int = 150,
) -> None:
    """AUC and TPR at 1% FPR against the poison rate (line style = trigger; crosses: the
    attacker queried triggered images), and clean Dice and backdoor success against the poison
    rate."""
    _, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    triggers = list(dict.fromkeys(frame["trigger"]))
    markers = {"clean": ("o", ""), "triggered": ("x", ", triggered query")}
    colours = dict(zip(attacks, sns.color_palette("tab10", len(attacks)), strict=True))
    styles = dict(zip(triggers, ["-", "--", ":", "-."], strict=False))
    with figure(path, title, dpi, 1, 3, figsize=(12.5, 3.8)) as (fig, axes):
        for ax, metric, ylabel in zip(
            axes[:2], ["auc", "tpr_at_1pct_fpr"], ["attack ROC-AUC", "TPR at 1% FPR"], strict=True
        ):
            for attack in attacks:
                for trigger in triggers:
                    for query, (marker, what) in markers.items():
                        sub = (
                            frame[
                                (frame["attack"] == attack)
                                & (frame["trigger"] == trigger)
                                & (frame["query"] == query)
                            ]
                            .groupby("rate")[metric]
                            .mean()
                        )
                        if sub.empty:
                            continue
                        ax.plot(
                            sub.index,
                            sub.values,
                            marker=marker,
                            linestyle=styles[trigger],
                            color=colours[attack],
                            label=f"{attack_labels.get(attack, attack)}, {trigger}{what}",
                        )
            ax.set_xlabel("poison rate p")
            ax.set_ylabel(ylabel)
        axes[0].axhline(0.5, color="grey", linestyle=":", linewidth=1)
        if len(backdoor):
            for trigger in triggers:
                sub = (
                    backdoor[backdoor["trigger"] == trigger]
                    .groupby("rate")[["clean_dice", "backdoor_success"]]
                    .mean()
                )
                axes[2].plot(
                    sub.index,
                    sub["clean_dice"],
                    marker="o",
                    linestyle=styles[trigger],
                    color="black",
                    label=f"clean Dice, {trigger}",
                )
                axes[2].plot(
                    sub.index,
                    sub["backdoor_success"],
                    marker="s",
                    linestyle=styles[trigger],
                    color="tab:red",
                    label=f"backdoor success, {trigger}",
                )
        axes[2].set_xlabel("poison rate p")
        axes[2].set_ylabel("clean Dice / backdoor success")
        axes[2].set_ylim(-0.02, 1.02)
        axes[2].legend(fontsize=7, loc="best")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.02),
            ncol=min(len(names), 4),
            frameon=False,
            fontsize=8,
        )


def size_curves(
    frame: pd.DataFrame,
    logged: dict,
    path: str | Path,
    title: str,
    attack_labels: dict[str, str],
    dpi: int = 150,
) -> None:
    """AUC and accuracy (paper protocol) against the training-set size N; the author's logged
    accuracy as open markers."""
    _, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    colours = dict(zip(attacks, sns.color_palette("tab10", len(attacks)), strict=True))
    with figure(path, title, dpi, 1, 2, figsize=(9.5, 3.8)) as (fig, axes):
        for ax, metric, ylabel in zip(
            axes,
            ["auc", "accuracy"],
            ["attack ROC-AUC", "attack accuracy (paper protocol)"],
            strict=True,
        ):
            for attack in attacks:
                _mean_std_line(
                    ax,
                    frame[frame["attack"] == attack],
                    "train_size",
                    metric,
                    colours[attack],
                    attack_labels.get(attack, attack),
                )
                if metric == "accuracy" and attack in logged:
                    sizes = sorted(logged[attack])
                    ax.plot(
                        sizes,
                        [logged[attack][n] for n in sizes],
                        marker="o",
                        markerfacecolor="none",
                        linestyle=":",
                        color=colours[attack],
                        label=f"{attack_labels.get(attack, attack)} (author's logs)",
                    )
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("training-set size N (images)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
