"""The structured loss-map attack of He et al., "Segmentations-Leak: Membership Inference Attacks
and Defenses in Semantic Image Segmentation" (ECCV 2020; code SSAW14/segmentation_membership_inference).

Input of one query: the per-pixel cross-entropy map -log p_y of the released map (1 channel, void
pixels 0; ``parts=("loss",)``), optionally concatenated with the released map itself (``"map"``,
C channels) and/or the true mask (``"mask"``: one-hot, void pixels all-zero; 1 channel for a binary
task). He et al.'s "concatenation" input is ``parts=("map", "mask")``.

The attack classifier (``classifier.build_classifier``: ``small_cnn`` for CPU, ``resnet18`` /
``resnet34``) sees K patches of the map (default 6) and their logits are summed into one image
logit, which is the membership score. The patch size defaults to He et al.'s 90 x 90 at
256 x 256, scaled with the image: (round(90/256 * H), round(90/256 * W)); ``recipe["patch"]`` (int or
[h, w]) fixes it instead. Patch corners are uniform over all positions where the patch fits.

Patch positions are drawn per sample from a generator seeded by (attack seed, sample id) and, in
training, the epoch: fresh positions in every training epoch, and fixed ones at evaluation that do
not depend on batch composition or order. The classifier is trained end to end on the summed logit
with BCE, in the training loop shared with the Type-I/II attacks (``classifier.train_attack``,
checkpoint/resume included).

Recipe keys: those of the Type-I/II attacks (``classifier``, ``width``, ``pretrained``, ``epochs``,
``batch_size``, ``lr``, ``last_k``) and ``num_patches`` (6), ``patch`` (None), ``patch_fraction``
(90/256), ``loss_floor`` (1e-6, floor of p_y inside the logarithm, so the loss is at most 13.8).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.losses import cross_entropy_map, one_hot_target
from ..runtime import stable_seed
from .classifier import InputFn, build_classifier
from .outputs import QuerySet
from .release import release

PARTS = ("loss", "map", "mask")
NUM_PATCHES = 6
PATCH_FRACTION = 90 / 256


def _check_parts(parts) -> tuple[str, ...]:
    parts = tuple(parts)
    if not parts or len(set(parts)) != len(parts) or not set(parts) <= set(PARTS):
        raise ValueError(f"loss-map input parts must be distinct names from {PARTS}, got {parts}")
    return parts


def loss_map_channels(parts, out_channels: int) -> int:
    """Input channels of the attack for a model with ``out_channels`` output channels."""
    size = {"loss": 1, "map": out_channels, "mask": out_channels}
    return sum(size[p] for p in _check_parts(parts))


def loss_map_features(
    released: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int | None,
    parts=("loss",),
    loss_floor: float = 1e-6,
) -> torch.Tensor:
    """Attack input maps (N x channels x H x W) from released maps (N x C x H x W) and masks."""
    out = []
    for part in _check_parts(parts):
        if part == "loss":
            out.append(cross_entropy_map(released, masks, ignore_index, loss_floor)[:, None])
        elif part == "map":
            out.append(released.float())
        else:
            out.append(one_hot_target(masks, released.shape[1], ignore_index)[0])
    return torch.cat(out, dim=1)


def patch_shape(
    image_hw: tuple[int, int], patch=None, fraction: float = PATCH_FRACTION
) -> tuple[int, int]:
    """(h, w) of the patches: ``patch`` (int or (h, w)) if given, else ``fraction`` of the image."""
    height, width = image_hw
    if patch is None:
        ph, pw = max(1, round(fraction * height)), max(1, round(fraction * width))
    elif isinstance(patch, int):
        ph = pw = patch
    else:
        ph, pw = (int(v) for v in patch)
    if not (1 <= ph <= height and 1 <= pw <= width):
        raise ValueError(f"patch {ph}x{pw} does not fit into {height}x{width} maps")
    return ph, pw


def patch_positions(
    sample_ids: list[str],
    num_patches: int,
    image_hw: tuple[int, int],
    patch_hw: tuple[int, int],
    seed: int,
    epoch: int | None = None,
) -> torch.Tensor:
    """Top-left corners (N x K x 2 long: row, column) of K patches per sample.

    Uniform over [0, H - h] x [0, W - w]; seeded by (``seed``, sample id) and, when training,
    the ``epoch`` (``None``: the fixed evaluation positions).
    """
    (height, width), (ph, pw) = image_hw, patch_hw
    out = torch.empty(len(sample_ids), num_patches, 2, dtype=torch.long)
    for i, sid in enumerate(sample_ids):
        phase = "eval" if epoch is None else f"train{epoch}"
        gen = torch.Generator().manual_seed(stable_seed("loss_map", seed, phase, str(sid)))
        out[i, :, 0] = torch.randint(0, height - ph + 1, (num_patches,), generator=gen)
        out[i, :, 1] = torch.randint(0, width - pw + 1, (num_patches,), generator=gen)
    return out


def extract_patches(
    maps: torch.Tensor, positions: torch.Tensor, patch_hw: tuple[int, int]
) -> torch.Tensor:
    """Patches (N x K x C x h x w) of ``maps`` (N x C x H x W) at ``positions`` (N x K x 2)."""
    ph, pw = patch_hw
    positions = positions.to(maps.device)
    rows = positions[..., 0, None] + torch.arange(ph, device=maps.device)  # N x K x h
    cols = positions[..., 1, None] + torch.arange(pw, device=maps.device)  # N x K x w
    batch = torch.arange(len(maps), device=maps.device)[:, None, None, None]
    # advanced indices around a slice: the indexed dims come first -> N x K x h x w x C
    patches = maps[batch, :, rows[:, :, :, None], cols[:, :, None, :]]
    return patches.permute(0, 1, 4, 2, 3)


class LossMapAttack(nn.Module):
    """A patch classifier whose logits over K patches of a map are summed into one image logit."""

    def __init__(
        self, classifier: nn.Module, patch_hw: tuple[int, int], num_patches: int = NUM_PATCHES
    ):
        super().__init__()
        self.classifier = classifier
        self.patch_hw = (int(patch_hw[0]), int(patch_hw[1]))
        self.num_patches = int(num_patches)

    def patch_logits(self, maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logit of every patch (N x K)."""
        patches = extract_patches(maps, positions, self.patch_hw)
        n, k = patches.shape[:2]
        return self.classifier(patches.flatten(0, 1)).reshape(n, k)

    def forward(self, maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Image logit (N,): the sum of the patch logits."""
        return self.patch_logits(maps, positions).sum(1)

    def positions(
        self, sample_ids: list[str], image_hw: tuple[int, int], seed: int, epoch: int | None = None
    ) -> torch.Tensor:
        """``patch_positions`` of this attack's K patches (N x K x 2)."""
        return patch_positions(sample_ids, self.num_patches, image_hw, self.patch_hw, seed, epoch)


def build_loss_map_attack(
    recipe: dict, in_channels: int, image_hw: tuple[int, int], weights=None
) -> LossMapAttack:
    """The attack for maps of size ``image_hw`` under ``recipe`` (patch size fixed here);
    ``weights``: the classifier's local ImageNet weight file (see ``build_classifier``)."""
    patch_hw = patch_shape(
        image_hw, recipe.get("patch"), recipe.get("patch_fraction", PATCH_FRACTION)
    )
    num_patches = int(recipe.get("num_patches", NUM_PATCHES))
    if num_patches < 1:
        raise ValueError(f"num_patches must be at least 1, got {num_patches}")
    return LossMapAttack(build_classifier(recipe, in_channels, weights), patch_hw, num_patches)


def loss_map_inputs(
    model: LossMapAttack,
    parts,
    release_spec: dict,
    seed: int,
    device: torch.device,
    loss_floor: float = 1e-6,
) -> InputFn:
    """Input builder for ``classifier.train_attack`` / ``score_attack``: (maps, positions)."""
    parts = _check_parts(parts)

    def build(query: QuerySet, idx: np.ndarray, epoch: int | None) -> tuple[torch.Tensor, ...]:
        logits, masks, ids = query.batch(idx)
        released = release(logits.to(device), release_spec, ids)
        maps = loss_map_features(released, masks.to(device), query.ignore_index, parts, loss_floor)
        positions = model.positions(ids, tuple(maps.shape[2:]), seed, epoch)
        return maps, positions.to(device)

    return build
