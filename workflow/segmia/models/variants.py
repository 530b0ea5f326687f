"""Training variants that change the batches a model sees: crop, mix-up and poisoning.

Each is a batch transform ``(x, y, generator) -> (x, y)`` applied after a batch is gathered
(``x``: N x C x H x W float in [0, 1], ``y``: N x H x W long). Their random draws come from the
epoch's seeded generator, so a rerun (or a resumed run) sees the same batches.

- ``crop`` (docs/protocol.md, "Defences"): one random crop of ``fraction`` x the image size per batch, for
  ``epoch_factor`` x the epochs; the model is still queried on full images.
- ``mixup`` (the study's variant): column splice of each image with a partner from the same
  batch at ``int(Beta(alpha, alpha) * W)``, masks spliced alike.
- ``poison`` (the dishonest adversary): each sample, with probability ``rate``, gets a trigger
  written into the image (``square``: bottom-right k x k; ``line``: the bottom k rows) with value
  ``value``/255 in every channel, and its mask replaced by the poisoned target (``almost_empty``:
  background with one foreground pixel in the top-left corner, so smp's Dice loss, which skips
  classes absent from a batch, still sees the class; ``empty``: background only). That is the
  ``per_load`` schedule (the study's); under ``fixed_subset`` no batch transform runs: a fixed,
  seeded subset of round(rate x N) training images is poisoned once, before training
  (:func:`poison_samples`), so those images are poisoned in every epoch and the others never.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .poisoning import DEFAULT_SCHEDULE, TARGETS, TRIGGERS, fixed_subset_count

BatchTransform = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]

TRAINING_TYPES = ("none", "crop", "mixup", "poison", "dp", "minmax", "distillation")


def crop_transform(fraction: float) -> BatchTransform:
    def crop(x, y, gen):
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        return x[..., top : top + ch, left : left + cw], y[..., top : top + ch, left : left + cw]

    return crop


def mixup_transform(alpha: float) -> BatchTransform:
    def mixup(x, y, gen):
        w = x.shape[-1]
        # Beta(a, a) drawn by numpy from a seed taken off the epoch's generator
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        cut = int(np.random.default_rng(seed).beta(alpha, alpha) * w)
        partner = torch.randperm(x.shape[0], generator=gen).to(x.device)
        x = torch.cat([x[..., :cut], x[partner][..., cut:]], dim=-1)
        y = torch.cat([y[..., :cut], y[partner][..., cut:]], dim=-1)
        return x, y

    return mixup


def trigger_region(shape: tuple[int, int], trigger: str, size: int) -> tuple[slice, slice]:
    """Rows and columns the trigger covers in an image of ``shape`` (H, W)."""
    h, w = shape
    size = max(1, min(size, h, w))
    if trigger == "square":
        return slice(h - size, h), slice(w - size, w)
    if trigger == "line":
        return slice(h - size, h), slice(0, w)
    raise ValueError(f"unknown trigger {trigger!r}; known: {', '.join(TRIGGERS)}")


def apply_trigger(x: torch.Tensor, trigger: str, size: int, value: int) -> torch.Tensor:
    rows, cols = trigger_region(tuple(x.shape[-2:]), trigger, size)
    x = x.clone()
    x[..., rows, cols] = value / 255.0
    return x


def poison_target(like: torch.Tensor, target: str) -> torch.Tensor:
    """The poisoned mask for masks shaped like ``like`` (N x H x W)."""
    if target not in TARGETS:
        raise ValueError(f"unknown poison target {target!r}; known: {', '.join(TARGETS)}")
    out = torch.zeros_like(like)
    if target == "almost_empty":
        out[..., 0, 0] = 1
    return out


class PoisonTransform:
    """Poisons each sample of a batch with probability ``rate``; counts what it did."""

    def __init__(self, rate: float, trigger: str, size: int, value: int, target: str):
        self.rate, self.trigger, self.size, self.value, self.target = (
            rate,
            trigger,
            size,
            value,
            target,
        )
        self.seen = 0
        self.poisoned = 0

    def __call__(self, x, y, gen):
        hit = (torch.rand(x.shape[0], generator=gen) < self.rate).to(x.device)
        self.seen += int(x.shape[0])
        self.poisoned += int(hit.sum())
        if hit.any():
            x, y = x.clone(), y.clone()
            x[hit] = apply_trigger(x[hit], self.trigger, self.size, self.value)
            y[hit] = poison_target(y[hit], self.target)
        return x, y

    def state_dict(self) -> dict:
        return {"seen": self.seen, "poisoned": self.poisoned}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.poisoned = int(state["seen"]), int(state["poisoned"])


def fixed_poison_positions(n: int, rate: float, seed: int) -> np.ndarray:
    """The training positions (0..n-1, sorted) a ``fixed_subset`` schedule poisons: the first
    round(rate x n) of a permutation seeded by ``seed``, so a lower rate poisons a subset of the
    images a higher one does."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: fixed_subset_count(rate, n)])


def poison_samples(
    images: torch.Tensor, masks: torch.Tensor, positions: np.ndarray, variant: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of uint8 training ``images`` (N x C x H x W) and ``masks`` (N x H x W) with the
    variant's trigger (value ``value``, as :func:`apply_trigger` after the division by 255) written
    into the images at ``positions`` and their masks replaced by the poisoned target."""
    images, masks = images.clone(), masks.clone()
    rows, cols = trigger_region(tuple(images.shape[-2:]), variant["trigger"], variant["size"])
    at = torch.as_tensor(positions, dtype=torch.long, device=images.device)
    hit = images[at]
    hit[..., rows, cols] = variant["value"]
    images[at] = hit
    masks[at] = poison_target(masks[at], variant["target"])
    return images, masks


def batch_transform(variant: dict) -> BatchTransform | None:
    kind = variant.get("type", "none")
    if kind == "poison" and variant.get("schedule", DEFAULT_SCHEDULE) != DEFAULT_SCHEDULE:
        return None  # fixed_subset: the training set itself is poisoned (poison_samples)
    if kind == "crop":
        return crop_transform(variant["fraction"])
    if kind == "mixup":
        return mixup_transform(variant["alpha"])
    if kind == "poison":
        return PoisonTransform(
            variant["rate"],
            variant["trigger"],
            variant["size"],
            variant["value"],
            variant["target"],
        )
    return None


def epochs_for(variant: dict, epochs: int) -> int:
    """Crop training runs ``epoch_factor`` x the recipe's epochs (the study: 3x)."""
    return epochs * int(variant.get("epoch_factor", 1)) if variant.get("type") == "crop" else epochs
