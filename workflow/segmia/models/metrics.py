"""Segmentation quality on validation data: Dice and IoU via MONAI metrics."""

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
    """Accumulates MONAI ``DiceMetric`` and ``MeanIoU`` over batches (void pixels excluded).

    For a binary task the score is that of the foreground; for a multi-class task the mean over
    classes present in an image (classes absent from both are skipped: ``ignore_empty``).
    """

    def __init__(self, ignore_index: int | None):
        from monai.metrics import DiceMetric, MeanIoU

        self.ignore_index = ignore_index
        self.dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=True)
        self.iou = MeanIoU(include_background=True, reduction="mean", ignore_empty=True)

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        pred = hard_prediction(logits.float())
        target, valid = one_hot_target(masks, logits.shape[1], self.ignore_index)
        pred = pred * valid
        self.dice(pred, target)
        self.iou(pred, target)

    def result(self) -> dict[str, float]:
        return {"dice": _value(self.dice.aggregate()), "iou": _value(self.iou.aggregate())}


def _value(t) -> float:
    value = float(t.item()) if hasattr(t, "item") else float(t)
    return value
