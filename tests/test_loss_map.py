"""The structured loss-map attack (He et al. 2020): inputs, patches, patch-logit sums, and learning a
planted member/non-member difference."""

import time

import numpy as np
import pandas as pd
import pytest
import torch
from segmia.attacks.classifier import SmallCNN, score_attack, train_attack
from segmia.attacks.job import learned_attack
from segmia.attacks.loss_map import (
    LossMapAttack,
    build_loss_map_attack,
    extract_patches,
    loss_map_channels,
    loss_map_features,
    patch_positions,
    patch_shape,
)
from segmia.attacks.metrics import roc_metrics
from segmia.attacks.outputs import QuerySet
from segmia.data.prepared import write_prepared
from segmia.io import write_csv, write_npy
from segmia.models.losses import cross_entropy_map

RECIPE = {
    "classifier": "small_cnn",
    "width": 8,
    "epochs": 5,
    "batch_size": 8,
    "lr": 3e-3,
    "last_k": 2,
    "pretrained": False,
    "num_patches": 6,
}


def test_patch_shape_scales_he_et_al_90_of_256():
    assert patch_shape((256, 256)) == (90, 90)
    assert patch_shape((256, 512)) == (90, 180)  # Cityscapes at 512 x 256 (W x H)
    assert patch_shape((32, 32)) == (11, 11)  # round(11.25)
    assert patch_shape((64, 64), patch=20) == (20, 20)
    assert patch_shape((64, 64), patch=[10, 30]) == (10, 30)
    with pytest.raises(ValueError, match="does not fit"):
        patch_shape((32, 32), patch=40)


def test_patch_positions_are_in_bounds_and_deterministic():
    ids = [f"s{i}" for i in range(50)]
    pos = patch_positions(ids, 6, (40, 60), (11, 20), seed=3)
    assert pos.shape == (50, 6, 2) and pos.dtype == torch.long
    assert pos[..., 0].min() >= 0 and pos[..., 0].max() <= 40 - 11
    assert pos[..., 1].min() >= 0 and pos[..., 1].max() <= 60 - 20
    # both extremes are reachable (uniform over all positions where the patch fits)
    many = patch_positions(ids, 200, (12, 12), (11, 11), seed=0)
    assert set(many.flatten().tolist()) == {0, 1}
    # evaluation positions: fixed per (seed, sample), whatever the batch
    assert torch.equal(pos, patch_positions(ids, 6, (40, 60), (11, 20), seed=3))
    assert torch.equal(pos[[7, 2]], patch_positions(["s7", "s2"], 6, (40, 60), (11, 20), seed=3))
    assert not torch.equal(pos, patch_positions(ids, 6, (40, 60), (11, 20), seed=4))
    # training positions: reproducible per epoch, fresh from one epoch to the next
    e0 = patch_positions(ids, 6, (40, 60), (11, 20), seed=3, epoch=0)
    assert torch.equal(e0, patch_positions(ids, 6, (40, 60), (11, 20), seed=3, epoch=0))
    assert not torch.equal(e0, patch_positions(ids, 6, (40, 60), (11, 20), seed=3, epoch=1))
    assert not torch.equal(e0, pos)


def test_extract_patches_matches_slicing():
    maps = torch.randn(3, 2, 10, 12)
    pos = torch.tensor([[[0, 0], [5, 7]], [[2, 3], [6, 2]], [[1, 7], [0, 0]]])
    patches = extract_patches(maps, pos, (4, 5))
    assert patches.shape == (3, 2, 2, 4, 5)
    for i in range(3):
        for k in range(2):
            r, c = pos[i, k].tolist()
            assert torch.equal(patches[i, k], maps[i, :, r : r + 4, c : c + 5])


def test_loss_map_attack_sums_the_patch_logits():
    torch.manual_seed(0)
    attack = LossMapAttack(SmallCNN(2, width=4), (8, 8), num_patches=3).eval()
    maps = torch.randn(4, 2, 16, 16)
    pos = attack.positions([f"s{i}" for i in range(4)], (16, 16), seed=0)
    with torch.no_grad():
        per_patch = attack.patch_logits(maps, pos)
        image = attack(maps, pos)
        by_hand = torch.stack(
            [
                sum(
                    attack.classifier(maps[i : i + 1, :, r : r + 8, c : c + 8]).squeeze()
                    for r, c in pos[i].tolist()
                )
                for i in range(4)
            ]
        )
    assert per_patch.shape == (4, 3)
    assert torch.allclose(image, per_patch.sum(1))
    assert torch.allclose(image, by_hand, atol=1e-5)


def test_loss_map_features_channels():
    released = torch.softmax(torch.randn(2, 3, 6, 6), 1)
    masks = torch.randint(0, 3, (2, 6, 6))
    masks[0, 0, 0] = 255
    loss = loss_map_features(released, masks, 255)
    assert loss.shape == (2, 1, 6, 6)
    assert torch.allclose(loss[:, 0], cross_entropy_map(released, masks, 255))
    assert loss[0, 0, 0, 0] == 0  # void pixel
    full = loss_map_features(released, masks, 255, ("loss", "map", "mask"))
    assert (
        full.shape
        == (2, 1 + 3 + 3, 6, 6)
        == (2, loss_map_channels(("loss", "map", "mask"), 3), 6, 6)
    )
    assert torch.equal(full[:, 1:4], released)
    assert torch.equal(full[1, 4:].argmax(0), masks[1]) and full[0, 4:, 0, 0].sum() == 0
    assert loss_map_channels(("map", "mask"), 1) == 2  # He et al.'s concatenation, binary task
    with pytest.raises(ValueError, match="parts"):
        loss_map_features(released, masks, 255, ("loss", "logits"))


def make_query(directory, data_dir, conf_members, conf_nonmembers, n=40, size=32, seed=0):
    """A fake model's answers on 2n images: members' logits agree more confidently with the mask."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((2 * n, size, size)) > 0.5).astype(np.uint8)
    images = rng.integers(0, 255, (2 * n, 1, size, size), dtype=np.uint8)
    ids = [f"q{seed}_{i}" for i in range(2 * n)]
    index = pd.DataFrame({"sample_id": ids, "group": ids})
    meta = {"name": "fake", "source": "synthetic_ct", "num_classes": 2, "ignore_index": None}
    write_prepared(data_dir, images, masks, index, meta)
    conf = np.r_[np.full(n, conf_members), np.full(n, conf_nonmembers)][:, None, None]
    logits = (masks * 2.0 - 1.0) * conf + rng.normal(0, 1.5, masks.shape)
    write_npy(directory / "logits.npy", logits[:, None].astype(np.float16))
    member = np.r_[np.ones(n, int), np.zeros(n, int)]
    write_csv(
        directory / "samples.csv",
        pd.DataFrame({"sample_id": ids, "row": np.arange(2 * n), "member": member}),
    )
    return QuerySet(directory, data_dir)


def _fit(shadow, out_dir, spec, device):
    """The loss-map attack fitted on ``shadow`` as the fit step does: (model, inputs, snapshots,
    rows)."""
    torch.manual_seed(7)
    model, inputs = learned_attack(
        "loss_map", RECIPE, shadow.logits.shape, {"type": "none"}, 7, device
    )
    model, snapshots, rows = train_attack(
        model, shadow, inputs, RECIPE, 7, out_dir, spec, device, "attack loss_map"
    )
    return model, inputs, snapshots, rows


def test_loss_map_attack_stays_at_chance_without_a_difference(tmp_path):
    shadow = make_query(tmp_path / "shadow", tmp_path / "shadow_data", 1.5, 1.5, seed=1)
    victim = make_query(tmp_path / "victim", tmp_path / "victim_data", 1.5, 1.5, seed=2)
    device = torch.device("cpu")
    model, inputs, _, _ = _fit(shadow, tmp_path / "attack", {}, device)
    scores = score_attack(model, victim, inputs, device)
    assert 0.3 < roc_metrics(victim.labels, scores)["auc"] < 0.7


def test_loss_map_attack_learns_a_planted_difference(tmp_path):
    started = time.monotonic()
    shadow = make_query(tmp_path / "shadow", tmp_path / "shadow_data", 2.5, 1.0, seed=1)
    victim = make_query(tmp_path / "victim", tmp_path / "victim_data", 2.5, 1.0, seed=2)
    device = torch.device("cpu")
    spec = {"attack": "loss_map", "recipe": RECIPE}
    model, inputs, snapshots, rows = _fit(shadow, tmp_path / "attack", spec, device)
    assert isinstance(model, LossMapAttack) and model.patch_hw == (11, 11)
    assert len(rows) == RECIPE["epochs"] and len(snapshots) == RECIPE["last_k"]
    scores = score_attack(model, victim, inputs, device)
    assert scores.shape == (80,) and scores.dtype == np.float32  # raw logits, not a sigmoid
    assert roc_metrics(victim.labels, scores)["auc"] > 0.8
    # fixed evaluation patches: scoring again gives the same scores
    again = score_attack(model, victim, inputs, device)
    assert np.array_equal(scores, again)
    # the epoch checkpoint resumes: a finished run reloads its last epoch and trains no more
    resumed, _, _, rows_again = _fit(shadow, tmp_path / "attack", spec, device)
    assert rows_again == rows
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert time.monotonic() - started < 20


def test_build_loss_map_attack_with_resnet_on_concatenated_input():
    recipe = {"classifier": "resnet18", "pretrained": False, "num_patches": 2}
    attack = build_loss_map_attack(recipe, loss_map_channels(("loss", "map", "mask"), 1), (64, 48))
    assert attack.patch_hw == (22, 17) and attack.num_patches == 2
    maps = torch.randn(3, 3, 64, 48)
    pos = attack.positions(["a", "b", "c"], (64, 48), seed=0)
    assert attack.eval()(maps, pos).shape == (3,)
