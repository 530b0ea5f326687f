"""Figures: attack heatmaps and log-log ROC curves (PNG, for the report and for reading)."""

from __future__ import annotations

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
    plt, sns = _pyplot()
    attacks = list(dict.fromkeys(frame["attack"]))
    n = len(frame["victim"].unique())
    fig, axes = plt.subplots(
        1, len(attacks), figsize=(1.2 + 2.4 * len(attacks) + 0.3 * n, 1.4 + 0.55 * n), squeeze=False
    )
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
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path, dpi)
    plt.close(fig)


def mean_roc(score_files: list[str | Path], grid: np.ndarray) -> np.ndarray:
    """Mean TPR over runs (seeds) at the FPR values of ``grid`` (step interpolation)."""
    tprs = []
    for f in score_files:
        scores = read_csv(f, required=("member", "score"))
        fpr, tpr = roc_curve(scores["member"].to_numpy(), scores["score"].to_numpy())
        idx = np.searchsorted(fpr, grid, side="right") - 1
        tprs.append(tpr[np.clip(idx, 0, len(tpr) - 1)])
    return np.mean(tprs, axis=0)


def roc_figure(
    curves: dict[str, dict[str, list[str]]],
    path: str | Path,
    title: str,
    min_fpr: float = 1e-5,
    dpi: int = 150,
) -> None:
    """Log-log ROC curves: ``curves[panel][label]`` = score files (one per seed), averaged."""
    plt, _ = _pyplot()
    grid = np.logspace(np.log10(min_fpr), 0, 400)
    panels = list(curves)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(0.5 + 3.6 * len(panels), 4.0), squeeze=False, sharey=True
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, files in curves[panel].items():
            ax.plot(grid, mean_roc(files, grid), label=label, linewidth=1.4)
        ax.plot(
            [min_fpr, 1], [min_fpr, 1], color="grey", linestyle="--", linewidth=1, label="chance"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min_fpr, 1)
        ax.set_ylim(min_fpr, 1.05)
        ax.set_title(panel)
        ax.set_xlabel("false positive rate")
        if ax is axes[0][0]:
            ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right", title=None)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path, dpi)
    plt.close(fig)
