"""Study tables in CSV, Markdown and LaTeX: mean (± standard deviation over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import atomic_path, write_csv

METRIC_LABELS = {
    "auc": "ROC-AUC",
    "tpr_at_1pct_fpr": "TPR at 1% FPR",
    "tpr_at_0.1pct_fpr": "TPR at 0.1% FPR",
    "accuracy": "Accuracy (paper protocol)",
    "f1": "F1 (paper protocol)",
    "balanced_accuracy": "Balanced accuracy",
    "null_auc": "Null-control AUC (two halves of the non-members)",
}
#: the mark of a null control whose 95 % interval excludes 0.5 (in any seed)
NULL_FLAG = " †"
NULL_NOTE = (
    "Null AUC: the same attack's AUC between two random halves of the non-member groups (whole "
    "groups, 95 % interval over groups): what the attack finds between two sets of non-members "
    "that differ only in their groups, the baseline to read its AUC against."
    f"{NULL_FLAG.strip()} marks a null interval that excludes 0.5 (in at least one seed): there "
    "the scores separate groups, and an attack AUC of that size is no evidence of membership."
)


def mean_std(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=False)[metrics]
    out = (
        grouped.mean()
        .add_suffix("_mean")
        .join(grouped.std(ddof=1).add_suffix("_std"))
        .join(grouped.size().rename("seeds"))
    )
    return out.reset_index()


def cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.3f}" if seeds < 2 or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def null_cell(mean: float, std: float, seeds: int, flagged: bool) -> str:
    """A null-control AUC cell, marked when its interval excludes chance; "n/a" without one."""
    if pd.isna(mean):
        return "n/a"
    return cell(mean, std, seeds) + (NULL_FLAG if flagged else "")


def null_flags(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per ``keys`` value: does any seed's null interval exclude 0.5?"""
    return frame.groupby(keys, sort=False)["null_excludes_chance"].any().rename("null_flag")


def grid_table(
    frame: pd.DataFrame, rows: str, cols: str, metrics: list[str]
) -> dict[str, pd.DataFrame]:
    """One rows x cols grid of formatted cells per metric."""
    stats = mean_std(frame, [rows, cols], metrics)
    if "null_auc" in metrics:
        stats = stats.merge(null_flags(frame, [rows, cols]).reset_index(), on=[rows, cols])
    order_r = list(dict.fromkeys(frame[rows]))
    order_c = list(dict.fromkeys(frame[cols]))
    grids = {}
    for m in metrics:
        mean, std, seeds = stats[f"{m}_mean"], stats[f"{m}_std"], stats["seeds"]
        stats["cell"] = (
            [null_cell(*v) for v in zip(mean, std, seeds, stats["null_flag"], strict=True)]
            if m == "null_auc"
            else [cell(a, b, n) for a, b, n in zip(mean, std, seeds, strict=True)]
        )
        grid = stats.pivot(index=rows, columns=cols, values="cell").reindex(
            index=order_r, columns=order_c
        )
        grid.index.name, grid.columns.name = f"{rows} \\ {cols}", None
        grids[m] = grid
    return grids, stats


def numeric_grids(
    stats: pd.DataFrame, rows: str, cols: str, metrics: list[str], frame: pd.DataFrame
) -> pd.DataFrame:
    """rows x cols grids of means and standard deviations, stacked: metric, statistic, <rows>, <cols...>."""
    order_r = list(dict.fromkeys(frame[rows]))
    order_c = list(dict.fromkeys(frame[cols]))
    parts = []
    for m in metrics:
        for statistic in ("mean", "std"):
            grid = stats.pivot(index=rows, columns=cols, values=f"{m}_{statistic}").reindex(
                index=order_r, columns=order_c
            )
            grid.columns = [str(c) for c in grid.columns]
            grid = grid.reset_index()
            grid.insert(0, "statistic", statistic)
            grid.insert(0, "metric", m)
            parts.append(grid)
    return pd.concat(parts, ignore_index=True)


def write_grid_tables(
    frame: pd.DataFrame,
    stem: str | Path,
    title: str,
    rows: str = "victim",
    cols: str = "shadow",
    metrics: list[str] | None = None,
    reference: dict | None = None,
    reference_title: str = "",
) -> None:
    """Write ``stem``.csv (numbers), ``stem``.md and ``stem``.tex (formatted grids per metric).

    ``reference`` (rows -> cols -> value): the author's logged accuracy, shown as its own grid
    and as the difference reproduced - logged, and stored in the CSV as metric ``paper_accuracy``.
    """
    metrics = metrics or list(METRIC_LABELS)
    grids, stats = grid_table(frame, rows, cols, metrics)
    stem = Path(stem)
    numeric = numeric_grids(stats, rows, cols, metrics, frame)
    md = [f"# {title}", ""]
    tex = [f"% {title}"]
    if reference:
        logged = pd.DataFrame(reference).T.reindex(
            index=grids[metrics[0]].index, columns=grids[metrics[0]].columns
        )
        mean = stats.pivot(index=rows, columns=cols, values="accuracy_mean").reindex_like(logged)
        paper = logged.reset_index().rename(columns={"index": rows})
        paper.insert(0, "statistic", "logged")
        paper.insert(0, "metric", "paper_accuracy")
        numeric = pd.concat([numeric, paper], ignore_index=True)
        logged.index.name = mean.index.name = f"{rows} \\ {cols}"
        md += [
            f"## Author's logs: accuracy ({reference_title})",
            "",
            "Numbers logged by the paper's author, for comparison with the reproduced "
            "*Accuracy (paper protocol)* grid below.",
            "",
            logged.to_markdown(floatfmt=".3f"),
            "",
            "## Reproduced accuracy minus the author's logs",
            "",
            (mean - logged).to_markdown(floatfmt="+.3f"),
            "",
        ]
    write_csv(stem.with_suffix(".csv"), numeric)
    for m, grid in grids.items():
        md += [f"## {METRIC_LABELS[m]}", "", grid.to_markdown(), ""]
        if m == "null_auc":
            md[-1:] = ["", NULL_NOTE, ""]
        tex += [
            grid.to_latex(
                caption=f"{title}: {METRIC_LABELS[m]}",
                label=f"tab:{stem.parent.name}-{stem.name}-{m}".replace("_", "-").replace(".", ""),
                escape=True,
            ),
            "",
        ]
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(md))
    with atomic_path(stem.with_suffix(".tex")) as tmp:
        tmp.write_text("\n".join(tex))
