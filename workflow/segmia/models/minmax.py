"""Min-max adversarial regularisation (Nasr et al. 2018), as in the study.

Every epoch an inner Type-II attack (the model's output map concatenated with the true mask) is
trained for one pass to tell members from non-members; the segmentation loss is then regularised
by ``lambda`` x the attack's membership probabilities on the training batch, so the model learns to
make its members look like non-members. Four switches of the variant spec choose between:

- segmia's default: a small CNN (``inner_classifier: small_cnn``) on the probabilities
  (``inner_input: probabilities``) with one NAdam kept across epochs (``inner_reset: false``),
  trained on balanced half-member/half-held-out batches of the training set against the
  validation set (``inner_data: train_val``); penalty = ``lambda`` x the batch MEAN
  (``penalty: mean``);
- the original study's code (``seg_train_minmax.py``): an (ImageNet) ResNet-34 with a 1x1 input
  adapter (``resnet34``; weights from ``--inner-weights``) on the raw logits (``logits``), a fresh
  NAdam every epoch (``inner_reset: true``), one shuffled pass in mixed batches over the model's
  MIA set, the very set the attacks are evaluated on (``mia_set``: its members and non-members,
  labels 1/0); penalty = ``lambda`` x the batch SUM (``sum``). Its learning rate (1e-4) and batch
  size (4) are ``attack_lr`` / ``attack_batch_size``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..attacks.classifier import build_classifier
from ..attacks.features import attack_features
from ..data.split import mia_indices
from ..errors import SegmiaError
from .losses import probabilities
from .train import Arrays
from .weights import ATTACK_FILES, LocalWeights, require

log = logging.getLogger("segmia")

#: the switches, each with its allowed values (the first: segmia's default)
SWITCHES = {
    "penalty": ("mean", "sum"),
    "inner_classifier": ("small_cnn", "resnet34"),
    "inner_reset": (False, True),
    "inner_data": ("train_val", "mia_set"),
    "inner_input": ("probabilities", "logits"),
}


def switches(spec: dict) -> dict:
    """The five switches of a min-max variant spec, defaults filled in; unknown values refused."""
    out = {}
    for key, allowed in SWITCHES.items():
        value = spec.get(key, allowed[0])
        if value not in allowed or (key == "inner_reset") != isinstance(value, bool):
            raise SegmiaError(
                f"the min-max variant's {key!r} is {value!r}; it must be one of "
                f"{', '.join(repr(a) for a in allowed)} (default {allowed[0]!r})."
            )
        out[key] = value
    return out


def inner_mia_set(split, spec: dict, data, device: torch.device) -> tuple[Arrays, torch.Tensor]:
    """(images and masks, labels 1/0) of the MIA set of the model ``spec`` describes: its first
    ``mia_size`` training samples (members) and as many non-members, the set its attacks are
    evaluated on (``data.split.mia_indices``); ``inner_data: mia_set`` trains the inner attack on
    it. ``spec['split']`` must hold the dataset's split sizes."""
    sizes = spec.get("split")
    if sizes is None:
        raise SegmiaError(
            f"the min-max variant {spec.get('variant_name', '')!r} of {spec.get('dataset', '')!r}/"
            f"{spec.get('role', '')!r} trains its inner attack on the MIA set "
            "(inner_data: mia_set), but the model spec has no 'split' (the dataset's split sizes, "
            "which define that set). The planner adds it to every min-max model spec: re-run "
            "Snakemake with the current workflow, or add the dataset's 'split' section to the "
            "spec passed to 'segmia train'."
        )
    members, nonmembers = mia_indices(split, spec["pool"], int(spec["train_size"]), sizes)
    rows = np.concatenate([members, nonmembers])
    labels = torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))])
    return Arrays.from_numpy(data.images, data.masks, rows, device), labels


class MinMax:
    """``members``/``heldout``: the training and validation arrays (``inner_data: train_val``);
    ``mia``: (arrays, labels) of :func:`inner_mia_set` (``inner_data: mia_set``); ``weights``: the
    local ImageNet file of the ResNet-34 inner attack (None: random initialisation)."""

    def __init__(
        self,
        spec: dict,
        members,
        heldout,
        out_channels: int,
        ignore_index: int | None,
        device: torch.device,
        *,
        mia: tuple[Arrays, torch.Tensor] | None = None,
        weights: LocalWeights | None = None,
    ):
        self.lam = float(spec["lambda"])
        self.batch_size = int(spec.get("attack_batch_size", 16))
        self.lr = float(spec.get("attack_lr", 1e-3))
        self.switches = switches(spec)
        self.reduce = self.switches["penalty"]
        self.reset = self.switches["inner_reset"]
        self.inner_data = self.switches["inner_data"]
        self.inner_input = self.switches["inner_input"]
        self.members, self.heldout = members, heldout
        if self.inner_data == "mia_set":
            if mia is None:
                raise SegmiaError(
                    "the min-max variant trains its inner attack on the MIA set "
                    "(inner_data: mia_set), but no MIA set was given (see inner_mia_set)."
                )
            self.mia, self.mia_labels = mia[0], mia[1].float().cpu()
        else:
            self.mia, self.mia_labels = None, None
        self.ignore_index, self.device = ignore_index, device
        self.attack = self._build(
            self.switches["inner_classifier"],
            2 * out_channels,
            int(spec.get("attack_width", 16)),
            weights,
        ).to(device)
        self.optimizer = self._optimizer()
        self.loss = nn.BCEWithLogitsLoss()
        self.last_epoch: dict[str, float] = {}

    @staticmethod
    def _build(name: str, in_channels: int, width: int, weights: LocalWeights | None) -> nn.Module:
        expected = ATTACK_FILES.get(name)  # small_cnn: none
        what = f"the min-max inner attack ({name})"
        require(expected, weights, what, option="--inner-weights", optional=True)
        if expected is not None and weights is None:
            log.warning(
                "the min-max inner %s starts from random initialisation: no --inner-weights "
                "given (the original study starts it from ImageNet weights, %s)",
                name,
                expected,
            )
        return build_classifier({"classifier": name, "width": width}, in_channels, weights=weights)

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.NAdam(self.attack.parameters(), lr=self.lr)

    def _inputs(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        released = logits.float() if self.inner_input == "logits" else probabilities(logits)
        return attack_features("type2", released, y, self.ignore_index)

    def _features(self, model, data, idx) -> torch.Tensor:
        x, y = data.batch(idx, self.device)
        with torch.no_grad():
            logits = model(x).float()
        return self._inputs(logits, y)

    def _train_val_batches(self, model, gen: torch.Generator):
        """Balanced batches: half members (training set), half held-out (validation set)."""
        k = min(len(self.members), len(self.heldout))
        members = torch.randperm(len(self.members), generator=gen)[:k]
        heldout = torch.randperm(len(self.heldout), generator=gen)[:k]
        half = max(1, self.batch_size // 2)
        for start in range(0, k, half):
            m, h = members[start : start + half], heldout[start : start + half]
            x = torch.cat(
                [self._features(model, self.members, m), self._features(model, self.heldout, h)]
            )
            y = torch.cat([torch.ones(len(m)), torch.zeros(len(h))]).to(self.device)
            yield x, y

    def _mia_batches(self, model, gen: torch.Generator):
        """One shuffled pass over the MIA set in mixed batches (labels: its membership)."""
        order = torch.randperm(len(self.mia), generator=gen)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._features(model, self.mia, idx), self.mia_labels[idx].to(self.device)

    def on_epoch_start(self, model: nn.Module, gen: torch.Generator) -> None:
        """One pass of the inner attack over its data (``inner_data``)."""
        model.eval()
        if self.reset:
            self.optimizer = self._optimizer()
        self.attack.train()
        batches = (
            self._mia_batches(model, gen)
            if self.inner_data == "mia_set"
            else self._train_val_batches(model, gen)
        )
        total, correct, seen = 0.0, 0, 0
        for x, y in batches:
            self.optimizer.zero_grad(set_to_none=True)
            out = self.attack(x)
            loss = self.loss(out, y)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(y)
            correct += int(((out.detach() > 0).float() == y).sum())
            seen += len(y)
        self.last_epoch = {
            "minmax_attack_loss": total / max(seen, 1),
            "minmax_attack_accuracy": correct / max(seen, 1),
        }
        self.attack.eval()
        model.train()

    def penalty(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """lambda x the (frozen) attack's membership probabilities on this training batch, their
        mean (``penalty: mean``) or sum (``penalty: sum``)."""
        features = self._inputs(logits, y)
        for p in self.attack.parameters():
            p.requires_grad_(False)
        scores = torch.sigmoid(self.attack(features))
        for p in self.attack.parameters():
            p.requires_grad_(True)
        return self.lam * (scores.sum() if self.reduce == "sum" else scores.mean())

    def state_dict(self) -> dict:
        return {
            "attack": self.attack.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.attack.load_state_dict(state["attack"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.last_epoch = dict(state["last_epoch"])
