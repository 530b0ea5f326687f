"""Scores that do not saturate, and intervals at the membership unit."""

import numpy as np
import pandas as pd
import pytest
import torch
from segmia.attacks.classifier import score_attack
from segmia.attacks.metrics import (
    FPR_LEVELS,
    bootstrap_cis,
    null_control,
    null_halves,
    roc_curve,
    roc_metrics,
    tpr_at_fpr,
)


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


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_bootstrap_equals_recomputing_every_resample(ties, grouped):
    """The vectorised cluster bootstrap (resamples as group weights) gives exactly the intervals
    of drawing each resample's groups and recomputing AUC (sklearn) and TPR@FPR on it."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 150)
    scores = rng.normal(size=150) + 0.6 * labels
    scores = np.round(scores, 1) if ties else scores
    groups = rng.integers(0, 12, 150) if grouped else None
    got = bootstrap_cis(labels, scores, n=300, seed=5, groups=groups)

    units = np.arange(150) if groups is None else groups
    uniq, unit_of = np.unique(units, return_inverse=True)
    draws = np.random.default_rng(5)
    aucs, tprs = [], {key: [] for key in FPR_LEVELS}
    for _ in range(300):
        drawn = draws.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([np.flatnonzero(unit_of == g) for g in drawn])
        y, s = labels[idx], scores[idx]
        if y.min() == y.max():
            continue
        aucs.append(roc_auc_score(y, s))
        for key, level in FPR_LEVELS.items():
            tprs[key].append(tpr_at_fpr(y, s, level))
    q = [0.025, 0.975]
    assert [got["auc_ci_low"], got["auc_ci_high"]] == pytest.approx(np.quantile(aucs, q), abs=1e-12)
    for key, values in tprs.items():
        want = np.quantile(values, q)
        assert [got[f"{key}_ci_low"], got[f"{key}_ci_high"]] == pytest.approx(want, abs=1e-12)


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


# --- null control -------------------------------------------------------------------------------


def test_null_halves_keep_groups_whole_balance_sizes_and_ignore_sample_order():
    rng = np.random.default_rng(5)
    groups = np.repeat([f"p{i}" for i in range(11)], rng.integers(1, 9, 11))
    halves = null_halves(groups, seed=3)
    frame = pd.DataFrame({"group": groups, "half": halves})
    assert (frame.groupby("group")["half"].nunique() == 1).all()  # no group in both halves
    sizes = frame["half"].value_counts()
    assert set(sizes.index) == {0, 1} and abs(sizes[0] - sizes[1]) <= 8  # one group at most
    shuffled = rng.permutation(len(groups))  # the same groups in another order: the same split
    again = null_halves(groups[shuffled], seed=3)
    assert dict(zip(groups[shuffled], again, strict=True)) == dict(zip(groups, halves, strict=True))
    assert not np.array_equal(halves, null_halves(groups, seed=4))  # another seed, another split


def test_null_control_scores_only_non_members_and_flags_a_split_the_scores_separate():
    groups = np.repeat(np.arange(24), 5)
    labels = (groups < 12).astype(int)  # members: the first 12 patients
    halves = null_halves(groups[labels == 0], seed=7)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, len(groups))
    # the scores tell the two halves' patients apart: the null must find it and flag it
    shifted = noise.copy()
    shifted[labels == 0] += 3.0 * halves
    null, got = null_control(labels, shifted, groups, seed=7)
    np.testing.assert_array_equal(got, halves)
    assert null["null_auc"] > 0.9 and null["null_auc_ci_low"] > 0.5
    assert null["null_excludes_chance"] and null["null_groups"] == 12
    # members do not enter: changing their scores changes nothing
    moved = shifted.copy()
    moved[labels == 1] += 100.0
    assert null_control(labels, moved, groups, seed=7)[0] == null
    # independent noise: the null interval contains chance
    clean, _ = null_control(labels, noise, groups, seed=7)
    assert clean["null_auc_ci_low"] < 0.5 < clean["null_auc_ci_high"]
    assert not clean["null_excludes_chance"]
    # one non-member group cannot be split
    single = np.where(labels == 0, 99, groups)
    empty, none = null_control(labels, noise, single, seed=7)
    assert none is None and np.isnan(empty["null_auc"]) and not empty["null_excludes_chance"]


def test_a_null_resampled_by_group_is_calibrated_where_one_resampled_by_sample_is_not():
    """Patients differ (a random effect per patient) and membership does nothing: a null interval
    over groups excludes 0.5 about 5 % of the time; one over samples far more often."""
    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(16), 8)
    exclude = {"group": 0, "sample": 0}
    runs = 40
    for run in range(runs):
        scores = rng.normal(0, 1, 16)[groups] + 0.2 * rng.normal(0, 1, len(groups))
        halves = null_halves(groups, seed=run)
        for unit, g in (("group", groups), ("sample", None)):
            cis = bootstrap_cis(halves, scores, n=200, seed=run, groups=g)
            exclude[unit] += not cis["auc_ci_low"] < 0.5 < cis["auc_ci_high"]
    assert exclude["group"] / runs <= 0.12, exclude
    assert exclude["sample"] >= 3 * max(exclude["group"], 2), exclude
