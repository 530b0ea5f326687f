"""Training of one segmentation model (the study's recipe), resumable after a kill.

The training arrays are held in memory (on the GPU when they fit) as uint8 and batches are
gathered by index, so no per-sample Python decoding runs in the loop. The batch order of epoch
``e`` is drawn from a generator seeded by (model seed, e), and the global RNG state is saved with
every epoch checkpoint: a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime import (
    Checkpoint,
    EpochProgress,
    amp_dtype,
    autocast,
    grad_scaler,
)
from .losses import dice_loss, per_image_loss
from .metrics import SegmentationScores

log = logging.getLogger("segmia")


@dataclass
class Arrays:
    """Images (N x C x H x W uint8) and masks (N x H x W uint8) as tensors on one device."""

    images: torch.Tensor
    masks: torch.Tensor

    @classmethod
    def from_numpy(
        cls, images: np.ndarray, masks: np.ndarray, rows: np.ndarray, device: torch.device
    ) -> Arrays:
        return cls(
            images=torch.from_numpy(np.ascontiguousarray(images[rows])).to(device),
            masks=torch.from_numpy(np.ascontiguousarray(masks[rows])).to(device),
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.images.device)
        x = self.images[idx].to(device, non_blocking=True).float().div_(255.0)
        y = self.masks[idx].to(device, non_blocking=True).long()
        return x, y


@dataclass
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "nadam"
    weight_decay: float = 0.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    data_on_device: bool = True
    #: validate after the first epoch, every ``validate_every``-th after it and the last (the
    #: original code: every 10th); the model is never selected on it
    validate_every: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, training: dict) -> Recipe:
        known = {k: training[k] for k in cls.__dataclass_fields__ if k in training and k != "extra"}
        return cls(**known)


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


@dataclass(frozen=True)
class Task:
    num_classes: int
    ignore_index: int | None


@dataclass
class Extras:
    """What a training variant adds to the plain loop (all optional).

    ``transform``: a batch transform (crop, mix-up, poisoning; see ``variants``), whose
    ``state_dict`` (if any) is checkpointed; ``private``: the DP-SGD spec (see ``private``);
    ``regulariser``: the min-max adversarial regulariser (see ``minmax``).
    """

    transform: Callable | None = None
    private: dict | None = None
    regulariser: object | None = None


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Arrays,
    loss_fn,
    task: Task,
    batch_size: int,
    device: torch.device,
    amp: bool = True,
) -> dict[str, float]:
    """Validation loss (mean over batches, as in training), Dice and IoU."""
    model.eval()
    scores = SegmentationScores(task.ignore_index)
    losses, weights = [], []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x, y = data.batch(idx, device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        losses.append(float(loss_fn(logits, y)))
        weights.append(len(idx))
        scores.update(logits, y)
    return {"loss": float(np.average(losses, weights=weights)), **scores.result()}


def _state(obj) -> dict | None:
    return obj.state_dict() if hasattr(obj, "state_dict") else None


@dataclass
class _Setup:
    """The training loop's parts, after a variant's extras are applied (DP-SGD wraps the model,
    optimizer and loss)."""

    model: nn.Module  # what the batches go through (Opacus' GradSampleModule under DP)
    trained: nn.Module  # the unwrapped model: checkpointed, validated, returned
    step: Callable  # model, or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    val_loss_fn: Callable
    scaler: object
    amp: bool
    engine: object | None = None  # Opacus PrivacyEngine
    loader: object | None = None  # Opacus' Poisson-sampling batch loader


def _setup(
    model: nn.Module, train: Arrays, recipe: Recipe, task: Task, device, extras: Extras
) -> _Setup:
    model = model.to(device)
    if device.type == "cuda" and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = extras.private["lr"] if extras.private else recipe.lr
    optimizer = make_optimizer(recipe.optimizer, model.parameters(), lr, recipe.weight_decay)
    loss_fn = dice_loss(task.num_classes, task.ignore_index)
    val_loss_fn = loss_fn
    engine = loader = None
    amp = recipe.amp
    if extras.private:
        from .private import make_private

        # Opacus clips per-sample gradients: the loss must be a mean of per-sample losses, so DP
        # trains on the mean per-image Dice loss (smp's batch Dice couples the samples). With
        # grad_sample_mode "ghost" the loss comes back wrapped (two backward passes).
        loss_fn = per_image_loss(task)
        model, optimizer, loader, engine, dp_loss = make_private(
            model, optimizer, len(train), recipe, extras.private, criterion=loss_fn
        )
        val_loss_fn, loss_fn = loss_fn, dp_loss or loss_fn
        if amp and amp_dtype(device) == torch.float16:
            # fp16 needs loss scaling, and Opacus would clip the scaled per-sample gradients
            log.warning("DP-SGD trains in float32 on this GPU (no bf16; fp16 would need scaling)")
            amp = False
    compiled = recipe.compile and device.type == "cuda" and engine is None
    return _Setup(
        model=model,
        trained=model._module if engine is not None else model,
        step=torch.compile(model) if compiled else model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        # fp16 autocast (GPUs without bf16) needs loss scaling; a no-op everywhere else
        scaler=grad_scaler(device, amp and engine is None),
        amp=amp,
        engine=engine,
        loader=loader,
    )


def _epoch(
    run: _Setup, train: Arrays, recipe: Recipe, extras: Extras, gen, device
) -> dict[str, float]:
    """One pass over the training set: the epoch's weighted and unweighted mean batch loss, and
    the min-max penalty."""
    run.model.train()
    if run.loader is not None:  # Poisson-sampled batches of indices (DP-SGD)
        batches = (b[0] for b in run.loader)
    else:
        order = torch.randperm(len(train), generator=gen)
        batches = (
            order[i : i + recipe.batch_size] for i in range(0, len(train), recipe.batch_size)
        )
    total, count, penalty, batch_losses = 0.0, 0, 0.0, []
    for idx in batches:
        if run.engine is not None and len(idx) == 0:  # an empty Poisson batch: noise only
            from .private import step_on_empty_batch

            step_on_empty_batch(run.optimizer)
            continue
        x, y = train.batch(idx, device)
        if extras.transform is not None:
            x, y = extras.transform(x, y, gen)
        if device.type == "cuda" and recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run.optimizer.zero_grad(set_to_none=True)
        with autocast(device, run.amp):
            logits = run.step(x)
        loss = run.loss_fn(logits.float(), y)
        objective = loss
        if extras.regulariser is not None:
            term = extras.regulariser.penalty(logits.float(), y)
            objective = loss + term
            penalty += float(term.detach()) * len(idx)
        run.scaler.scale(objective).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if len(idx):
            batch_losses.append(float(loss.detach()))
            total += batch_losses[-1] * len(idx)
        count += len(idx)
    return {
        "train_loss": total / max(count, 1),
        # the original's global-loss threshold: batches unweighted (protocol "threshold")
        "train_loss_batch_mean": sum(batch_losses) / max(len(batch_losses), 1),
        "minmax_penalty": penalty / max(count, 1),
    }


def fit(
    model: nn.Module,
    train: Arrays,
    val: Arrays,
    recipe: Recipe,
    task: Task,
    seed: int,
    out_dir: Path,
    spec: dict,
    device: torch.device,
    extras: Extras | None = None,
    name: str = "train",
) -> tuple[nn.Module, list[dict], dict]:
    """Train ``model`` with the study's recipe (and a variant's ``extras``).

    Returns the trained (unwrapped) model, the per-epoch log rows and variant information
    (e.g. the spent privacy budget).
    """
    extras = extras or Extras()
    torch.manual_seed(seed)
    run = _setup(model, train, recipe, task, device, extras)
    engine = run.engine
    checkpoint = Checkpoint(out_dir, spec)
    state, rows, first = checkpoint.resume(run.trained, run.optimizer, run.scaler)
    for key, obj in (
        ("transform", extras.transform),
        ("regulariser", extras.regulariser),
        ("accountant", engine and engine.accountant),
    ):
        if state.get(key) is not None:
            obj.load_state_dict(state[key])

    progress = EpochProgress(name, recipe.epochs, first)
    gen = torch.Generator()
    for epoch in range(first, recipe.epochs):
        started = time.monotonic()
        gen.manual_seed(seed * 1_000_003 + epoch)
        if extras.regulariser is not None:
            extras.regulariser.on_epoch_start(run.trained, gen)
        losses = _epoch(run, train, recipe, extras, gen, device)
        last = epoch == recipe.epochs - 1
        validated = last or epoch % recipe.validate_every == 0
        if validated:
            val_scores = evaluate(
                run.trained, val, run.val_loss_fn, task, recipe.batch_size, device, run.amp
            )
        else:  # not validated this epoch
            val_scores = dict.fromkeys(("loss", "dice", "iou"), math.nan)
        row = {
            "epoch": epoch + 1,
            "train_loss": losses["train_loss"],
            "train_loss_batch_mean": losses["train_loss_batch_mean"],
            "val_loss": val_scores["loss"],
            "val_dice": val_scores["dice"],
            "val_iou": val_scores["iou"],
            "seconds": time.monotonic() - started,
        }
        if extras.regulariser is not None:
            row["minmax_penalty"] = losses["minmax_penalty"]
            row.update(extras.regulariser.last_epoch)
        if engine is not None:  # the budget spent so far (PRV accounting: ~0.5 s a call)
            row["epsilon"] = engine.get_epsilon(extras.private["delta"]) if validated else math.nan
        rows.append(row)
        checkpoint.save_epoch(
            epoch,
            rows,
            run.trained,
            run.optimizer,
            run.scaler,
            last=last,
            transform=_state(extras.transform),
            regulariser=_state(extras.regulariser),
            accountant=engine.accountant.state_dict() if engine is not None else None,
        )
        progress.update(
            epoch,
            train_loss=row["train_loss"],
            **{k: row[k] for k in ("val_loss", "val_dice") if not math.isnan(row[k])},
        )
    progress.close()
    return run.trained, rows, _variant_info(run, extras, rows)


def _variant_info(run: _Setup, extras: Extras, rows: list[dict]) -> dict:
    """What the variant reports: DP-SGD's spent budget (the last epoch's), poisoning's realised
    rate."""
    if run.engine is not None:
        return {
            "epsilon": rows[-1]["epsilon"]
            if rows
            else run.engine.get_epsilon(extras.private["delta"]),
            "target_epsilon": extras.private["epsilon"],
            "delta": extras.private["delta"],
            "noise_multiplier": run.optimizer.noise_multiplier,
            "max_grad_norm": extras.private["max_grad_norm"],
        }
    if hasattr(extras.transform, "poisoned"):
        return {"poison_rate_realised": extras.transform.poisoned / max(extras.transform.seen, 1)}
    return {}
