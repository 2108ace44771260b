import numpy as np
import pytest

from engine.metrics import binary_auroc, classification_metrics


def _auroc_by_pairs(scores, positives):
    """Slow definition: the share of (positive, negative) pairs ranked right, ties half."""
    pos, neg = scores[positives], scores[~positives]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def _reference(labels, probs):
    k = probs.shape[1]
    preds = probs.argmax(1)
    cm = np.zeros((k, k), int)
    for t, p in zip(labels, preds):
        cm[t, p] += 1
    recalls, f1s = [], []
    for c in range(k):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        if tp + fn:
            recalls.append(tp / (tp + fn))
        if tp + fn or tp + fp:
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    n = len(labels)
    po = np.trace(cm) / n
    pe = sum(cm[c].sum() * cm[:, c].sum() for c in range(k)) / n ** 2
    aurocs = [_auroc_by_pairs(probs[:, c], labels == c) for c in range(k) if 0 < (labels == c).sum() < n]
    return {"accuracy": po, "balanced_accuracy": np.mean(recalls), "macro_f1": np.mean(f1s),
            "kappa": (po - pe) / (1 - pe), "auroc": np.mean(aurocs), "confusion_matrix": cm.tolist()}


# Seeded, and the binary case and a class absent from the labels (but scored) by construction.
@pytest.mark.parametrize("trial, k, absent", [(0, 2, False), (1, 3, False), (2, 5, False), (3, 3, True), (4, 4, True)])
def test_metrics_match_slow_reference_on_random_predictions(trial, k, absent):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(20, 200))
    labels = rng.integers(0, k - 1 if absent else k, n)
    probs = rng.dirichlet(np.ones(k), n)
    half = rng.random(n) < 0.5
    probs[half] = np.round(probs[half], 1)  # plant tied scores
    got, want = classification_metrics(labels, probs), _reference(labels, probs)
    assert got["confusion_matrix"] == want["confusion_matrix"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "kappa", "auroc"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_metrics_perfect_predictions_score_one():
    labels = np.array([0, 1, 2, 2, 1, 0])
    probs = np.eye(3)[labels] * 0.9 + 0.05
    got = classification_metrics(labels, probs)
    assert got["accuracy"] == got["balanced_accuracy"] == got["macro_f1"] == got["kappa"] == got["auroc"] == 1.0


def test_auroc_is_nan_when_one_class_is_absent():
    assert np.isnan(binary_auroc(np.array([0.1, 0.9]), np.array([True, True])))
