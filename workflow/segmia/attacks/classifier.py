"""Learned attack classifiers (Type-I / Type-II) and their resumable training.

``resnet34`` / ``resnet18``: the study's torchvision ResNet with a 1x1 convolution mapping the
input channels to 3 and a single-logit head (optionally ImageNet weights, from a local file). ``small_cnn``: three
conv-BN-ReLU-pool stages and a linear head, for CPU runs.
The classifier outputs a logit, which is the membership score (member at logit > 0).

``train_attack`` / ``score_attack`` are the one training loop and scoring loop of every learned
attack; an attack plugs in its model and an input builder (``InputFn``): ``learned_inputs`` for
Type-I/II here, ``loss_map.loss_map_inputs`` for the structured loss-map attack.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SegmiaError
from ..runtime import (
    Checkpoint,
    EpochProgress,
    autocast,
    grad_scaler,
)
from .features import attack_features
from .outputs import QuerySet
from .release import release

log = logging.getLogger("segmia")


class GlobalMeanPool(nn.Module):
    """Global average pooling as a plain mean: unlike ``AdaptiveAvgPool2d`` its CUDA backward is
    deterministic (``torch.use_deterministic_algorithms`` has no deterministic adaptive pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class HalvePool(nn.Module):
    """2 x 2 max pooling while both sides are at least 2 pixels, the identity below: small maps
    (a 5 x 5 loss-map patch of a 16 x 16 image) pass where ``MaxPool2d`` would fail on an empty
    output; from 8 pixels up, three of them equal three ``MaxPool2d(2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        layers, c = [], in_channels
        for w in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                HalvePool(),
            ]
            c = w
        self.features = nn.Sequential(*layers, GlobalMeanPool(), nn.Flatten())
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class ResNetAttack(nn.Module):
    """``weights``: the local file of the ImageNet weights (``attack.pretrained``; see
    :mod:`segmia.models.weights`), loaded into the torchvision ResNet before its head is
    replaced; without it the ResNet starts at random (or a fitted state dict is loaded next).
    Nothing is ever downloaded."""

    def __init__(self, in_channels: int, depth: int = 34, weights=None):
        super().__init__()
        from torchvision import models

        from ..models.weights import HEADS, load_into

        net = {34: models.resnet34, 18: models.resnet18}[depth](weights=None)
        if weights is not None:
            load_into(
                net,
                weights.load(),
                weights.path,
                f"the ResNet-{depth} attack classifier",
                ignore=HEADS,  # the 1000-class head is replaced below
            )
        net.fc = nn.Linear(net.fc.in_features, 1)
        net.avgpool = GlobalMeanPool()
        self.adapt = nn.Conv2d(in_channels, 3, kernel_size=1)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapt(x)).squeeze(1)


def build_classifier(recipe: dict, in_channels: int, weights=None) -> nn.Module:
    """The recipe's classifier; ``weights``: the local ImageNet weight file of a pretrained ResNet
    (``models.weights.attack_file(recipe)``; a fitting job must pass it, see ``job.fit_attack_job``)."""
    name = recipe["classifier"]
    if name == "small_cnn":
        if weights is not None:
            raise SegmiaError("the small_cnn attack classifier takes no pretrained weights")
        return SmallCNN(in_channels, recipe.get("width", 16))
    depth = {"resnet34": 34, "resnet18": 18}[name]
    return ResNetAttack(in_channels, depth, weights)


InputFn = Callable[[QuerySet, np.ndarray, int | None], tuple[torch.Tensor, ...]]
"""Builds the attack model's arguments for the samples at positions ``idx`` of a query set:
``inputs(query, idx, epoch)`` with the 0-based training epoch, or ``None`` when scoring."""


def _inputs(
    query: QuerySet, idx: np.ndarray, kind: str, release_spec: dict, device: torch.device
) -> torch.Tensor:
    logits, masks, ids = query.batch(idx)
    released = release(logits.to(device), release_spec, ids)
    return attack_features(kind, released, masks.to(device), query.ignore_index)


def learned_inputs(kind: str, release_spec: dict, device: torch.device) -> InputFn:
    """Input builder of the Type-I / Type-II classifiers: the attack features of the released map."""

    def build(query: QuerySet, idx: np.ndarray, epoch: int | None) -> tuple[torch.Tensor, ...]:
        return (_inputs(query, idx, kind, release_spec, device),)

    return build


def train_attack(
    model: nn.Module,
    query: QuerySet,
    inputs: InputFn,
    recipe: dict,
    seed: int,
    out_dir: Path,
    spec: dict,
    device: torch.device,
    what: str = "attack",
):
    """The one training loop of the learned attacks: BCE on the model's logit, NAdam, resumable.

    ``model(*inputs(query, idx, epoch))`` must return one logit per sample. Trains on the shadow's
    MIA set (labels = its ``member`` column); returns (model, last-k snapshots, per-epoch rows).
    The epoch checkpoint lives in ``out_dir/.checkpoint`` and is tied to ``spec``.
    """
    optimizer = torch.optim.NAdam(model.parameters(), lr=recipe["lr"])
    loss_fn = nn.BCEWithLogitsLoss()
    labels = torch.tensor(query.labels, dtype=torch.float32)
    epochs, batch_size, last_k = recipe["epochs"], recipe["batch_size"], recipe["last_k"]
    scaler = grad_scaler(device)  # fp16 autocast (GPUs without bf16) needs loss scaling

    checkpoint = Checkpoint(out_dir, spec)
    state, rows, first = checkpoint.resume(model, optimizer, scaler)
    snapshots = list(state.get("snapshots", []))

    progress = EpochProgress(what, epochs, first)
    gen = torch.Generator()
    for epoch in range(first, epochs):
        started = time.monotonic()
        model.train()
        gen.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(query), generator=gen).numpy()
        total, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = inputs(query, idx, epoch)
            y = labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                out = model(*x)
            loss = loss_fn(out.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            correct += int(((out.detach() > 0).float() == y).sum())
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / len(order),
                "train_accuracy": correct / len(order),
                "seconds": time.monotonic() - started,
            }
        )
        if epoch >= epochs - last_k:
            # float16 copies: only the paper-protocol accuracy of past epochs is read from them
            snapshots.append(
                {
                    k: v.detach().cpu().half()
                    if v.is_floating_point()
                    else v.detach().cpu().clone()
                    for k, v in model.state_dict().items()
                }
            )
        checkpoint.save_epoch(
            epoch, rows, model, optimizer, scaler, last=epoch == epochs - 1, snapshots=snapshots
        )
        progress.update(epoch, loss=rows[-1]["train_loss"], accuracy=rows[-1]["train_accuracy"])
    progress.close()
    return model, snapshots, rows


@torch.inference_mode()
def score_attack(
    model: nn.Module,
    query: QuerySet,
    inputs: InputFn,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Membership score of every sample of ``query``: the classifier's raw logit, in float32.

    Not its sigmoid: that is exactly 1.0 in float32 once the logit passes ~17, and tied top
    scores hide the true positive rate at a low false positive rate. Scoring runs without
    autocast (bf16 keeps 8 bits of mantissa: ties again); member at logit > 0 (= sigmoid > 0.5).
    """
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(query), batch_size):
            idx = np.arange(start, min(start + batch_size, len(query)))
            out.append(model(*inputs(query, idx, None)).float().cpu())
    return torch.cat(out).numpy()


def with_weights(model: nn.Module, state: dict) -> nn.Module:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other
