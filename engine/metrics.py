"""Classification metrics of the protocol: accuracy, balanced accuracy, macro F1,
macro one-vs-rest AUROC, Cohen's kappa and the confusion matrix (spec: Shared protocol)."""
from __future__ import annotations

import numpy as np

METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "kappa")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def binary_auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted half; NaN if one class."""
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores, so ties contribute one half.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Metrics of predicted class probabilities.

    Args:
        labels: (N,) int true classes.
        probs: (N, C) float class probabilities (softmax outputs).

    Returns:
        The METRIC_NAMES as floats, plus 'confusion_matrix' as a list of lists. AUROC averages the
        classes present with both positives and negatives (NaN when none is).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, num_classes)
    total = cm.sum()
    true_per_class, pred_per_class, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    present = true_per_class > 0
    recall = np.divide(hits, true_per_class, out=np.zeros(num_classes), where=present)
    precision = np.divide(hits, pred_per_class, out=np.zeros(num_classes), where=pred_per_class > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=(precision + recall) > 0)
    observed = hits.sum() / total
    expected = (true_per_class * pred_per_class).sum() / total ** 2
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 0.0
    aurocs = [binary_auroc(probs[:, c], labels == c) for c in range(num_classes)]
    defined = [a for a in aurocs if not np.isnan(a)]
    return {
        "accuracy": float(observed),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present | (pred_per_class > 0)].mean()),
        "auroc": float(np.mean(defined)) if defined else float("nan"),
        "kappa": float(kappa),
        "confusion_matrix": cm.tolist(),
    }
