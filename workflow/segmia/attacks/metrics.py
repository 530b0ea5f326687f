"""Attack metrics: score-based ROC metrics and the paper's threshold metrics."""

from __future__ import annotations

import numpy as np

FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``scores`` (higher = more likely a member), all thresholds kept."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is at most ``max_fpr`` (Carlini et al. 2022)."""
    fpr, tpr = roc_curve(labels, scores)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


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


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC-AUC, resampling samples.

    All ``n`` resamples at once: the AUC of a resample is the Mann-Whitney statistic computed
    from (tie-averaged) ranks, which equals sklearn's ``roc_auc_score``.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), (n, len(labels)))
    y, s = labels[idx], scores[idx]
    positives = y.sum(1)
    valid = (positives > 0) & (positives < y.shape[1])
    ranks = rankdata(s[valid], axis=1)
    pos, neg = positives[valid], y.shape[1] - positives[valid]
    auc = ((ranks * y[valid]).sum(1) - pos * (pos + 1) / 2) / (pos * neg)
    lo, hi = np.quantile(auc, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
