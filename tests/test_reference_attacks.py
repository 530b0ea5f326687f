"""Per-image statistics, LiRA and RMIA against hand-computed values and a simulated population of
reference models with a planted membership effect."""

import math

import numpy as np
import pytest
import torch
from segmia.attacks.lira import fit_group, lira_offline, lira_online, lira_scores
from segmia.attacks.metrics import roc_metrics
from segmia.attacks.rmia import log_marginal, rmia_scores, tune_offline_a
from segmia.attacks.statistics import (
    PROBABILITY_STATISTICS,
    STATISTICS,
    compute_statistic,
    logit_confidence,
    query_statistic,
    true_class_probability,
)


def log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


def std_normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ---------------------------------------------------------------- statistics


def binary_case():
    """One 2 x 2 binary image: p(fg) per pixel, labels, one void pixel."""
    probs = torch.tensor([[[[0.9, 0.2], [0.6, 0.5]]]], dtype=torch.float64)
    masks = torch.tensor([[[1, 0], [1, 255]]])
    return probs, masks  # p_y on valid pixels: 0.9, 0.8, 0.6


def test_true_class_probability_binary_and_void():
    probs, masks = binary_case()
    p_y, valid = true_class_probability(probs, masks, 255)
    assert valid.tolist() == [[[True, True], [True, False]]]
    assert torch.allclose(p_y[valid], torch.tensor([0.9, 0.8, 0.6], dtype=torch.float64))
    assert p_y[0, 1, 1] == 0


def test_statistics_by_hand_binary():
    probs, masks = binary_case()
    p = np.array([0.9, 0.8, 0.6])
    p_bar = p.mean()
    losses = -np.log(p)  # sorted: l(0.9) < l(0.8) < l(0.6)
    expected = {
        "logit_confidence": math.log(p_bar / (1 - p_bar)),
        "mean_pixel_logit": np.mean(np.log(p / (1 - p))),
        "neg_ce_mean": -losses.mean(),
        "neg_loss_q50": math.log(0.8),  # median loss = -log 0.8
        # 0.9 quantile, linear interpolation at position 0.9 * 2 = 1.8 of the sorted losses
        "neg_loss_q90": -(losses[1] + 0.8 * (losses[2] - losses[1])),
        "neg_loss_q99": -(losses[1] + 0.98 * (losses[2] - losses[1])),
        "neg_loss_fg_mean": (math.log(0.9) + math.log(0.6)) / 2,  # pixels labelled 1
        "mean_confidence": p_bar,
        "geo_mean_confidence": (0.9 * 0.8 * 0.6) ** (1 / 3),
    }
    assert set(expected) == set(STATISTICS)
    for name, value in expected.items():
        assert compute_statistic(name, probs, masks, 255)[0] == pytest.approx(value, rel=1e-9)


def test_statistics_by_hand_multiclass_and_from_logits():
    # 1 image, 3 classes, 1 x 2 pixels; true labels 2 and 0
    probs = torch.tensor([[[[0.1, 0.7]], [[0.2, 0.2]], [[0.7, 0.1]]]], dtype=torch.float64)
    masks = torch.tensor([[[2, 0]]])
    p_bar = (0.7 + 0.7) / 2
    assert logit_confidence(probs, masks)[0] == pytest.approx(math.log(p_bar / (1 - p_bar)))
    assert compute_statistic("neg_loss_fg_mean", probs, masks)[0] == pytest.approx(math.log(0.7))
    # the same numbers from logits (log-domain path)
    logits = torch.log(probs) + 3.0
    for name in STATISTICS:
        a = compute_statistic(name, probs, masks)
        b = compute_statistic(name, logits, masks, from_logits=True)
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), name


def test_logit_confidence_from_logits_does_not_saturate():
    logits = torch.full((1, 1, 4, 4), 40.0)
    masks = torch.ones(1, 4, 4, dtype=torch.long)
    # every pixel has p_y = sigmoid(40): phi(p_bar) = 40 exactly; from float32 probs it saturates
    assert logit_confidence(logits, masks, from_logits=True)[0] == pytest.approx(40.0)
    assert np.isfinite(logit_confidence(torch.sigmoid(logits), masks)[0])


def test_image_without_valid_pixels_gives_nan_and_probability_statistics_are_probabilities():
    probs = torch.rand(2, 1, 3, 3)
    masks = torch.randint(0, 2, (2, 3, 3))
    masks[1] = 255
    for name in STATISTICS:
        values = compute_statistic(name, probs, masks, 255)
        assert np.isfinite(values[0]) and np.isnan(values[1]), name
    for name in PROBABILITY_STATISTICS:
        assert 0 <= compute_statistic(name, probs, masks, 255)[0] <= 1
    with pytest.raises(ValueError, match="unknown attack statistic"):
        compute_statistic("nope", probs, masks)


# ---------------------------------------------------------------- LiRA by hand

# K = 4 reference models, 2 samples.
# sample 0: IN {3, 4} (mean 3.5, std 0.5), OUT {1, 2} (mean 1.5, std 0.5)
# sample 1: IN {4, 2} (mean 3, std 1),     OUT {0, 2} (mean 1, std 1)
REFERENCE = np.array([[3.0, 0.0], [4.0, 4.0], [1.0, 2.0], [2.0, 2.0]])
KEEP = np.array([[True, False], [True, True], [False, True], [False, False]])
TARGET = np.array([2.0, 3.0])


def test_lira_online_by_hand():
    scores = lira_online(TARGET, REFERENCE, KEEP)
    # sample 0: log N(2; 3.5, .25) - log N(2; 1.5, .25) = -0.5*(1.5/.5)^2 + 0.5*(0.5/.5)^2 = -4
    # sample 1: log N(3; 3, 1) - log N(3; 1, 1) = 0 + 0.5 * 2^2 = 2
    assert scores == pytest.approx([-4.0, 2.0])
    assert lira_scores(TARGET, REFERENCE, KEEP, mode="online") == pytest.approx(scores)


def test_lira_online_fixed_variance_by_hand():
    # pooled IN variance: squared deviations (.25, .25, 1, 1) / 4 = 0.625; OUT the same
    var = 0.625
    expected = [
        log_normal(2, 3.5, var) - log_normal(2, 1.5, var),
        log_normal(3, 3.0, var) - log_normal(3, 1.0, var),
    ]
    assert lira_online(TARGET, REFERENCE, KEEP, fix_variance=True) == pytest.approx(expected)
    assert expected == pytest.approx([-1.6, 3.2])


def test_lira_offline_by_hand():
    # one-sided: log-odds of Phi(z), z = (x - mu_out) / sigma_out = (2 - 1.5)/.5 = 1 and (3 - 1)/1 = 2
    one_sided = lira_offline(TARGET, REFERENCE, KEEP)
    expected = [math.log(std_normal_cdf(z) / std_normal_cdf(-z)) for z in (1.0, 2.0)]
    assert one_sided == pytest.approx(expected, rel=1e-9)
    # two-sided (reference code): -log N(x; mu_out, sigma_out^2)
    two_sided = lira_offline(TARGET, REFERENCE, KEEP, offline_test="two_sided")
    assert two_sided == pytest.approx([-log_normal(2, 1.5, 0.25), -log_normal(3, 1.0, 1.0)])
    # all references OUT (keep=None): every reference statistic is an OUT one
    all_out = lira_offline(TARGET, REFERENCE)
    mu, sd = REFERENCE.mean(0), REFERENCE.std(0)
    z = (TARGET - mu) / sd
    assert all_out == pytest.approx([math.log(std_normal_cdf(v) / std_normal_cdf(-v)) for v in z])


def test_lira_one_sided_offline_score_is_finite_in_both_tails():
    reference = np.zeros((4, 3)) + np.array([[0.0], [0.1], [-0.1], [0.05]])
    scores = lira_offline(np.array([-1e3, 0.0, 1e3]), reference)
    assert np.isfinite(scores).all() and scores[0] < scores[1] < scores[2]


def test_lira_median_location_and_augmentations():
    reference = np.array([[1.0], [2.0], [9.0], [5.0], [6.0], [7.0]])
    keep = np.array([[True], [True], [True], [False], [False], [False]])
    fit = fit_group(reference[:, :, None], keep, location="median")
    assert fit.mean[0, 0] == 2.0 and fit.count[0] == 3
    assert fit.std[0, 0] == pytest.approx(np.std([1.0, 2.0, 9.0]))
    # A = 2 queries per sample: the score is the mean of the per-query scores
    target2 = np.array([[2.0, 3.0]])
    reference2 = np.stack([REFERENCE[:, :1], REFERENCE[:, :1] + 1], axis=2)
    keep2 = KEEP[:, :1]
    per_query = [lira_online(target2[:, a], reference2[:, :, a], keep2)[0] for a in range(2)]
    assert lira_online(target2, reference2, keep2)[0] == pytest.approx(np.mean(per_query))


def test_lira_fallbacks_for_samples_without_in_or_few_references():
    # sample 2 has no IN reference: mu_in = mu_out + mean shift of samples 0 and 1 (2 and 2 -> 2),
    # sigma_in = pooled IN std (sqrt .625); its OUT fit is its own: mean 5.75, var .3125
    reference = np.c_[REFERENCE, [5.0, 5.5, 6.0, 6.5]]
    keep = np.c_[KEEP, [False] * 4]
    scores = lira_online(np.r_[TARGET, 7.0], reference, keep)
    assert scores[:2] == pytest.approx([-4.0, 2.0])
    assert scores[2] == pytest.approx(log_normal(7, 7.75, 0.625) - log_normal(7, 5.75, 0.3125))
    # a sample with a single IN reference keeps that location but takes the pooled IN std
    keep_one = keep.copy()
    keep_one[0, 2] = True  # sample 2: IN {5}, OUT {5.5, 6, 6.5}
    fit = fit_group(reference[:, :, None], keep_one)
    assert fit.mean[2, 0] == 5.0 and fit.std[2, 0] == pytest.approx(math.sqrt(0.625))
    # no sample with both groups: the missing IN distribution cannot be estimated
    with pytest.raises(ValueError, match="no IN reference"):
        lira_online(TARGET, REFERENCE, np.zeros_like(KEEP))
    with pytest.raises(ValueError, match="non-finite target"):
        lira_online(np.array([np.nan, 1.0]), REFERENCE, KEEP)
    with pytest.raises(ValueError, match="unknown LiRA mode"):
        lira_scores(TARGET, REFERENCE, KEEP, mode="both")


# ---------------------------------------------------------------- RMIA by hand

# Pr(x | theta) of the target on 2 candidates; 2 references; population of 3.
X_TARGET = np.array([0.8, 0.3])
X_REFERENCE = np.array([[0.4, 0.3], [0.6, 0.9]])
X_KEEP = np.array([[False, False], [False, True]])
Z_TARGET = np.array([0.5, 0.2, 0.9])
Z_REFERENCE = np.array([[0.5, 0.1, 0.7], [0.5, 0.3, 0.9]])


def test_rmia_offline_by_hand():
    # a = 0.5: Pr(x) = 0.5 * (1.5 * Pr_OUT(x) + 0.5)
    # x0: Pr_OUT = mean(.4, .6) = .5 -> Pr(x) = .625, ratio .8/.625 = 1.28
    # x1: Pr_OUT = .3 (its only OUT reference) -> Pr(x) = .475, ratio .3/.475 = .6316
    # z: Pr_OUT = (.5, .2, .8) -> Pr(z) = (.625, .4, .85), ratios (.8, .5, 1.0588)
    assert np.exp(log_marginal(X_REFERENCE, X_KEEP, a=0.5)) == pytest.approx([0.625, 0.475])
    scores = rmia_scores(X_TARGET, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE, a=0.5, gamma=1.0)
    # x0: LR = 1.6, 2.56, 1.209 -> 3/3; x1: LR = .789, 1.263, .597 -> 1/3
    assert scores == pytest.approx([1.0, 1 / 3])
    scores = rmia_scores(X_TARGET, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE, a=0.5, gamma=1.5)
    # x0: 1.6 >= 1.5, 2.56 >= 1.5, 1.209 < 1.5 -> 2/3; x1: none -> 0
    assert scores == pytest.approx([2 / 3, 0.0])


def test_rmia_online_and_limits_of_a_by_hand():
    # online: Pr(x) = mean of all references: (.5, .6) -> ratios (1.6, .5);
    # Pr(z) = (.5, .2, .8) -> ratios (1, 1, 1.125)
    scores = rmia_scores(
        X_TARGET, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE, mode="online", gamma=1.5
    )
    # x0: LR = 1.6, 1.6, 1.422 -> 2/3; x1: LR = .5, .5, .444 -> 0
    assert scores == pytest.approx([2 / 3, 0.0])
    # a = 1: Pr(x) = Pr_OUT(x); a = 0: Pr(x) = (Pr_OUT(x) + 1) / 2
    assert np.exp(log_marginal(X_REFERENCE, X_KEEP, a=1.0)) == pytest.approx([0.5, 0.3])
    assert np.exp(log_marginal(X_REFERENCE, X_KEEP, a=0.0)) == pytest.approx([0.75, 0.65])


def test_rmia_log_space_equals_probability_space_and_validates():
    kwargs = {"a": 0.5, "gamma": 1.5}
    prob = rmia_scores(X_TARGET, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE, **kwargs)
    logs = rmia_scores(
        np.log(X_TARGET),
        np.log(X_REFERENCE),
        X_KEEP,
        np.log(Z_TARGET),
        np.log(Z_REFERENCE),
        log_space=True,
        **kwargs,
    )
    assert prob == pytest.approx(logs)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        rmia_scores(X_TARGET * 2, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE)
    with pytest.raises(ValueError, match="a must lie"):
        rmia_scores(X_TARGET, X_REFERENCE, X_KEEP, Z_TARGET, Z_REFERENCE, a=1.5)


def test_rmia_matches_the_pairwise_comparison():
    rng = np.random.default_rng(0)
    x, ref = rng.random(50), rng.random((4, 50))
    z, zref = rng.random(70), rng.random((4, 70))
    keep = rng.random((4, 50)) < 0.5
    keep[:, 0] = True  # a sample without OUT reference: falls back to the mean of all
    out_mean = (ref * ~keep).sum(0) / np.maximum((~keep).sum(0), 1)
    px = np.where(keep.all(0), ref.mean(0), 0.5 * (1.3 * out_mean + 0.7))
    for gamma in (0.7, 1.0, 1.7):
        scores = rmia_scores(x, ref, keep, z, zref, a=0.3, gamma=gamma)
        pz = 0.5 * (1.3 * zref.mean(0) + 0.7)
        lr = (x / px)[:, None] / (z / pz)[None, :]
        assert scores == pytest.approx((lr >= gamma).mean(1)), gamma


# ---------------------------------------------------------------- simulation


def simulate(delta, n=400, m=300, k=16, seed=0):
    """K reference models and a target; each candidate is IN for exactly half of the references.

    statistic = difficulty of the sample (shared by all models) + delta if the model trained on it
    + model noise. Probabilities for RMIA: sigmoid of the statistic.
    """
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(1.0, 2.0, n)
    keep = np.zeros((k, n), dtype=bool)
    for j in range(n):
        keep[rng.permutation(k)[: k // 2], j] = True
    member = rng.permutation(np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)])
    noise = 0.5
    reference = difficulty + delta * keep + rng.normal(0, noise, (k, n))
    target = difficulty + delta * member + rng.normal(0, noise, n)
    z_difficulty = rng.normal(1.0, 2.0, m)
    z_reference = z_difficulty + rng.normal(0, noise, (k, m))
    z_target = z_difficulty + rng.normal(0, noise, m)
    return member, target, reference, keep, z_target, z_reference


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def attack_aucs(delta):
    member, target, reference, keep, z_target, z_reference = simulate(delta)
    out = {
        "lira_online": lira_online(target, reference, keep),
        "lira_online_fixed": lira_online(target, reference, keep, fix_variance=True),
        "lira_offline": lira_offline(target, reference, keep),
        "lira_offline_fixed": lira_offline(target, reference, keep, fix_variance=True),
        "rmia_online": rmia_scores(
            sigmoid(target),
            sigmoid(reference),
            keep,
            sigmoid(z_target),
            sigmoid(z_reference),
            mode="online",
        ),
        "rmia_offline": rmia_scores(
            sigmoid(target),
            sigmoid(reference),
            keep,
            sigmoid(z_target),
            sigmoid(z_reference),
            mode="offline",
            a=0.3,
        ),
        "global": target,
    }
    return {name: roc_metrics(member, scores)["auc"] for name, scores in out.items()}


def test_reference_attacks_detect_a_planted_member_effect():
    aucs = attack_aucs(delta=1.0)
    for name in ("lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed"):
        assert aucs[name] > 0.85, (name, aucs)
    for name in ("rmia_online", "rmia_offline"):
        assert aucs[name] > 0.8, (name, aucs)
    # per-sample calibration is the point: a global threshold on the statistic is much weaker
    assert aucs["global"] < aucs["lira_online"] - 0.1


def test_reference_attacks_stay_at_chance_without_a_member_effect():
    aucs = attack_aucs(delta=0.0)
    for name, auc in aucs.items():
        assert 0.4 < auc < 0.6, (name, aucs)


def test_tune_offline_a_on_a_reference_model():
    _, _, reference, keep, _, z_reference = simulate(1.0, n=200, m=100, k=8, seed=1)
    best, aucs = tune_offline_a(
        sigmoid(reference), keep, sigmoid(z_reference), pseudo_targets=[0, 1]
    )
    assert sorted(aucs) == pytest.approx(np.linspace(0, 1, 11))
    assert aucs[best] == max(aucs.values()) and aucs[best] > 0.75


class StubQuery:
    """What ``query_statistic`` reads of a ``QuerySet``: length, ignore index and batches."""

    def __init__(self, logits, masks):
        self.logits, self.masks, self.ignore_index = logits, masks, 255

    def __len__(self):
        return len(self.logits)

    def batch(self, idx):
        return self.logits[idx], self.masks[idx], [f"s{i}" for i in idx]


def test_query_statistic_from_logits_or_from_the_released_map():
    torch.manual_seed(0)
    logits = torch.randn(7, 1, 5, 5) * 3
    masks = torch.randint(0, 2, (7, 5, 5))
    masks[:, 0, 0] = 255
    query = StubQuery(logits, masks)
    direct = compute_statistic("logit_confidence", logits, masks, 255, from_logits=True)
    assert query_statistic(query, "logit_confidence", batch_size=3) == pytest.approx(direct)
    released = query_statistic(query, "mean_confidence", {"type": "none"}, batch_size=3)
    assert released == pytest.approx(
        compute_statistic("mean_confidence", torch.sigmoid(logits), masks, 255), rel=1e-6
    )
    hard = query_statistic(query, "mean_confidence", {"type": "argmax"})
    expected = ((logits[:, 0] > 0).long() == masks).float()[masks != 255].reshape(7, 24).mean(1)
    assert hard == pytest.approx(expected.numpy())
