"""`medft report RUN_DIR`: the study's tables and figures from a grid's cell folders.

Reads every cell's result.json (and failure.json) under RUN_DIR (`cells.py`) and writes, into
RUN_DIR/report:
- report.md (`markdown.py`): per dataset, each backbone x strategy's test accuracy and balanced
  accuracy as mean ± sample std (ddof=1) over seeds, the difference of means to FT on the same
  dataset and backbone (Δ) with its paired bootstrap interval over test images (`bootstrap.py`,
  from each cell's test_predictions.npz); how many (dataset, backbone) cases each strategy wins,
  ties within noise or loses against FT by that interval (the study's headline measure); across
  cases the Friedman test, average ranks and Nemenyi CD, and each strategy's Wilcoxon test against
  FT, Holm-corrected (`stats.py`, `significance.py`); each cell's own bootstrap interval; the cost
  per cell in device-seconds (result.json's train_s); failed and unfinished cells with reasons.
- cells.csv, summary.csv, wins.csv, cost.csv, failures.csv, friedman.csv, wilcoxon.csv: the same
  numbers, unrounded (`tables.py`; summary.csv also has the paired t and sign-flip p over seeds).
- a data-fingerprint section and fingerprints.csv: per dataset, the fingerprints of the data its
  cells trained on, flagged where they disagree (`fingerprints.py`).
- heatmap_<dataset>.png, curves_<dataset>.png and cd_<metric>.png (`plots.py`).
"""
from __future__ import annotations

from pathlib import Path

from engine.cell_files import REPORT_DIR
from engine.report.cells import load_cells
from engine.report.fingerprints import fingerprint_rows, fingerprint_section
from engine.report.markdown import ReportData, render_markdown
from engine.report.plots import plot_critical_difference, plot_curves, plot_heatmaps
from engine.report.significance import (add_delta_intervals, add_seed_interval_widths, across_cases, cell_intervals,
                                        friedman_rows, load_predictions)
from engine.report.tables import METRICS, cell_rows, cost_table, summarize, wins_table, write_csv

__all__ = ["write_report"]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes report.md, the CSVs and the figures; returns the path of report.md.

    Raises:
        FileNotFoundError: when `run_dir` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    out = Path(out) if out else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    name, description, cells = load_cells(run_dir)
    predictions = load_predictions(cells)
    intervals = cell_intervals(predictions)
    summary = summarize(cells)
    add_seed_interval_widths(summary, intervals)
    add_delta_intervals(summary, predictions)
    wins, cost = wins_table(summary), cost_table(cells)
    tests = [across_cases(summary, m) for m in METRICS]
    tables = {"cells": cell_rows(cells, intervals), "summary": summary, "wins": wins, "cost": cost,
              "failures": [r for r in cell_rows(cells) if r["status"] == "failed"],
              "friedman": friedman_rows(tests), "wilcoxon": [r for t in tests for r in t.wilcoxon],
              "fingerprints": fingerprint_rows(cells)}
    for table, rows in tables.items():
        write_csv(rows, out / f"{table}.csv")
    cd_figures = [p for p in (plot_critical_difference(t, out) for t in tests) if p is not None]
    figures = plot_heatmaps(summary, out) + plot_curves(cells, out) + cd_figures
    path = out / "report.md"
    markdown = render_markdown(ReportData(name, run_dir, cells, summary, wins, cost, figures, intervals, tests,
                                          description))
    path.write_text(markdown + "\n".join(["", *fingerprint_section(tables["fingerprints"])]))
    return path
