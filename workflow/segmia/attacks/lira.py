"""LiRA, the likelihood-ratio attack of Carlini et al., "Membership Inference Attacks From First
Principles" (IEEE S&P 2022; reference code tensorflow/privacy research/mi_lira_2021).

Inputs, all statistics oriented "higher = better fit" (see ``segmia.attacks.statistics``):

``target``    (n,) or (n, A): the attacked model's statistic on n candidate samples (A queries per
              sample, e.g. augmentations; the score is averaged over them as in the reference code).
``reference`` (K, n) or (K, n, A): the statistics of K reference (shadow) models on the same samples.
``keep``      (K, n) bool: sample j was in reference model k's training set (IN), else OUT.

For every sample (and query) a Gaussian is fitted to its IN and to its OUT reference statistics:
location = mean (the Gaussian's maximum-likelihood fit; ``location="median"`` is the reference code's
robust choice), scale = standard deviation with ddof 0 (``np.std``, as the reference code).

``online``  score = log N(x; mu_in, sigma_in^2) - log N(x; mu_out, sigma_out^2) (paper, Alg. 1).
``offline`` only the OUT fit. The paper's one-sided test is Lambda = Pr[Z < x], Z ~ N(mu_out,
            sigma_out^2): a member's statistic is expected to lie *above* the OUT distribution.
            The score returned is its log-odds, log Phi(z) - log Phi(-z) with z = (x - mu_out) /
            sigma_out: the same ranking as Lambda (so the same ROC), but it neither saturates at 0 for
            strong members nor underflows for clear non-members (computed with ``log_ndtr``).
            ``offline_test="two_sided"`` is the reference code's choice instead, -log N(x; mu_out,
            sigma_out^2) (a sample far from its OUT distribution in either direction is a member).

``fix_variance=True``: one global variance per group instead of per-sample variances (the paper's
recommendation for few reference models): the pooled within-sample variance, i.e. the squared
deviations of every IN (resp. OUT) statistic from its own sample's mean, summed over all samples and
divided by the number of statistics. (The reference code instead takes ``np.std`` of all IN
statistics, which adds the spread *between* samples, and uses it for OUT as well.)

Fallbacks, so that every sample gets a finite score:

* a sample with fewer than ``min_count`` (2) references in a group uses that group's pooled standard
  deviation (its location still comes from the one reference it has);
* a sample with no IN reference (online) gets mu_in = mu_out + d, and one with no OUT reference gets
  mu_out = mu_in - d, where d is the mean of mu_in - mu_out over the samples that have both; their
  scale is the pooled one. Without any sample that has both, a missing group is an error;
* if no sample has ``min_count`` references in a group, the pooled deviation is taken around the
  group's overall mean instead (the reference code's global variance);
* every standard deviation is floored at ``min_std``.

The target model must not be among the references (the caller excludes it).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

log = logging.getLogger("segmia")

MODES = ("online", "offline")


@dataclass(frozen=True)
class GaussianFit:
    """Per-sample Gaussian of one group (IN or OUT) of reference statistics, shapes (n, A)."""

    mean: np.ndarray  # location (mean or median); NaN where the sample has no reference
    std: np.ndarray  # standard deviation used for scoring (fallbacks and floor applied)
    count: np.ndarray  # number of references per sample, (n,)
    pooled_std: float  # the group's global standard deviation (NaN if not estimable)


def _as_3d(target, reference, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    target = np.asarray(target, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    if target.ndim == 1:
        target = target[:, None]
    if reference.ndim == 2:
        reference = reference[:, :, None]
    if target.ndim != 2 or reference.ndim != 3:
        raise ValueError(
            f"expected target (n,) or (n, A) and reference (K, n) or (K, n, A); got "
            f"{target.shape} and {reference.shape}"
        )
    if reference.shape[1:] != target.shape or keep.shape != reference.shape[:2]:
        raise ValueError(
            f"shapes disagree: target {target.shape}, reference {reference.shape}, "
            f"keep {keep.shape} (expected target (n, A), reference (K, n, A), keep (K, n))"
        )
    for name, values in (("target", target), ("reference", reference)):
        bad = ~np.isfinite(values)
        if bad.any():
            samples = np.flatnonzero(bad.reshape(-1, *target.shape).any(axis=(0, 2)))
            raise ValueError(
                f"LiRA: non-finite {name} statistics for {len(samples)} samples (first positions "
                f"{samples[:5].tolist()}); an image without valid pixels has no statistic"
            )
    return target, reference, keep


def fit_group(
    reference: np.ndarray,
    member: np.ndarray,
    *,
    fix_variance: bool = False,
    location: str = "mean",
    min_count: int = 2,
    min_std: float = 1e-4,
) -> GaussianFit:
    """Fit the group ``member`` (K, n bool) of ``reference`` (K, n, A) sample by sample."""
    if location not in ("mean", "median"):
        raise ValueError(f"location must be 'mean' or 'median', not {location!r}")
    mask = np.broadcast_to(member[:, :, None], reference.shape)
    values = np.where(mask, reference, np.nan)
    count = member.sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: samples without refs
        mean = np.nanmean(values, axis=0)
        loc = mean if location == "mean" else np.nanmedian(values, axis=0)
        per_sample = np.sqrt(np.nanmean((values - mean) ** 2, axis=0))
    enough = count >= min_count
    if enough.any():
        deviations = (values - mean)[:, enough]
        pooled = float(np.sqrt(np.nanmean(deviations**2)))
    elif mask.any():
        pooled = float(np.nanstd(values))
    else:
        pooled = float("nan")
    std = per_sample if not fix_variance else np.full_like(loc, pooled)
    std = np.where(enough[:, None], std, pooled)
    return GaussianFit(loc, np.maximum(std, min_std), count, pooled)


def _fill_missing(fit: GaussianFit, other: GaussianFit, shift: np.ndarray, name: str) -> np.ndarray:
    """Location of ``fit``, with samples lacking references set to other's location + shift."""
    missing = fit.count == 0
    if not missing.any():
        return fit.mean
    if np.isnan(shift).any() or np.isnan(fit.pooled_std):
        raise ValueError(
            f"LiRA: {missing.sum()} samples have no {name} reference model and no sample has both "
            f"IN and OUT references to estimate the {name} distribution from"
        )
    log.warning(
        "LiRA: %d of %d samples have no %s reference; their %s mean is estimated from the mean "
        "IN-OUT shift",
        missing.sum(),
        len(missing),
        name,
        name,
    )
    return np.where(missing[:, None], other.mean + shift, fit.mean)


def _mean_shift(fit_in: GaussianFit, fit_out: GaussianFit) -> np.ndarray:
    both = (fit_in.count > 0) & (fit_out.count > 0)
    if not both.any():
        return np.full(fit_in.mean.shape[1], np.nan)
    return (fit_in.mean[both] - fit_out.mean[both]).mean(0)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_online(
    target,
    reference,
    keep,
    *,
    fix_variance: bool = False,
    location: str = "mean",
    min_count: int = 2,
    min_std: float = 1e-4,
) -> np.ndarray:
    """Online LiRA: log N(x; mu_in, sigma_in^2) - log N(x; mu_out, sigma_out^2) per sample (n,)."""
    target, reference, keep = _as_3d(target, reference, keep)
    options = {
        "fix_variance": fix_variance,
        "location": location,
        "min_count": min_count,
        "min_std": min_std,
    }
    fit_in = fit_group(reference, keep, **options)
    fit_out = fit_group(reference, ~keep, **options)
    shift = _mean_shift(fit_in, fit_out)
    mean_in = _fill_missing(fit_in, fit_out, shift, "IN")
    mean_out = _fill_missing(fit_out, fit_in, -shift, "OUT")
    score = _log_normal_pdf(target, mean_in, fit_in.std) - _log_normal_pdf(
        target, mean_out, fit_out.std
    )
    return score.mean(1)


def lira_offline(
    target,
    reference,
    keep=None,
    *,
    fix_variance: bool = False,
    location: str = "mean",
    min_count: int = 2,
    min_std: float = 1e-4,
    offline_test: str = "one_sided",
) -> np.ndarray:
    """Offline LiRA from the OUT references only (n,); higher = more likely a member.

    ``keep=None``: no reference model trained on any candidate (all references are OUT).
    """
    reference = np.asarray(reference, dtype=np.float64)
    if keep is None:
        keep = np.zeros(reference.shape[:2], dtype=bool)
    target, reference, keep = _as_3d(target, reference, keep)
    if offline_test not in ("one_sided", "two_sided"):
        raise ValueError(f"offline_test must be 'one_sided' or 'two_sided', not {offline_test!r}")
    options = {
        "fix_variance": fix_variance,
        "location": location,
        "min_count": min_count,
        "min_std": min_std,
    }
    fit_out = fit_group(reference, ~keep, **options)
    if (fit_out.count == 0).any():
        fit_in = fit_group(reference, keep, **options)
        mean_out = _fill_missing(fit_out, fit_in, -_mean_shift(fit_in, fit_out), "OUT")
    else:
        mean_out = fit_out.mean
    if offline_test == "two_sided":
        score = -_log_normal_pdf(target, mean_out, fit_out.std)
    else:
        z = (target - mean_out) / fit_out.std
        score = log_ndtr(z) - log_ndtr(-z)
    return score.mean(1)


def lira_scores(target, reference, keep, *, mode: str = "online", **options) -> np.ndarray:
    """LiRA scores (n,) in ``mode`` ``online`` or ``offline``; options as in those functions."""
    if mode == "online":
        return lira_online(target, reference, keep, **options)
    if mode == "offline":
        return lira_offline(target, reference, keep, **options)
    raise ValueError(f"unknown LiRA mode {mode!r}; choose one of {MODES}")
