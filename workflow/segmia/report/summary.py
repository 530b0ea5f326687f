"""Collect per-model and per-evaluation metrics files into the summary CSVs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_json
from ..protocol import SEGMIA

MODEL_COLUMNS = [
    "dataset",
    "role",
    "arch",
    "variant",
    "train_size",
    "seed",
    "val_dice",
    "val_iou",
    "train_loss",
    "val_loss",
    "train_seconds",
]
ATTACK_COLUMNS = [
    "study",
    "dataset",
    "victim",
    "shadow",
    "variant",
    "release",
    "attack",
    "seed",
    "train_size",
    "auc",
    "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr",
    "accuracy",
    "f1",
    "balanced_accuracy",
    "auc_ci_low",
    "auc_ci_high",
    "n_members",
    "n_nonmembers",
]

#: the null control of each evaluation (``metrics.null_control``) and its value where missing
NULL_COLUMNS = {
    "null_auc": float("nan"),
    "null_auc_ci_low": float("nan"),
    "null_auc_ci_high": float("nan"),
    "null_excludes_chance": False,
}


def collect_models(paths: list[str | Path], studies: list[str] | None = None) -> pd.DataFrame:
    """One row per model's metrics.json; ``studies``: per path, the studies that use the model
    (comma-separated), the ``studies`` column (a reference model's role is ``ref<k>``, its training
    variant ``variant``: the rows of one study, role and variant count its reference models)."""
    rows = [read_json(p) for p in paths]
    if studies is not None:
        rows = [{**row, "studies": names} for row, names in zip(rows, studies, strict=True)]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in MODEL_COLUMNS]
    return frame[MODEL_COLUMNS + extra].sort_values(
        ["dataset", "role", "arch", "variant", "train_size", "seed"], kind="stable"
    )


def collect_evaluations(study: str, paths: list[str | Path]) -> pd.DataFrame:
    rows = []
    for p in paths:
        m = read_json(p)
        rows.append(
            {
                "study": study,
                "dataset": m["dataset"],
                "victim": m["victim_arch"],
                "shadow": m["shadow_arch"],
                "variant": m["victim_variant"],
                "release": m["release_name"],
                "attack": m["attack"],
                "seed": m["seed"],
                "train_size": m["train_size"],
                **{k: m[k] for k in ATTACK_COLUMNS[9:]},
                "shadow_variant": m["shadow_variant"],
                **{k: m.get(k, v) for k, v in SEGMIA.items()},  # protocol switches
                # the bootstrap's unit (older evaluations resampled samples)
                "ci_unit": m.get("ci_unit", "sample"),
                "ci_groups": m.get("ci_groups"),
                **{k: m.get(k, v) for k, v in NULL_COLUMNS.items()},
                "path": str(Path(p).parent),
            }
        )
    extra = ["shadow_variant", *SEGMIA, "ci_unit", "ci_groups", *NULL_COLUMNS, "path"]
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS + extra)


def concat(paths: list[str | Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ATTACK_COLUMNS)
