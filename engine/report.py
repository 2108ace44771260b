"""`medft report RUN_DIR`: the study's tables and figures from a grid's cell folders.

Reads every cell's result.json (and failure.json) under RUN_DIR and writes, into RUN_DIR/report:
- report.md: per dataset, each backbone x strategy's test accuracy and balanced accuracy as mean
  ± sample std (ddof=1) over seeds, the difference of means to FT on the same dataset and
  backbone (Δ), and a paired test over the seeds both ran; how many (dataset, backbone) cases
  each strategy wins against FT (the study's headline measure); the cost per cell in
  device-seconds (result.json's train_s); failed and unfinished cells with their reasons.
- cells.csv, summary.csv, wins.csv, cost.csv, failures.csv: the same numbers, unrounded.
- heatmap_<dataset>.png and curves_<dataset>.png (engine/report_plots.py).
Paired tests, both two-sided, on the per-seed differences d: Student's t (df = n - 1) and the
exact sign-flip permutation test (with 3 seeds its smallest possible p is 0.25).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from engine.cell_files import FAILURE_FILE, GRID_FILE, REPORT_DIR, RESULT_FILE, CellKey, parse_cell_id
from engine.grid_config import cell_keys, grid_from_dict

METRICS = ("accuracy", "balanced_accuracy")
BASELINE = "ft"
TIE_TOLERANCE = 1e-9  # means of count ratios closer than this differ only by float rounding
_LABELS = {"accuracy": "acc", "balanced_accuracy": "bal. acc"}


@dataclass
class Cell:
    key: CellKey
    status: str  # done | failed | unfinished | not started
    test: dict = field(default_factory=dict)
    train_s: float | None = None
    best_epoch: int | None = None
    attempts: int = 0  # failed attempts
    reason: str = ""
    folder: Path | None = None


def load_cells(run_dir: Path) -> tuple[str, str, list[Cell]]:
    """The grid's name, its description and its cells: every cell folder, plus cells grid.yaml lists
    but never started."""
    cells = {}
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        try:
            key = parse_cell_id(folder.name)
        except ValueError:
            continue  # not a cell folder (e.g. report/)
        cells[key] = _read_cell(key, folder)
    name, description = run_dir.name, ""
    if (run_dir / GRID_FILE).is_file():
        grid = grid_from_dict(yaml.safe_load((run_dir / GRID_FILE).read_text()), str(run_dir / GRID_FILE))
        name, description = grid.name, grid.description
        for key in cell_keys(grid):
            cells.setdefault(key, Cell(key, "not started"))
    return name, description, sorted(cells.values(), key=lambda c: c.key)


def _read_cell(key: CellKey, folder: Path) -> Cell:
    failure = json.loads((folder / FAILURE_FILE).read_text()) if (folder / FAILURE_FILE).is_file() else {}
    cell = Cell(key, "unfinished", attempts=failure.get("attempts", 0), reason=failure.get("reason", ""),
                folder=folder)
    if (folder / RESULT_FILE).is_file():
        result = json.loads((folder / RESULT_FILE).read_text())
        cell.status, cell.test = "done", result["test"]
        cell.train_s, cell.best_epoch = result.get("train_s"), result.get("best_epoch")
    elif failure:
        cell.status = "failed"
    return cell


def paired_t_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of the paired t-test of x against y; NaN where the test is undefined (fewer
    than two pairs, or all differences equal: zero variance)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    n = len(d)
    sd = d.std(ddof=1) if n > 1 else 0.0
    if sd <= TIE_TOLERANCE:
        return math.nan
    return student_t_two_sided_p(d.mean() / (sd / math.sqrt(n)), n - 1)


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df, by the finite series of Abramowitz and
    Stegun 26.7.3/26.7.4 (exact for integer df, so no SciPy is needed)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    if df % 2:
        if df == 1:
            return 1.0 - 2.0 * theta / math.pi
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = (2.0 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


def sign_flip_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p of the mean paired difference (NaN without pairs)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if len(d) == 0:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= abs(d.mean()) - 1e-12))


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


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes report.md, the CSVs and the figures; returns the path of report.md.

    Raises:
        FileNotFoundError: when `run_dir` is not a folder.
    """
    from engine.report_plots import plot_curves, plot_heatmaps

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    out = Path(out) if out else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    name, description, cells = load_cells(run_dir)
    summary = summarize(cells)
    wins, cost = wins_table(summary), cost_table(cells)
    tables = {"cells": cell_rows(cells), "summary": summary, "wins": wins, "cost": cost,
              "failures": [r for r in cell_rows(cells) if r["status"] == "failed"]}
    for table, rows in tables.items():
        write_csv(rows, out / f"{table}.csv")
    figures = plot_heatmaps(summary, out) + plot_curves(cells, out)
    path = out / "report.md"
    path.write_text(render_markdown(name, run_dir, cells, summary, wins, cost, figures, description))
    return path


def _num(value, fmt: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]


def _dataset_section(dataset: str, summary: list[dict], figures: list[Path]) -> list[str]:
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
    return [f"## {dataset}", "", *_table(header, table), *heatmap, ""]


def render_markdown(name: str, run_dir: Path, cells: list[Cell], summary: list[dict], wins: list[dict],
                    cost: list[dict], figures: list[Path], description: str = "") -> str:
    """report.md: the grid's description, the headline wins, one table per dataset, cost, failures and figures."""
    counts = {s: sum(c.status == s for c in cells) for s in ("done", "failed", "unfinished", "not started")}
    lines = [f"# medft report: {name}", "", *([description.strip(), ""] if description.strip() else []),
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
        lines += _dataset_section(dataset, summary, figures)
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
