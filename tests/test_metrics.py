"""Losses and metrics against the reference libraries and hand-computed values."""

import numpy as np
import pytest
import torch
from segmia.attacks.metrics import bootstrap_cis, roc_metrics, threshold_metrics, tpr_at_fpr
from segmia.models.losses import DiceLoss, cross_entropy_map, per_image_dice_loss, probabilities
from segmia.models.metrics import SegmentationScores


@pytest.mark.parametrize(("channels", "ignore"), [(1, None), (1, 255), (5, None), (5, 255)])
def test_dice_loss_equals_smp(channels, ignore):
    from segmentation_models_pytorch.losses import DiceLoss as SmpDiceLoss

    torch.manual_seed(0)
    logits = torch.randn(6, channels, 9, 7)
    high = 2 if channels == 1 else channels
    masks = torch.randint(0, high, (6, 9, 7))
    masks[0] = 0  # an image without foreground
    if ignore is not None:
        masks[:, :2] = ignore
    mode = "binary" if channels == 1 else "multiclass"
    reference = SmpDiceLoss(mode, from_logits=True, ignore_index=ignore)
    assert torch.allclose(DiceLoss(ignore)(logits, masks), reference(logits, masks), atol=1e-6)
    per_image = per_image_dice_loss(probabilities(logits), masks, ignore)
    expected = torch.stack([reference(logits[i : i + 1], masks[i : i + 1]) for i in range(6)])
    assert torch.allclose(per_image, expected, atol=1e-6)


def test_cross_entropy_map_by_hand():
    probs = torch.tensor([[[[0.9, 0.2]]]])  # binary, 1 x 1 x 1 x 2
    masks = torch.tensor([[[1, 0]]])
    ce = cross_entropy_map(probs, masks, None)
    assert torch.allclose(ce, torch.tensor([[[-np.log(0.9), -np.log(0.8)]]], dtype=torch.float32))
    ce = cross_entropy_map(probs, torch.tensor([[[1, 255]]]), 255)
    assert ce[0, 0, 1] == 0


def test_segmentation_scores_by_hand():
    # prediction covers 2 pixels, truth 3 pixels, overlap 2 -> Dice 4/5, IoU 2/3
    logits = torch.full((1, 1, 2, 2), -5.0)
    logits[0, 0, 0, :] = 5.0
    masks = torch.tensor([[[1, 1], [1, 0]]])
    scores = SegmentationScores(None)
    scores.update(logits, masks)
    result = scores.result()
    assert result["dice"] == pytest.approx(0.8)
    assert result["iou"] == pytest.approx(2 / 3)


def test_roc_metrics_by_hand():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.05])
    # pairs (member, non-member) ordered correctly: 3 + 3 + 2 + 2 = 14 of 16 -> AUC 0.875
    metrics = roc_metrics(labels, scores)
    assert metrics["auc"] == pytest.approx(14 / 16)
    # no false positive allowed: threshold above 0.7 catches 2 of 4 members
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(0.5)
    assert metrics["tpr_at_0.1pct_fpr"] == pytest.approx(0.5)
    assert tpr_at_fpr(labels, scores, 0.25) == pytest.approx(1.0)


def test_threshold_metrics_by_hand():
    labels = np.array([1, 1, 0, 0, 0, 0])
    predictions = np.array([1, 0, 1, 0, 0, 0])
    m = threshold_metrics(labels, predictions)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.75) / 2)


def test_bootstrap_ci_brackets_the_auc():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(200)]
    scores = labels * 0.5 + rng.normal(size=400)
    auc = roc_metrics(labels, scores)["auc"]
    cis = bootstrap_cis(labels, scores, n=300)
    lo, hi = cis["auc_ci_low"], cis["auc_ci_high"]
    assert lo < auc < hi and hi - lo < 0.2
