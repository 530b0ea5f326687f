"""Inputs of the learned attacks, built from released maps and true masks.

``type1``: the released map only (C channels; 1 for a binary task).
``type2``: the released map concatenated with the true mask (one-hot for multi-class; void
pixels all-zero), C + C channels.
"""

from __future__ import annotations

import torch

from ..models.losses import one_hot_target


def feature_channels(kind: str, out_channels: int) -> int:
    return {"type1": out_channels, "type2": 2 * out_channels}[kind]


def attack_features(
    kind: str, released: torch.Tensor, masks: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    if kind == "type1":
        return released
    if kind == "type2":
        target, _ = one_hot_target(masks, released.shape[1], ignore_index)
        return torch.cat([released, target], dim=1)
    raise ValueError(f"unknown learned attack {kind!r}")
