"""The ``segmia train`` step: one model, from its spec to checkpoint, log and metrics.

A model directory holds ``model.pt`` (state dict, loadable with ``weights_only=True``),
``spec.json`` (everything that determines the weights), ``log.csv`` (one row per epoch) and
``metrics.json`` (final validation Dice/IoU/loss, last-epoch training loss, wall time).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from ..data.prepared import load_prepared
from ..data.split import read_split, role_indices, train_indices
from ..io import read_json, read_torch, write_csv, write_json, write_torch
from ..runtime import Checkpoint, stable_seed
from .registry import build_model
from .train import Arrays, Recipe, fit

log = logging.getLogger("segmia")


def model_seed(spec: dict) -> int:
    """Initialisation and batch-order seed of a model.

    It depends on what the model is (dataset, role, architecture, training size, seed) but not on
    its training variant, so variants of one model start from the same weights and see the same
    batch order (a poisoned model with rate 0 equals the clean one).
    """
    return stable_seed(
        spec["dataset"], spec["role"], spec["arch_name"], spec["train_size"], spec["seed"]
    )


def train_job(
    data_dir: str | Path,
    split_path: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
) -> dict:
    out_dir = Path(out_dir)
    data = load_prepared(data_dir, check=False)
    split = read_split(split_path)
    pool = spec["pool"]
    train_rows = train_indices(split, pool, spec["train_size"])
    val_rows = role_indices(split, pool, "val")
    on_device = device if spec["training"].get("data_on_device", True) else torch.device("cpu")
    train = Arrays.from_numpy(data.images, data.masks, train_rows, on_device)
    val = Arrays.from_numpy(data.images, data.masks, val_rows, on_device)
    recipe = Recipe.from_config(spec["training"])
    seed = model_seed(spec)
    torch.manual_seed(seed)
    model = build_model(spec["arch"], data.channels, data.out_channels)
    log.info(
        "training %s/%s %s on %d samples (validation %d), %d epochs, device %s",
        spec["dataset"],
        spec["role"],
        spec["arch_name"],
        len(train),
        len(val),
        recipe.epochs,
        device,
    )
    started = time.monotonic()
    model, rows = fit(
        model,
        train,
        val,
        recipe,
        data.num_classes,
        data.ignore_index,
        seed,
        out_dir,
        spec,
        device,
        name=f"{spec['role']}/{spec['arch_name']}/{spec['variant_name']}",
    )
    seconds = sum(r["seconds"] for r in rows)
    last = rows[-1]
    metrics = {
        "dataset": spec["dataset"],
        "role": spec["role"],
        "arch": spec["arch_name"],
        "variant": spec["variant_name"],
        "train_size": spec["train_size"],
        "seed": spec["seed"],
        "val_dice": last["val_dice"],
        "val_iou": last["val_iou"],
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
        "epochs": len(rows),
        "train_seconds": seconds,
        "job_seconds": time.monotonic() - started,
        "device": device.type,
    }
    write_torch(out_dir / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    write_json(out_dir / "spec.json", spec)
    write_csv(out_dir / "log.csv", pd.DataFrame(rows))
    write_json(out_dir / "metrics.json", metrics)
    Checkpoint(out_dir, spec).clear()
    log.info("val Dice %.4f IoU %.4f, %.1f s", metrics["val_dice"], metrics["val_iou"], seconds)
    return metrics


def load_model(model_dir: str | Path, in_channels: int, out_channels: int, device: torch.device):
    """Rebuild a trained model from its directory (``spec.json`` + ``model.pt``)."""
    model_dir = Path(model_dir)
    spec = read_json(model_dir / "spec.json")
    model = build_model(
        spec["arch"], in_channels, out_channels, private=spec.get("variant", {}).get("type") == "dp"
    )
    model.load_state_dict(read_torch(model_dir / "model.pt"))
    return model.to(device).eval(), spec
