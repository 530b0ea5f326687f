"""Losses of the study: smp's Dice loss from logits, and its per-image variant for attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DiceLoss(torch.nn.Module):
    """The study's training loss: smp's ``DiceLoss(mode, from_logits=True)``, batch-level.

    Same formula as ``segmentation_models_pytorch.losses.DiceLoss`` (smooth 0, eps 1e-7, classes
    absent from the batch's ground truth contribute 0, void pixels ignored), written here so a
    job does not pay smp's 2 s import for a loss; tests check the two agree.
    """

    def __init__(self, ignore_index: int | None = None, eps: float = 1e-7):
        super().__init__()
        self.ignore_index, self.eps = ignore_index, eps

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return _dice_terms(
            probabilities(logits), masks, self.ignore_index, self.eps, per_image=False
        )


def dice_loss(num_classes: int, ignore_index: int | None) -> DiceLoss:
    """Training loss for a task with ``num_classes`` (binary: one logit, sigmoid)."""
    return DiceLoss(ignore_index)


class PerImageDiceLoss(torch.nn.Module):
    """Mean over images of each image's own Dice loss: a per-sample loss, as DP-SGD needs.

    ``reduction`` ("mean", "sum" or "none": one loss per image) follows torch's losses; Opacus'
    ghost clipping switches it to "none" to get the per-sample losses.
    """

    def __init__(self, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:  # an empty Poisson batch
            return logits.sum((1, 2, 3)) * 0.0 if self.reduction == "none" else logits.sum() * 0.0
        losses = per_image_dice_loss(probabilities(logits), masks, self.ignore_index)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


def per_image_loss(task) -> PerImageDiceLoss:
    return PerImageDiceLoss(task.ignore_index)


def _dice_terms(
    probs: torch.Tensor, masks: torch.Tensor, ignore_index: int | None, eps: float, per_image: bool
) -> torch.Tensor:
    n, c = probs.shape[:2]
    target, valid = one_hot_target(masks, c, ignore_index)
    pred = probs.float() * valid
    if per_image:
        pred, target = pred.reshape(n, c, -1), target.reshape(n, c, -1)
        dims = (2,)
    else:
        pred = pred.reshape(n, c, -1).transpose(0, 1).reshape(c, -1)
        target = target.reshape(n, c, -1).transpose(0, 1).reshape(c, -1)
        dims = (1,)
    inter = (pred * target).sum(dims)
    card = (pred + target).sum(dims)
    loss = 1.0 - (2.0 * inter) / card.clamp_min(eps)
    loss = loss * (target.sum(dims) > 0).float()
    return loss.mean(-1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class probabilities: sigmoid for one binary logit, softmax otherwise."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def one_hot_target(
    masks: torch.Tensor, channels: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target N x channels x H x W float, valid N x 1 x H x W float); void pixels are all-zero."""
    valid = (
        torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    )
    labels = torch.where(valid, masks, torch.zeros_like(masks)).long()
    if channels == 1:
        target = labels.unsqueeze(1).float()
    else:
        target = F.one_hot(labels, channels).permute(0, 3, 1, 2).float()
    valid = valid.unsqueeze(1).float()
    return target * valid, valid


def per_image_dice_loss(
    probs: torch.Tensor, masks: torch.Tensor, ignore_index: int | None, eps: float = 1e-7
) -> torch.Tensor:
    """smp's Dice loss computed for every image on its own (N values), from probabilities.

    Equal to ``DiceLoss(...)(logits[i:i+1], masks[i:i+1])`` for each i.
    """
    return _dice_terms(probs, masks, ignore_index, eps, per_image=True)


def cross_entropy_map(
    probs: torch.Tensor, masks: torch.Tensor, ignore_index: int | None, floor: float = 1e-6
) -> torch.Tensor:
    """Per-pixel cross-entropy -log p_y (N x H x W); void pixels are 0."""
    target, valid = one_hot_target(masks, probs.shape[1], ignore_index)
    if probs.shape[1] == 1:
        p_true = torch.where(target[:, 0] > 0, probs[:, 0], 1.0 - probs[:, 0])
    else:
        p_true = (probs * target).sum(1)
    return -torch.log(p_true.float().clamp_min(floor)) * valid[:, 0]
