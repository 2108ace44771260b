"""Tests of engine/report/bootstrap.py: the intervals against a per-resample loop over
engine.metrics, and the wins rule on constructed cases."""
import math

import numpy as np
import pytest

from engine.cell_files import PREDICTIONS_FILE
from engine.metrics import classification_metrics
from engine.report.bootstrap import (BOOTSTRAP_SAMPLES, Predictions, cell_interval, delta_interval, outcome,
                                     read_predictions, resampled_metric)


def _predictions(rng, labels, hit_rate, classes=3):
    """Predictions that are right with probability `hit_rate`, wrong ones a random other class."""
    wrong = (labels + rng.integers(1, classes, len(labels))) % classes
    return Predictions(labels, np.where(rng.random(len(labels)) < hit_rate, labels, wrong))


def _one_hot(pred, classes=3):
    return np.eye(classes)[pred.preds]


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy"])
def test_resampled_metric_equals_engine_metrics_on_each_resample(metric):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(3, int), rng.integers(1, 3, 37)]  # class 0 rare: some resamples lack it
    pred = _predictions(rng, labels, 0.7)
    indices = rng.integers(0, len(labels), (300, len(labels)))
    assert any(0 not in labels[row] for row in indices)  # the absent-class case is exercised
    expected = [classification_metrics(labels[row], _one_hot(pred)[row])[metric] for row in indices]
    assert resampled_metric(pred, indices, metric) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="auroc"):
        resampled_metric(pred, indices, "auroc")


def test_cell_interval_is_the_percentile_interval_of_the_seeded_resamples():
    rng = np.random.default_rng(1)
    pred = _predictions(rng, rng.integers(0, 3, 50), 0.6)
    draws = np.random.default_rng(5).integers(0, 50, (400, 50))
    values = [classification_metrics(pred.labels[row], _one_hot(pred)[row])["balanced_accuracy"] for row in draws]
    # 400 draws: the reference runs engine.metrics once per draw
    assert cell_interval(pred, "balanced_accuracy", seed=5, samples=400) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    low, high = cell_interval(pred, "accuracy", seed=5)
    assert low < np.mean(pred.preds == pred.labels) < high


def test_delta_interval_pairs_images_and_averages_the_seeds():
    rng = np.random.default_rng(2)
    pairs = []
    for n in (40, 55):  # two seeds, each its own test split
        labels = rng.integers(0, 3, n)
        pairs.append((_predictions(rng, labels, 0.8), _predictions(rng, labels, 0.6)))
    draws = np.random.default_rng(9)
    total = np.zeros(BOOTSTRAP_SAMPLES)
    for own, ft in pairs:  # the reference: one resample of each seed's images per draw, Δ on both cells
        rows = draws.integers(0, len(own.labels), (BOOTSTRAP_SAMPLES, len(own.labels)))
        hits_own = (own.preds[rows] == own.labels[rows]).mean(axis=1)
        hits_ft = (ft.preds[rows] == ft.labels[rows]).mean(axis=1)
        total += hits_own - hits_ft
    expected = tuple(np.percentile(total / 2, [2.5, 97.5]))
    assert delta_interval(pairs, "accuracy", seed=9) == pytest.approx(expected)
    with pytest.raises(ValueError, match="different test images"):
        delta_interval([(pairs[0][0], pairs[1][1])], "accuracy")
    assert all(math.isnan(v) for v in delta_interval([], "accuracy"))


def test_the_pairing_removes_the_shared_image_noise():
    # Two strategies that differ on 20 of 1000 images (the other one is right on them): the paired
    # interval lies above 0 and is about 3x narrower than one cell's own interval (binomial
    # widths: 2 * 1.96 * sqrt(20) / 1000 = 0.018 against 2 * 1.96 * sqrt(0.7 * 0.3 / 1000) = 0.057).
    rng = np.random.default_rng(3)
    ft = _predictions(rng, rng.integers(0, 3, 1000), 0.7)
    wrong = np.flatnonzero(ft.preds != ft.labels)[:20]
    better = Predictions(ft.labels, ft.preds.copy())
    better.preds[wrong] = ft.labels[wrong]
    low, high = delta_interval([(better, ft)], "accuracy")
    assert 0 < low <= 20 / 1000 <= high and outcome(low, high) == "win"
    cell_low, cell_high = cell_interval(ft, "accuracy")
    assert cell_high - cell_low > 2 * (high - low)
    assert outcome(*delta_interval([(ft, better)], "accuracy")) == "loss"
    assert delta_interval([(ft, ft)], "accuracy") == (0.0, 0.0) and outcome(0.0, 0.0) == "tie"


@pytest.mark.parametrize("low, high, expected", [
    (0.001, 0.05, "win"), (-0.05, -0.001, "loss"), (-0.01, 0.03, "tie"), (0.0, 0.02, "tie"), (-0.02, 0.0, "tie"),
    (math.nan, math.nan, "no interval")])
def test_outcome_rule(low, high, expected):
    assert outcome(low, high) == expected


def test_read_predictions_takes_the_argmax_and_is_none_without_the_file(tmp_path):
    assert read_predictions(tmp_path) is None and read_predictions(None) is None
    np.savez(tmp_path / PREDICTIONS_FILE, labels=np.array([0, 2]), probs=np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]))
    pred = read_predictions(tmp_path)
    assert pred.labels.tolist() == [0, 2] and pred.preds.tolist() == [1, 2]
