"""Per-image statistics of a segmentation output, for reference-model attacks (LiRA, RMIA).

Every statistic reduces one image's output map to one number computed from the per-pixel
probability of the true label, p_y, over the image's valid pixels (pixels whose mask equals
``ignore_index`` are left out). Input maps are N x C x H x W: per-pixel probabilities (C = 1: the
sigmoid probability of the foreground; C > 1: a softmax over the classes) or, with
``from_logits=True``, the raw logits, from which log p_y and log(1 - p_y) are computed in the
log domain without the float32 rounding of p_y near 1 (Carlini et al. 2022, Sec. VI-A: the
statistic must be computed "numerically stable"). Masks are N x H x W integer labels.

All statistics are oriented the same way: **higher = the model fits the image better** (higher
confidence, lower loss), which is the direction a member is expected to move. LiRA's online test
does not care about the direction, its offline one-sided test does.

Statistics (``STATISTICS`` maps the config name to the function):

``logit_confidence`` (LiRA's default)
    phi(p_bar) = log(p_bar / (1 - p_bar)) with p_bar the mean of p_y over valid pixels; log p_bar
    and log(1 - p_bar) come from the mean of p_y and the mean of 1 - p_y (the summed probability of
    the other classes), and both are floored at ``eps`` so the value is finite (probabilities:
    1e-12, so |phi| <= 27.6; logits: 1e-300, i.e. no saturation in practice).
``mean_pixel_logit``
    mean over valid pixels of the per-pixel logit-scaled confidence log p_y - log(1 - p_y).
``neg_ce_mean``
    minus the mean per-pixel cross-entropy, i.e. mean log p_y (= -loss).
``neg_loss_q50``, ``neg_loss_q90``, ``neg_loss_q99``
    minus the 0.5 / 0.9 / 0.99 quantile of the per-pixel cross-entropy map -log p_y (the loss
    of the hard pixels).
``neg_loss_fg_mean``
    minus the mean cross-entropy over foreground pixels (label != 0); an image with no foreground
    pixel falls back to the mean over all its valid pixels.
``mean_confidence``
    p_bar itself, in [0, 1]: RMIA's probability-like Pr(x | theta).
``geo_mean_confidence``
    exp(mean log p_y), the per-pixel geometric mean of p_y: the product over pixels
    prod p_y = Pr(mask | image, theta) normalised by the number of pixels, in (0, 1].

An image without any valid pixel has no statistic: its value is NaN (the attacks reject NaN
with a clear error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.losses import one_hot_target

EPS = 1e-12  # floor of probabilities inside logarithms (probability input)
LOGIT_EPS = 1e-300  # the same from logits: only keeps infinities out, no saturation
_QUANTILE_MAX_NUMEL = 1 << 23  # torch.quantile refuses very large inputs: work in row chunks


class PixelConfidence(NamedTuple):
    """Per-pixel log-probability of the true label and of "any other label" (N x H x W, float64)."""

    log_p: torch.Tensor  # log p_y; 0 on void pixels
    log_q: torch.Tensor  # log(1 - p_y); 0 on void pixels
    valid: torch.Tensor  # bool, False on void pixels


def _log_floor(eps: float) -> float:
    return math.log(eps) if eps > 0 else float("-inf")


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def pixel_confidence(
    output,
    masks,
    ignore_index: int | None = None,
    *,
    from_logits: bool = False,
    eps: float | None = None,
) -> PixelConfidence:
    """log p_y and log(1 - p_y) of every pixel (floored at ``log(eps)``), and the valid-pixel mask.

    ``output``: N x C x H x W probabilities, or logits with ``from_logits=True``. ``eps``
    defaults to ``EPS`` (1e-12) for probabilities and ``LOGIT_EPS`` (1e-300) for logits.
    """
    if eps is None:
        eps = LOGIT_EPS if from_logits else EPS
    output, masks = _as_tensor(output).double(), _as_tensor(masks).long()
    n, c = output.shape[:2]
    if masks.shape != (n, *output.shape[2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match output {tuple(output.shape)}")
    target, valid = one_hot_target(masks, c, ignore_index)
    valid = valid[:, 0] > 0
    if c == 1:
        positive = target[:, 0] > 0
        if from_logits:
            signed = torch.where(positive, output[:, 0], -output[:, 0])
            log_p, log_q = F.logsigmoid(signed), F.logsigmoid(-signed)
        else:
            p = torch.where(positive, output[:, 0], 1.0 - output[:, 0])
            log_p, log_q = p.clamp_min(eps).log(), (1.0 - p).clamp_min(eps).log()
    else:
        labels = target.argmax(1, keepdim=True)  # void pixels: class 0, masked out below
        if from_logits:
            log_probs = torch.log_softmax(output, 1)
            log_p = log_probs.gather(1, labels)[:, 0]
            others = log_probs.scatter(1, labels, float("-inf"))
            log_q = torch.logsumexp(others, 1)
        else:
            p = output.gather(1, labels)[:, 0]
            # 1 - p_y as the sum of the other classes keeps its precision when p_y is near 1
            q = output.scatter(1, labels, 0.0).sum(1)
            log_p, log_q = p.clamp_min(eps).log(), q.clamp_min(eps).log()
    floor = _log_floor(eps)
    log_p, log_q = log_p.clamp_min(floor), log_q.clamp_min(floor)
    return PixelConfidence(torch.where(valid, log_p, 0.0), torch.where(valid, log_q, 0.0), valid)


def true_class_probability(
    output, masks, ignore_index: int | None = None, *, from_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_y N x H x W float64, valid N x H x W bool); p_y is 0 on void pixels."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=0.0)
    return torch.where(conf.valid, conf.log_p.exp(), 0.0), conf.valid


def _count(valid: torch.Tensor) -> torch.Tensor:
    """Valid pixels per image; NaN where there are none (so every statistic is NaN there)."""
    count = valid.flatten(1).sum(1).double()
    return torch.where(count > 0, count, torch.full_like(count, float("nan")))


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, values, 0.0).flatten(1).sum(1) / _count(valid)


def _masked_log_mean_exp(log_values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    masked = torch.where(valid, log_values, float("-inf"))
    return torch.logsumexp(masked.flatten(1), 1) - _count(valid).log()


def _out(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy().astype(np.float64)


def logit_confidence(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """phi(p_bar) = log p_bar - log(1 - p_bar), p_bar = mean p_y over valid pixels (N,)."""
    if eps is None:
        eps = LOGIT_EPS if from_logits else EPS
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    floor = _log_floor(eps)
    log_mean_p = _masked_log_mean_exp(conf.log_p, conf.valid).clamp_min(floor)
    log_mean_q = _masked_log_mean_exp(conf.log_q, conf.valid).clamp_min(floor)
    return _out(log_mean_p - log_mean_q)


def mean_pixel_logit(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """Mean over valid pixels of log p_y - log(1 - p_y) (N,)."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    return _out(_masked_mean(conf.log_p - conf.log_q, conf.valid))


def neg_ce_mean(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """Minus the mean per-pixel cross-entropy: mean log p_y over valid pixels (N,)."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    return _out(_masked_mean(conf.log_p, conf.valid))


def mean_confidence(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """p_bar, the mean of p_y over valid pixels, in [0, 1] (N,)."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    return _out(_masked_log_mean_exp(conf.log_p, conf.valid).exp())


def geo_mean_confidence(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """exp(mean log p_y): the product of p_y over pixels, normalised per pixel, in (0, 1] (N,)."""
    return np.exp(neg_ce_mean(output, masks, ignore_index, from_logits=from_logits, eps=eps))


def neg_loss_quantile(
    output, masks, ignore_index=None, *, q: float, from_logits=False, eps=None
) -> np.ndarray:
    """Minus the ``q`` quantile (linear interpolation) of -log p_y over valid pixels (N,)."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    loss = torch.where(conf.valid, -conf.log_p, float("nan"))
    loss = loss.flatten(1)
    rows = max(1, _QUANTILE_MAX_NUMEL // max(1, loss.shape[1]))
    parts = [torch.nanquantile(loss[i : i + rows], q, dim=1) for i in range(0, len(loss), rows)]
    return _out(-torch.cat(parts)) if parts else np.zeros(0)


def neg_loss_fg_mean(output, masks, ignore_index=None, *, from_logits=False, eps=None):
    """Minus the mean -log p_y over foreground pixels (label != 0); all valid pixels if none (N,)."""
    conf = pixel_confidence(output, masks, ignore_index, from_logits=from_logits, eps=eps)
    foreground = conf.valid & (_as_tensor(masks).long() != 0)
    has_fg = foreground.flatten(1).any(1)
    region = torch.where(has_fg[:, None, None], foreground, conf.valid)
    return _out(_masked_mean(conf.log_p, region))


def _quantile(q: float) -> Callable[..., np.ndarray]:
    def statistic(output, masks, ignore_index=None, *, from_logits=False, eps=None):
        return neg_loss_quantile(output, masks, ignore_index, q=q, from_logits=from_logits, eps=eps)

    statistic.__doc__ = f"Minus the {q} quantile of the per-pixel cross-entropy (N,)."
    return statistic


STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "logit_confidence": logit_confidence,
    "mean_pixel_logit": mean_pixel_logit,
    "neg_ce_mean": neg_ce_mean,
    "neg_loss_q50": _quantile(0.5),
    "neg_loss_q90": _quantile(0.9),
    "neg_loss_q99": _quantile(0.99),
    "neg_loss_fg_mean": neg_loss_fg_mean,
    "mean_confidence": mean_confidence,
    "geo_mean_confidence": geo_mean_confidence,
}
"""Config name -> ``fn(output, masks, ignore_index=None, *, from_logits=False) -> (N,) float64``."""

PROBABILITY_STATISTICS = ("mean_confidence", "geo_mean_confidence")
"""The statistics that are probabilities in [0, 1], usable as RMIA's Pr(x | theta)."""


def compute_statistic(
    name: str, output, masks, ignore_index: int | None = None, *, from_logits: bool = False
) -> np.ndarray:
    """The registered statistic ``name`` of every image (N,) float64."""
    try:
        fn = STATISTICS[name]
    except KeyError:
        raise ValueError(
            f"unknown attack statistic {name!r}; choose one of {sorted(STATISTICS)}"
        ) from None
    return fn(output, masks, ignore_index, from_logits=from_logits)


def query_statistic(
    query, name: str, release_spec: dict | None = None, batch_size: int = 64
) -> np.ndarray:
    """The statistic ``name`` of every sample of a ``QuerySet`` (N,).

    Without ``release_spec`` it is computed from the logits (log domain); with one, from the map
    the model releases under that output defence (e.g. argmax or output noise), as an attacker
    who only sees the released map would.
    """
    from .release import release

    out = []
    for start in range(0, len(query), batch_size):
        idx = np.arange(start, min(start + batch_size, len(query)))
        logits, masks, ids = query.batch(idx)
        if release_spec is None:
            out.append(compute_statistic(name, logits, masks, query.ignore_index, from_logits=True))
        else:
            released = release(logits, release_spec, ids)
            out.append(compute_statistic(name, released, masks, query.ignore_index))
    return np.concatenate(out) if out else np.zeros(0)
