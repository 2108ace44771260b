"""The report's tables (summary, wins, cost, cells) from the loaded cells, and their CSV files."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from engine.report.cells import Cell
from engine.report.stats import TIE_TOLERANCE, paired_t_p, sign_flip_p

METRICS = ("accuracy", "balanced_accuracy")
BASELINE = "ft"


def summarize(cells: list[Cell]) -> list[dict]:
    """One row per (dataset, backbone, strategy) with done seeds: means, stds, Δ and p vs FT."""
    done = [c for c in cells if c.status == "done"]
    groups: dict[tuple, dict[int, Cell]] = {}
    for c in done:
        groups.setdefault((c.key.dataset, c.key.backbone, c.key.strategy), {})[c.key.seed] = c
    rows = []
    for (dataset, backbone, strategy), by_seed in groups.items():
        base = groups.get((dataset, backbone, BASELINE), {})
        row = {"dataset": dataset, "backbone": backbone, "strategy": strategy, "seeds": len(by_seed)}
        for m in METRICS:
            values = np.array([c.test[m] for c in by_seed.values()], np.float64)
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            shared = sorted(set(by_seed) & set(base))
            own = np.array([by_seed[s].test[m] for s in shared])
            ref = np.array([base[s].test[m] for s in shared])
            baseline = strategy == BASELINE or not base
            mean_ft = np.mean([c.test[m] for c in base.values()]) if base else math.nan
            row[f"{m}_delta_vs_ft"] = math.nan if baseline else float(row[f"{m}_mean"] - mean_ft)
            row[f"{m}_p_t"] = math.nan if baseline else paired_t_p(own, ref)
            row[f"{m}_p_signflip"] = math.nan if baseline else sign_flip_p(own, ref)
        costs = [c.train_s for c in by_seed.values() if c.train_s is not None]
        row["train_s_mean"] = float(np.mean(costs)) if costs else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (r["dataset"], r["backbone"], r["strategy"] != BASELINE, r["strategy"]))


def wins_table(summary: list[dict]) -> list[dict]:
    """Per strategy, over the (dataset, backbone) cases it shares with FT, per metric: wins, ties
    and losses by the rule of bootstrap.outcome (the Δ interval above, around or below 0), the
    cases without an interval (no saved predictions), how often its mean is above FT's at all
    (`mean_higher`) and the mean Δ."""
    rows = []
    for strategy in sorted({r["strategy"] for r in summary} - {BASELINE}):
        cases = [r for r in summary if r["strategy"] == strategy and not math.isnan(r["accuracy_delta_vs_ft"])]
        row = {"strategy": strategy, "cases": len(cases)}
        for m in METRICS:
            deltas = [r[f"{m}_delta_vs_ft"] for r in cases]
            outcomes = [r.get(f"{m}_outcome", "no interval") for r in cases]
            for name, count in (("wins", "win"), ("ties", "tie"), ("losses", "loss"), ("no_interval", "no interval")):
                row[f"{m}_{name}"] = outcomes.count(count)
            row[f"{m}_mean_higher"] = sum(d > TIE_TOLERANCE for d in deltas)
            row[f"{m}_mean_delta"] = float(np.mean(deltas)) if deltas else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["accuracy_wins"], r["accuracy_losses"], r["strategy"]))


def cost_table(cells: list[Cell]) -> list[dict]:
    """Device-seconds per cell (train_s) by strategy and backbone, and each strategy's total."""
    done = [c for c in cells if c.status == "done" and c.train_s is not None]
    rows = []
    for strategy in sorted({c.key.strategy for c in done}):
        mine = [c for c in done if c.key.strategy == strategy]
        row = {"strategy": strategy, "cells": len(mine), "train_s_mean": float(np.mean([c.train_s for c in mine])),
               "device_h_total": sum(c.train_s for c in mine) / 3600}
        for backbone in sorted({c.key.backbone for c in done}):
            per = [c.train_s for c in mine if c.key.backbone == backbone]
            row[f"train_s_mean_{backbone}"] = float(np.mean(per)) if per else math.nan
        rows.append(row)
    ft = next((r["train_s_mean"] for r in rows if r["strategy"] == BASELINE), math.nan)
    for row in rows:
        row["vs_ft"] = row["train_s_mean"] / ft if ft else math.nan
    return rows


def cell_rows(cells: list[Cell], intervals: dict | None = None) -> list[dict]:
    """cells.csv: every cell's status, test metrics and, where it has one, its bootstrap interval per metric."""
    intervals = intervals or {}
    return [{"cell_id": c.key.cell_id, **c.key._asdict(), "status": c.status,
             **{m: c.test.get(m, "") for m in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "kappa")},
             **{f"{m}_{end}": bound for m, (low, high) in intervals.get(c.key, {}).items()
                for end, bound in (("low", low), ("high", high))},
             "best_epoch": c.best_epoch, "train_s": c.train_s, "failed_attempts": c.attempts, "reason": c.reason}
            for c in cells]


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                          for k, v in r.items()} for r in rows)
