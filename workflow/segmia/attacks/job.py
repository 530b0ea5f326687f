"""The attack steps: fit a learned attack on a shadow, evaluate it (or the global-loss attack)
on a victim, and write per-sample scores and metrics.

An evaluation directory holds ``scores.csv`` (``sample_id``, ``member``, ``score``: higher means
"member") and ``metrics.json``: score-based metrics on the victim's MIA set (``auc``,
``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, ``balanced_accuracy``) and the paper's protocol
(``accuracy``, ``f1``: learned attacks averaged over the last k attack epochs; global loss with
the shadow's last-epoch mean training loss as threshold).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import read_json, read_torch, write_csv, write_json, write_torch
from ..models.losses import per_image_dice_loss
from ..runtime import Checkpoint, stable_seed
from .classifier import build_classifier, fit_classifier, score, with_weights
from .features import feature_channels
from .metrics import roc_metrics, threshold_metrics
from .outputs import QuerySet
from .release import release

log = logging.getLogger("segmia")


def fit_attack_job(
    shadow_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
) -> None:
    """Train the ``spec['attack']`` classifier on the shadow model's MIA set."""
    out_dir = Path(out_dir)
    query = QuerySet(shadow_query, data_dir)
    kind, recipe = spec["attack"], spec["recipe"]
    in_channels = feature_channels(kind, query.logits.shape[1])
    seed = stable_seed("attack", spec["shadow"], kind, spec["release_name"])
    model, snapshots, rows = fit_classifier(
        query, kind, spec["release"], recipe, seed, out_dir, spec, device, in_channels
    )
    train_scores = score(model, query, kind, spec["release"], device)
    fit_metrics = {
        **roc_metrics(query.labels, train_scores),
        **threshold_metrics(query.labels, train_scores > 0.5),
    }
    write_torch(out_dir / "attack.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    write_torch(out_dir / "snapshots.pt", snapshots)
    write_json(out_dir / "spec.json", {**spec, "in_channels": in_channels})
    write_csv(out_dir / "log.csv", pd.DataFrame(rows))
    write_json(
        out_dir / "metrics.json",
        {
            "shadow_fit": fit_metrics,
            "epochs": len(rows),
            "seconds": sum(r["seconds"] for r in rows),
        },
    )
    Checkpoint(out_dir, spec).clear()
    log.info(
        "attack %s fitted on the shadow: AUC %.3f on its own training data",
        kind,
        fit_metrics["auc"],
    )


def _write_evaluation(
    out_dir: Path,
    spec: dict,
    query: QuerySet,
    scores: np.ndarray,
    predictions: np.ndarray,
    protocol: dict,
) -> dict:
    labels = query.labels
    metrics = {
        **{k: spec[k] for k in ("dataset", "attack", "release_name", "seed", "train_size")},
        "victim_arch": spec["victim"]["arch"],
        "victim_variant": spec["victim"]["variant"],
        "shadow_arch": spec["shadow"]["arch"],
        "shadow_variant": spec["shadow"]["variant"],
        **roc_metrics(labels, scores),
        "balanced_accuracy": threshold_metrics(labels, predictions)["balanced_accuracy"],
        "accuracy": protocol["accuracy"],
        "f1": protocol["f1"],
        "n_members": int(labels.sum()),
        "n_nonmembers": int((1 - labels).sum()),
    }
    write_csv(
        out_dir / "scores.csv",
        pd.DataFrame({"sample_id": query.sample_ids, "member": labels, "score": scores}),
    )
    write_json(out_dir / "metrics.json", metrics)
    log.info(
        "%s on victim %s/%s: AUC %.3f, TPR@1%%FPR %.3f, accuracy (paper protocol) %.3f",
        spec["attack"],
        spec["victim"]["arch"],
        spec["victim"]["variant"],
        metrics["auc"],
        metrics["tpr_at_1pct_fpr"],
        metrics["accuracy"],
    )
    return metrics


def eval_attack_job(
    attack_dir: str | Path,
    victim_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
) -> dict:
    """Apply a fitted learned attack to the victim's MIA set."""
    attack_dir, out_dir = Path(attack_dir), Path(out_dir)
    fitted = read_json(attack_dir / "spec.json")
    query = QuerySet(victim_query, data_dir)
    kind, release_spec = spec["attack"], spec["release"]
    model = build_classifier(fitted["recipe"], fitted["in_channels"]).to(device)
    model.load_state_dict(read_torch(attack_dir / "attack.pt"))
    scores = score(model, query, kind, release_spec, device)
    per_epoch = [
        threshold_metrics(
            query.labels, score(with_weights(model, snap), query, kind, release_spec, device) > 0.5
        )
        for snap in read_torch(attack_dir / "snapshots.pt")
    ]
    protocol = {k: float(np.mean([m[k] for m in per_epoch])) for k in ("accuracy", "f1")}
    return _write_evaluation(out_dir, spec, query, scores, scores > 0.5, protocol)


def global_loss_job(
    shadow_model: str | Path,
    victim_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
) -> dict:
    """Global-loss attack: per-image Dice loss of the released map; lower loss = member."""
    out_dir = Path(out_dir)
    query = QuerySet(victim_query, data_dir)
    threshold = read_json(Path(shadow_model) / "metrics.json")["train_loss"]
    losses = []
    for start in range(0, len(query), 128):
        idx = np.arange(start, min(start + 128, len(query)))
        logits, masks, ids = query.batch(idx)
        losses.append(
            per_image_dice_loss(release(logits, spec["release"], ids), masks, query.ignore_index)
        )
    loss = torch.cat(losses).numpy()
    predictions = loss <= threshold
    protocol = threshold_metrics(query.labels, predictions)
    return _write_evaluation(out_dir, spec, query, -loss, predictions, protocol)
