"""Scores that do not saturate, and intervals at the membership unit."""

import numpy as np
import pytest
import torch
from segmia.attacks.classifier import score_attack
from segmia.attacks.metrics import bootstrap_cis, roc_curve, roc_metrics, tpr_at_fpr


class _Planted(torch.nn.Module):
    """A 'classifier' whose logit is its input (planted scores)."""

    def forward(self, x):
        return x.flatten(1)[:, 0] * 1.0


def _planted_logits(rng):
    # 1000 non-members: N(0, 1), 15 of them far out (18..25: sigmoid saturates in float32)
    non = np.r_[rng.normal(0, 1, 985), np.linspace(18, 25, 15)]
    # 1000 members: 310 beyond every non-member (30..60), the rest like non-members
    mem = np.r_[np.linspace(30, 60, 310), rng.normal(0, 1, 690)]
    return np.r_[mem, non].astype(np.float32), np.r_[np.ones(1000), np.zeros(1000)].astype(int)


def test_attack_scores_are_float32_logits_that_keep_a_planted_tpr_at_0_1pct_fpr():
    logits, labels = _planted_logits(np.random.default_rng(0))

    class Query:
        def __len__(self):
            return len(logits)

    def inputs(query, idx, _):
        return (torch.from_numpy(logits[idx]).view(-1, 1, 1, 1),)

    scores = score_attack(_Planted(), Query(), inputs, torch.device("cpu"), batch_size=128)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, logits)  # the logit itself, no transform
    # no two distinct planted logits share a stored score
    assert len(np.unique(scores)) == len(np.unique(logits))
    assert roc_metrics(labels, scores)["tpr_at_0.1pct_fpr"] == pytest.approx(0.31)
    # what a float32 sigmoid would have reported: the top scores tie at 1.0 with 15 non-members
    saturated = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert tpr_at_fpr(labels, saturated, 0.001) == 0.0


def test_tpr_at_fpr_equals_sklearns_roc_curve_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 300)
        scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # many ties
        fpr, tpr = roc_curve(labels, scores)  # sklearn, every threshold
        for level in (0.01, 0.05, 0.2):
            expected = tpr[fpr <= level + 1e-12].max() if (fpr <= level + 1e-12).any() else 0.0
            assert tpr_at_fpr(labels, scores, level) == pytest.approx(expected)


def test_bootstrap_at_the_membership_unit_is_wider_when_groups_drive_the_scores():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(20), 50)
    labels = (groups % 2 == 0).astype(int)  # membership by group (10 + 10 patients)
    effect = rng.normal(0, 1, 20)[groups]  # scores differ by patient, not by membership
    scores = effect + 0.1 * rng.normal(0, 1, len(groups))
    by_sample = bootstrap_cis(labels, scores, n=400, seed=0)
    by_group = bootstrap_cis(labels, scores, n=400, seed=0, groups=groups)
    width = {
        name: cis["auc_ci_high"] - cis["auc_ci_low"]
        for name, cis in (("sample", by_sample), ("group", by_group))
    }
    assert width["group"] > 3 * width["sample"]
    assert by_group["auc_ci_low"] < 0.5 < by_group["auc_ci_high"]  # no membership signal
    for key in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
        assert 0 <= by_group[f"{key}_ci_low"] <= by_group[f"{key}_ci_high"] <= 1


def test_bootstrap_of_a_clear_separation_excludes_chance_at_either_unit():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(60), 10)
    labels = (groups % 2 == 0).astype(int)
    scores = labels * 2.0 + rng.normal(0, 1, len(groups))
    for g in (None, groups):
        cis = bootstrap_cis(labels, scores, n=300, seed=0, groups=g)
        assert cis["auc_ci_low"] > 0.8
