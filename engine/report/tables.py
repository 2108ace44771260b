"""The report's tables (summary, wins, cost, cells) from the loaded cells, their CSV files, and
report.md rendered from them."""
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
    """Per strategy: over the (dataset, backbone) cases it shares with FT, how often its mean is
    above FT's (wins), equal within TIE_TOLERANCE (ties) or below (losses), per metric, and the mean Δ."""
    rows = []
    for strategy in sorted({r["strategy"] for r in summary} - {BASELINE}):
        cases = [r for r in summary if r["strategy"] == strategy and not math.isnan(r["accuracy_delta_vs_ft"])]
        row = {"strategy": strategy, "cases": len(cases)}
        for m in METRICS:
            deltas = [r[f"{m}_delta_vs_ft"] for r in cases]
            row[f"{m}_wins"] = sum(d > TIE_TOLERANCE for d in deltas)
            row[f"{m}_ties"] = sum(abs(d) <= TIE_TOLERANCE for d in deltas)
            row[f"{m}_losses"] = sum(d < -TIE_TOLERANCE for d in deltas)
            row[f"{m}_mean_delta"] = float(np.mean(deltas)) if deltas else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["accuracy_wins"], r["strategy"]))


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


def cell_rows(cells: list[Cell]) -> list[dict]:
    return [{"cell_id": c.key.cell_id, **c.key._asdict(), "status": c.status,
             **{m: c.test.get(m, "") for m in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "kappa")},
             "best_epoch": c.best_epoch, "train_s": c.train_s, "failed_attempts": c.attempts, "reason": c.reason}
            for c in cells]


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                          for k, v in r.items()} for r in rows)


def _num(value, fmt: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]


def _class_counts_line(cells: list[Cell], dataset: str) -> list[str]:
    """Images per class and split of a dataset (from its first done cell that recorded them), so
    that balanced accuracy is read next to the imbalance it corrects for."""
    cell = next((c for c in cells if c.key.dataset == dataset and c.class_counts), None)
    if cell is None:
        return []
    splits = list(cell.class_counts)
    per_class = [f"{name} {'/'.join(str(cell.class_counts[s][i]) for s in splits)}" for i, name in enumerate(cell.classes)]
    return [f"Images per class ({'/'.join(splits)}): " + ", ".join(per_class) + ".", ""]


def _dataset_section(dataset: str, summary: list[dict], figures: list[Path], counts: list[str] = ()) -> list[str]:
    rows = [r for r in summary if r["dataset"] == dataset]
    best = {b: max(r["accuracy_mean"] for r in rows if r["backbone"] == b) for b in {r["backbone"] for r in rows}}
    table = []
    for r in rows:
        cells = [r["backbone"], r["strategy"], r["seeds"]]
        for m in METRICS:
            mean = _num(r[f"{m}_mean"]) + ("" if math.isnan(r[f"{m}_std"]) else f" ± {_num(r[f'{m}_std'])}")
            if m == "accuracy" and r[f"{m}_mean"] == best[r["backbone"]]:
                mean = f"**{mean}**"
            p = r[f"{m}_p_t"]
            cells += [mean, _num(r[f"{m}_delta_vs_ft"], "+.3f"), "<0.001" if p < 0.001 else _num(p, ".3f")]
        table.append(cells + [_num(r["train_s_mean"], ".1f")])
    header = ["backbone", "strategy", "seeds", "acc", "Δ acc", "p", "bal. acc", "Δ bal. acc", "p", "train s"]
    heatmap = [f"![Δ accuracy vs FT, {dataset}]({f.name})" for f in figures if f.name == f"heatmap_{dataset}.png"]
    return [f"## {dataset}", "", *counts, *_table(header, table), *heatmap, ""]


def render_markdown(name: str, run_dir: Path, cells: list[Cell], summary: list[dict], wins: list[dict],
                    cost: list[dict], figures: list[Path]) -> str:
    """report.md: the headline wins, one table per dataset, cost, failures and figures."""
    counts = {s: sum(c.status == s for c in cells) for s in ("done", "failed", "unfinished", "not started")}
    lines = [f"# medft report: {name}", "",
             f"Run folder `{run_dir}`: {len(cells)} cells; " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
             "", "Test metrics, mean ± sample std over seeds. Δ = strategy mean − FT mean on the same dataset and "
             "backbone. p = two-sided paired t-test over the seeds both ran (summary.csv also has the exact "
             "sign-flip test). Best accuracy per dataset and backbone in bold.", "",
             "## Wins against FT", "", "(dataset, backbone) cases where the strategy's mean beats FT's.", ""]
    lines += _table(["strategy", "cases", "acc wins/ties/losses", "mean Δ acc", "bal. acc wins/ties/losses",
                     "mean Δ bal. acc"],
                    [[w["strategy"], w["cases"]] + [x for m in METRICS for x in (
                        f"{w[f'{m}_wins']}/{w[f'{m}_ties']}/{w[f'{m}_losses']}", _num(w[f"{m}_mean_delta"], "+.3f"))]
                     for w in wins])
    for dataset in sorted({r["dataset"] for r in summary}):
        lines += _dataset_section(dataset, summary, figures, _class_counts_line(cells, dataset))
    backbones = sorted(k[len("train_s_mean_"):] for k in (cost[0] if cost else {}) if k.startswith("train_s_mean_"))
    lines += ["## Cost (device-seconds per cell)", ""]
    lines += _table(["strategy", "cells", *backbones, "mean", "total device-h", "vs FT"],
                    [[r["strategy"], r["cells"], *(_num(r[f"train_s_mean_{b}"], ".1f") for b in backbones),
                      _num(r["train_s_mean"], ".1f"), _num(r["device_h_total"], ".3f"), _num(r["vs_ft"], ".2f")]
                     for r in cost])
    failed = [c for c in cells if c.status == "failed"]
    if failed:
        lines += ["## Failed cells", ""]
        lines += _table(["cell", "failed attempts", "reason"],
                        [[c.key.cell_id, c.attempts, c.reason.replace("|", "\\|").replace("\n", " ")] for c in failed])
    waiting = [c.key.cell_id for c in cells if c.status in ("unfinished", "not started")]
    if waiting:
        lines += ["## Unfinished cells", "", ", ".join(waiting), ""]
    curves = [f"![learning curves, {f.stem[7:]}]({f.name})" for f in figures if f.stem.startswith("curves_")]
    if curves:
        lines += ["## Learning curves (validation accuracy per epoch, mean over seeds)", "", *curves, ""]
    return "\n".join(lines)
