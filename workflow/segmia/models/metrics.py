"""Segmentation quality on validation data: Dice and IoU (MONAI's definitions)."""

from __future__ import annotations

import torch

from .losses import one_hot_target


def hard_prediction(logits: torch.Tensor) -> torch.Tensor:
    """One-hot (N x C x H x W) hard labels: logit > 0 for binary, argmax otherwise."""
    if logits.shape[1] == 1:
        return (logits > 0).float()
    return (
        torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).float()
    )


class SegmentationScores:
    """Dice and IoU accumulated over batches (void pixels excluded), as MONAI's ``DiceMetric``
    and ``MeanIoU`` with ``include_background=True, ignore_empty=True, reduction="mean"``.

    For a binary task the score is that of the foreground; for a multi-class task each image's
    mean over the classes present in its target (a class absent from the target is skipped), then
    the mean over images. Written out here, equal to MONAI's (tests/test_models.py compares
    them), because importing ``monai.metrics`` costs every training job about 3.7 s.
    """

    def __init__(self, ignore_index: int | None):
        self.ignore_index = ignore_index
        self._dice: list[torch.Tensor] = []
        self._iou: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        pred = hard_prediction(logits.float())
        target, valid = one_hot_target(masks, logits.shape[1], self.ignore_index)
        pred = pred * valid
        inter = (pred * target).sum((2, 3))
        size_pred, size_target = pred.sum((2, 3)), target.sum((2, 3))
        present = size_target > 0
        nan = torch.tensor(float("nan"), device=inter.device)
        self._dice.append(torch.where(present, 2 * inter / (size_pred + size_target), nan).cpu())
        self._iou.append(torch.where(present, inter / (size_pred + size_target - inter), nan).cpu())

    def result(self) -> dict[str, float]:
        return {"dice": _mean(self._dice), "iou": _mean(self._iou)}


def _mean(values: list[torch.Tensor]) -> float:
    """MONAI's "mean" reduction: per image over its non-NaN classes, then over images that have
    one (0 when none has)."""
    if not values:
        return 0.0
    f = torch.cat(values).double()
    counts = (~torch.isnan(f)).sum(1)
    per_image = torch.nan_to_num(f, nan=0.0).sum(1) / counts.clamp(min=1)
    has = counts > 0
    return float(per_image[has].mean()) if has.any() else 0.0
