"""Training of one segmentation model (the study's recipe), resumable after a kill.

The training arrays are held in memory (on the GPU when they fit) as uint8 and batches are
gathered by index, so no per-sample Python decoding runs in the loop. The batch order of epoch
``e`` is drawn from a generator seeded by (model seed, e), and the global RNG state is saved with
every epoch checkpoint: a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime import Checkpoint, EpochProgress, autocast, rng_state, set_rng_state
from .losses import dice_loss
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


BatchTransform = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Arrays,
    loss_fn,
    num_classes_ignore: tuple[int, int | None],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
) -> dict[str, float]:
    """Validation loss (mean over batches, as in training), Dice and IoU."""
    model.eval()
    scores = SegmentationScores(num_classes_ignore[1])
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


def fit(
    model: nn.Module,
    train: Arrays,
    val: Arrays,
    recipe: Recipe,
    num_classes: int,
    ignore_index: int | None,
    seed: int,
    out_dir: Path,
    spec: dict,
    device: torch.device,
    transform: BatchTransform | None = None,
    name: str = "train",
) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` with the study's recipe; return it and the per-epoch log rows."""
    torch.manual_seed(seed)
    model = model.to(device)
    if device.type == "cuda" and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.weight_decay)
    loss_fn = dice_loss(num_classes, ignore_index)
    step = torch.compile(model) if (recipe.compile and device.type == "cuda") else model

    checkpoint = Checkpoint(out_dir, spec)
    rows: list[dict] = []
    first = 0
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        rows, first = list(state["rows"]), int(state["epoch"]) + 1

    progress = EpochProgress(name, recipe.epochs, first)
    gen = torch.Generator()
    for epoch in range(first, recipe.epochs):
        started = time.monotonic()
        model.train()
        gen.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(train), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(train), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            x, y = train.batch(idx, device)
            if transform is not None:
                x, y = transform(x, y, gen)
            if device.type == "cuda" and recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, recipe.amp):
                logits = step(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        val_scores = evaluate(
            model, val, loss_fn, (num_classes, ignore_index), recipe.batch_size, device, recipe.amp
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            "val_loss": val_scores["loss"],
            "val_dice": val_scores["dice"],
            "val_iou": val_scores["iou"],
            "seconds": time.monotonic() - started,
        }
        rows.append(row)
        checkpoint.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "rows": rows,
                "epoch": epoch,
            }
        )
        progress.update(
            epoch, train_loss=row["train_loss"], val_loss=row["val_loss"], val_dice=row["val_dice"]
        )
    progress.close()
    return model, rows
