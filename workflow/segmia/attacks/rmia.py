"""RMIA, the relative membership inference attack of Zarifzadeh, Liu and Shokri, "Low-Cost
High-Power Membership Inference Attacks" (ICML 2024; reference code privacytrustlab/ml_privacy_meter).

RMIA compares how much more likely the target model makes a candidate x than the reference models
do, against the same ratio for population samples z that nobody attacks:

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],
    Score(x) = fraction of population samples z with LR(x, z) >= gamma.

Pr(. | theta) is a probability-like statistic of one sample under one model. For segmentation we use
the mean per-pixel probability of the true label, p_bar (``statistics.mean_confidence``), or the
product of the per-pixel probabilities, Pr(mask | image) = prod p_y, taken per pixel in log space
as the geometric mean exp(mean log p_y) (``statistics.geo_mean_confidence``; the raw product of
~65k pixels underflows and would be dominated by image size). Both lie in [0, 1], which the offline
approximation below needs. With ``log_space=True`` the inputs are log Pr(. | theta) instead (e.g.
``statistics.neg_ce_mean`` = log of the geometric mean); everything is computed in log space anyway.

Pr(x) = E_theta'[Pr(x | theta')] over reference models:

``online``  the mean over all K references, IN and OUT (paper, Sec. 3).
``offline`` only OUT references exist or are used; with Pr_OUT(x) their mean, the paper's linear
            approximation of the missing IN half is Pr(x) = 1/2 ((1 + a) Pr_OUT(x) + (1 - a)),
            a in [0, 1] (from config; tune it with ``tune_offline_a``). a = 1 uses Pr_OUT(x) alone.
            A sample without any OUT reference falls back to the online estimate, the mean over
            all its references (no linear approximation).

Pr(z) is computed the same way from the population's reference statistics; population samples are
taken as OUT of every reference model unless ``population_keep`` says otherwise.

The n x m comparisons are not materialised: with the population ratios sorted, the count of z with
log LR(x, z) >= log gamma is one binary search per x (``np.searchsorted``), O((n + m) log m) time
and O(n + m) memory. For gamma = 1 this is exactly the pairwise comparison; for other gamma it agrees
up to floating-point rounding of log gamma.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import logsumexp

log = logging.getLogger("segmia")

MODES = ("online", "offline")
TINY = 1e-300  # probabilities are floored here before taking logs


def _log_prob(values, log_space: bool, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all() and not log_space:
        raise ValueError(f"RMIA: non-finite {name} probabilities")
    if np.isnan(values).any():
        raise ValueError(f"RMIA: NaN in {name}")
    if log_space:
        if (values > 1e-9).any():
            raise ValueError(f"RMIA: {name} must be log-probabilities (<= 0) with log_space=True")
        return np.minimum(values, 0.0)
    if (values < 0).any() or (values > 1 + 1e-9).any():
        raise ValueError(
            f"RMIA: {name} must be probabilities in [0, 1] (pass log_space=True for logs)"
        )
    return np.log(np.clip(values, TINY, 1.0))


def _log_mean(log_values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """log of the mean of exp(log_values) over axis 0 where ``use``; NaN where nothing is used."""
    masked = np.where(use, log_values, -np.inf)
    count = use.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = logsumexp(masked, axis=0) - np.log(count)
    return np.where(count > 0, out, np.nan)


def log_marginal(
    reference,
    keep=None,
    *,
    mode: str = "offline",
    a: float = 0.3,
    log_space: bool = False,
    name: str = "candidate",
) -> np.ndarray:
    """log Pr(x) per sample (n,) from reference statistics (K, n) and their ``keep`` (K, n)."""
    log_ref = _log_prob(reference, log_space, name)
    if log_ref.ndim != 2:
        raise ValueError(f"RMIA: {name} statistics must be (K, n), got {log_ref.shape}")
    keep = np.zeros(log_ref.shape, bool) if keep is None else np.asarray(keep, dtype=bool)
    if keep.shape != log_ref.shape:
        raise ValueError(f"RMIA: keep {keep.shape} does not match {name} {log_ref.shape}")
    everything = _log_mean(log_ref, np.ones_like(keep))
    if mode == "online":
        return everything
    if mode != "offline":
        raise ValueError(f"unknown RMIA mode {mode!r}; choose one of {MODES}")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"RMIA: offline a must lie in [0, 1], got {a}")
    log_out = _log_mean(log_ref, ~keep)
    missing = np.isnan(log_out)
    if missing.any():
        log.warning(
            "RMIA: %d %s samples have no OUT reference; Pr(x) falls back to their mean over all "
            "references",
            missing.sum(),
            name,
        )
    if a == 1.0:
        marginal = log_out
    else:
        with np.errstate(invalid="ignore"):
            marginal = np.logaddexp(np.log((1 + a) / 2) + log_out, np.log((1 - a) / 2))
    return np.where(missing, everything, marginal)


def rmia_scores(
    target,
    reference,
    keep,
    population_target,
    population_reference,
    *,
    mode: str = "offline",
    a: float = 0.3,
    gamma: float = 1.0,
    population_keep=None,
    log_space: bool = False,
) -> np.ndarray:
    """RMIA score in [0, 1] of each of n candidates (higher = more likely a member).

    ``target`` (n,): Pr(x | theta) of the attacked model; ``reference`` (K, n): Pr(x | theta_k);
    ``keep`` (K, n) bool: x in reference k's training set (None: all OUT); ``population_target``
    (m,) and ``population_reference`` (K, m): the same for the population samples z.
    """
    if gamma <= 0:
        raise ValueError(f"RMIA: gamma must be positive, got {gamma}")
    options = {"mode": mode, "a": a, "log_space": log_space}
    log_x = _log_prob(target, log_space, "target")
    log_z = _log_prob(population_target, log_space, "population target")
    reference = np.asarray(reference, dtype=np.float64)
    population_reference = np.asarray(population_reference, dtype=np.float64)
    if reference.shape[1:] != log_x.shape or population_reference.shape[1:] != log_z.shape:
        raise ValueError(
            f"RMIA: shapes disagree: target {log_x.shape}, reference {reference.shape}, "
            f"population target {log_z.shape}, population reference {population_reference.shape}"
        )
    if len(log_z) == 0:
        raise ValueError("RMIA needs at least one population sample")
    ratio_x = log_x - log_marginal(reference, keep, **options)
    ratio_z = log_z - log_marginal(
        population_reference, population_keep, name="population", **options
    )
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x - log(gamma)
    counts = np.searchsorted(np.sort(ratio_z), ratio_x - np.log(gamma), side="right")
    return counts / len(ratio_z)


def tune_offline_a(
    reference,
    keep,
    population_reference,
    *,
    grid=None,
    gamma: float = 1.0,
    pseudo_targets=None,
    population_keep=None,
    log_space: bool = False,
) -> tuple[float, dict[float, float]]:
    """Choose the offline ``a`` by attacking reference models with the others (paper, App. B).

    Each model in ``pseudo_targets`` (default: the first) plays the target; its ``keep`` row gives
    the true membership, the remaining models are the references, and only their OUT statistics are
    used, as in the offline attack. Returns the ``a`` of the grid (default 0, 0.1, ..., 1) with the
    highest mean ROC-AUC, and the mean AUC of every grid value.
    """
    from sklearn.metrics import roc_auc_score

    reference = np.asarray(reference, dtype=np.float64)
    population_reference = np.asarray(population_reference, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    if len(reference) < 2:
        raise ValueError("tuning a needs at least two reference models")
    grid = np.round(np.linspace(0, 1, 11), 10) if grid is None else np.asarray(grid, float)
    pseudo_targets = [0] if pseudo_targets is None else list(pseudo_targets)
    aucs = {}
    for a in grid:
        values = []
        for k in pseudo_targets:
            labels = keep[k]
            if labels.all() or not labels.any():
                raise ValueError(f"reference model {k} has only members or only non-members")
            rest = np.arange(len(reference)) != k
            scores = rmia_scores(
                reference[k],
                reference[rest],
                keep[rest],
                population_reference[k],
                population_reference[rest],
                mode="offline",
                a=float(a),
                gamma=gamma,
                population_keep=None if population_keep is None else population_keep[rest],
                log_space=log_space,
            )
            values.append(roc_auc_score(labels, scores))
        aucs[float(a)] = float(np.mean(values))
    best = max(aucs, key=aucs.get)
    return best, aucs
