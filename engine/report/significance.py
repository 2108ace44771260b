"""The report's uncertainty and significance: per-cell and Δ bootstrap intervals (bootstrap.py),
and across the (dataset, backbone) cases the Friedman test with average ranks and Nemenyi CD and
each strategy's Holm-corrected Wilcoxon test against FT (stats.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.cell_files import CellKey
from engine.report.bootstrap import (BOOTSTRAP_METRICS, Predictions, cell_interval, delta_interval, outcome,
                                     read_predictions)
from engine.report.cells import Cell
from engine.report.stats import Friedman, friedman, holm, wilcoxon_p
from engine.report.tables import BASELINE


def load_predictions(cells: list[Cell]) -> dict[CellKey, Predictions]:
    """The saved test predictions of the done cells that have them."""
    found = {c.key: read_predictions(c.folder) for c in cells if c.status == "done"}
    return {key: pred for key, pred in found.items() if pred is not None}


def cell_intervals(predictions: dict[CellKey, Predictions]) -> dict[CellKey, dict[str, tuple[float, float]]]:
    """Per cell with predictions, per metric, its bootstrap interval."""
    return {key: {m: cell_interval(pred, m) for m in BOOTSTRAP_METRICS} for key, pred in predictions.items()}


def add_seed_interval_widths(summary: list[dict], intervals: dict[CellKey, dict[str, tuple[float, float]]]) -> None:
    """Adds to each summary row, per metric, the mean half-width of its seeds' cell intervals
    (`{m}_seed_ci_halfwidth`, NaN when no seed has one): the test set's noise on one seed."""
    for row in summary:
        case = (row["dataset"], row["backbone"], row["strategy"])
        mine = [v for k, v in intervals.items() if (k.dataset, k.backbone, k.strategy) == case]
        for m in BOOTSTRAP_METRICS:
            widths = [(high - low) / 2 for low, high in (v[m] for v in mine)]
            row[f"{m}_seed_ci_halfwidth"] = float(np.mean(widths)) if widths else math.nan


def add_delta_intervals(summary: list[dict], predictions: dict[CellKey, Predictions]) -> None:
    """Adds to each non-FT summary row, per metric, the paired bootstrap interval of Δ vs FT
    (`{m}_delta_low/high`), the seeds it pairs (`delta_seeds`) and its `{m}_outcome`."""
    for row in summary:
        if row["strategy"] == BASELINE:
            continue
        case = (row["dataset"], row["backbone"], row["strategy"])
        keys = sorted(k for k in predictions if (k.dataset, k.backbone, k.strategy) == case)
        pairs = [(predictions[k], predictions[k._replace(strategy=BASELINE)]) for k in keys
                 if k._replace(strategy=BASELINE) in predictions]
        pairs = [(own, ft) for own, ft in pairs if np.array_equal(own.labels, ft.labels)]  # same test images
        row["delta_seeds"] = len(pairs)
        for m in BOOTSTRAP_METRICS:
            low, high = delta_interval(pairs, m)
            row[f"{m}_delta_low"], row[f"{m}_delta_high"] = low, high
            row[f"{m}_outcome"] = outcome(low, high)


@dataclass(frozen=True)
class AcrossCases:
    """One metric's tests over the (dataset, backbone) cases on which every strategy has a result."""

    metric: str
    cases: list[tuple[str, str]]
    strategies: list[str]
    scores: np.ndarray  # cases x strategies: the seed-mean test metric
    friedman: Friedman | None
    wilcoxon: list[dict]  # per strategy other than FT: p and Holm-adjusted p against FT


def across_cases(summary: list[dict], metric: str) -> AcrossCases:
    """The Friedman test, ranks and CD, and the Wilcoxon tests vs FT with Holm, for `metric`."""
    strategies = sorted({r["strategy"] for r in summary}, key=lambda s: (s != BASELINE, s))
    means = {(r["dataset"], r["backbone"], r["strategy"]): r[f"{metric}_mean"] for r in summary}
    cases = sorted({(d, b) for d, b, _ in means if all((d, b, s) in means for s in strategies)})
    scores = np.array([[means[d, b, s] for s in strategies] for d, b in cases], np.float64).reshape(
        len(cases), len(strategies))
    rows = []
    if BASELINE in strategies:
        ft = scores[:, strategies.index(BASELINE)]
        for j, strategy in enumerate(strategies):
            if strategy != BASELINE:
                rows.append({"metric": metric, "strategy": strategy, "cases": len(cases),
                             "median_delta": float(np.median(scores[:, j] - ft)) if cases else math.nan,
                             "p": wilcoxon_p(scores[:, j], ft) if cases else math.nan})
        for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
            row["p_holm"] = adjusted
    return AcrossCases(metric, cases, strategies, scores, friedman(strategies, scores), rows)


def friedman_rows(tests: list[AcrossCases]) -> list[dict]:
    """friedman.csv: one row per metric and strategy with its average rank and the test."""
    rows = []
    for t in tests:
        if t.friedman is None:
            continue
        f = t.friedman
        rows += [{"metric": t.metric, "strategy": s, "average_rank": rank, "cases": f.cases, "chi2": f.statistic,
                  "p": f.p, "nemenyi_cd": f.cd} for s, rank in zip(f.strategies, f.ranks)]
    return rows
