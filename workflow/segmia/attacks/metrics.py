"""Attack metrics: score-based ROC metrics and the paper's threshold metrics."""

from __future__ import annotations

import numpy as np

FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``scores`` (higher = more likely a member), all thresholds kept."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def _roc_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """For each row of sample ``weights`` (R x n): the members' and the non-members' weight at
    each distinct score in descending order (ties as one threshold), and their running sums (the
    weight scored at or above each score): (pos_at, neg_at, tp, fp), each R x distinct scores."""
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_at = np.add.reduceat(w * y, starts, axis=1)
    neg_at = np.add.reduceat(w * (1 - y), starts, axis=1)
    return pos_at, neg_at, np.cumsum(pos_at, axis=1), np.cumsum(neg_at, axis=1)


def _tpr_at(tp: np.ndarray, fp: np.ndarray, max_fpr: float) -> np.ndarray:
    """Per row of running sums (``_roc_counts``): the highest TPR over thresholds whose FPR is at
    most ``max_fpr`` (0 where none is)."""
    ok = fp / np.maximum(fp[:, -1:], 1) <= max_fpr + 1e-12
    return np.where(ok, tp, 0).max(axis=1) / np.maximum(tp[:, -1], 1)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is at most ``max_fpr`` (Carlini et al. 2022): every
    distinct score a threshold (ties as one)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    _, _, tp, fp = _roc_counts(labels, scores, np.ones((1, len(scores))))
    return float(_tpr_at(tp, fp, max_fpr)[0])


def roc_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    out = {"auc": float(roc_auc_score(labels, scores))}
    for key, level in FPR_LEVELS.items():
        out[key] = tpr_at_fpr(labels, scores, level)
    return out


def threshold_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 and balanced accuracy of hard member (1) / non-member (0) predictions."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    labels = np.asarray(labels).astype(int)
    predictions = np.asarray(predictions).astype(int)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1_score(labels, predictions, zero_division=0.0)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
    }


def bootstrap_cis(
    labels: np.ndarray,
    scores: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
    fpr_levels: dict[str, float] = FPR_LEVELS,
) -> dict[str, float]:
    """Percentile bootstrap confidence intervals of the ROC-AUC and of the TPR at each of
    ``fpr_levels`` (none: the AUC's alone).

    Resamples the membership unit: whole ``groups`` (patients, cities: every sample of a drawn
    group comes along, a cluster bootstrap), or samples where ``groups`` is None (each sample its
    own group). Samples of one group share more than membership, so resampling them one by one
    would make the interval too narrow. A resample with only members or only non-members is
    skipped.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    group_of = np.unique(groups, return_inverse=True)[1].reshape(-1)
    n_groups = int(group_of.max()) + 1
    rng = np.random.default_rng(seed)
    # one draw per resample, as the resamples were once drawn one by one (the same intervals)
    drawn = np.stack([rng.integers(0, n_groups, n_groups) for _ in range(n)])
    aucs, tprs = [], {key: [] for key in fpr_levels}
    chunk = max(1, 2_000_000 // max(len(scores), 1))  # resamples at once: bounded memory
    for first in range(0, n, chunk):
        # a resample as weights: each sample counts as often as its group was drawn
        rows = drawn[first : first + chunk]
        counts = np.zeros((len(rows), n_groups))
        np.add.at(counts, (np.arange(len(rows))[:, None], rows), 1)
        pos_at, neg_at, tp, fp = _roc_counts(labels, scores, counts[:, group_of])
        pos, neg = tp[:, -1], fp[:, -1]
        kept = (pos > 0) & (neg > 0)  # a resample of members alone or non-members alone: skipped
        tp, fp, pos_at, neg_at, pos, neg = (a[kept] for a in (tp, fp, pos_at, neg_at, pos, neg))
        # AUC (Mann-Whitney, ties count half): each member against the non-members below it
        aucs.extend((pos_at * (neg[:, None] - fp + neg_at / 2)).sum(axis=1) / (pos * neg))
        for key, max_fpr in fpr_levels.items():
            tprs[key].extend(_tpr_at(tp, fp, max_fpr))
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out = dict(zip(("auc_ci_low", "auc_ci_high"), map(float, np.quantile(aucs, q)), strict=True))
    for key, values in tprs.items():
        low, high = np.quantile(values, q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(low), float(high)
    return out


def resolvable_fpr(n_nonmembers: int) -> float:
    """The smallest non-zero FPR an MIA set can show: one false positive."""
    return 1.0 / max(int(n_nonmembers), 1)


# --- null control -------------------------------------------------------------------------------


def null_halves(groups: np.ndarray, seed: int) -> np.ndarray:
    """Each sample's half (1 or 0) in a seeded random split of its groups into two halves.

    Whole groups go to one half (the membership unit never straddles the halves); groups are
    taken in a random order and each joins the half with fewer samples so far, so the halves are
    about equally large. The split depends only on the set of groups and the seed.
    """
    groups = np.asarray(groups).astype(str)
    uniq, group_of, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    half_of_group = np.zeros(len(uniq), int)
    counts = [0, 0]
    for g in np.random.default_rng(seed).permutation(len(uniq)):
        half = int(counts[1] < counts[0])
        half_of_group[g] = half
        counts[half] += sizes[g]
    return half_of_group[group_of]


def null_control(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    n: int = 1000,
) -> tuple[dict, np.ndarray | None]:
    """The attack's scores on two halves of the non-members: (metrics, each non-member's half).

    The non-members' groups (patients, cities; samples when ``groups`` is None) are split at
    random into two halves (``null_halves``); the AUC of half 1 against half 0, with the same
    cluster bootstrap as the attack's own AUC, is what the attack "finds" between two sets of
    non-members that differ only in their groups. A null interval that excludes 0.5 says the
    scores separate groups, so an attack AUC of that size is no evidence of membership.
    Fewer than two non-member groups: NaN metrics and no halves.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    out = labels == 0
    g = np.arange(len(labels))[out] if groups is None else np.asarray(groups)[out]
    n_groups = len(set(g.tolist()))
    if n_groups < 2:
        nan = float("nan")
        return {
            "null_auc": nan,
            "null_auc_ci_low": nan,
            "null_auc_ci_high": nan,
            "null_groups": n_groups,
            "null_excludes_chance": False,
        }, None
    halves = null_halves(g, seed)
    s = np.asarray(scores, dtype=np.float64)[out]
    cis = bootstrap_cis(halves, s, n=n, seed=seed, groups=g, fpr_levels={})
    low, high = cis["auc_ci_low"], cis["auc_ci_high"]
    return {
        "null_auc": float(roc_auc_score(halves, s)),
        "null_auc_ci_low": low,
        "null_auc_ci_high": high,
        "null_groups": n_groups,
        "null_excludes_chance": bool(low > 0.5 or high < 0.5),
    }, halves
