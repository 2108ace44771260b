"""`medft report RUN_DIR`: the study's tables and figures from a grid's cell folders.

Reads every cell's result.json (and failure.json) under RUN_DIR (`cells.py`) and writes, into
RUN_DIR/report:
- report.md: per dataset, each backbone x strategy's test accuracy and balanced accuracy as mean
  ± sample std (ddof=1) over seeds, the difference of means to FT on the same dataset and
  backbone (Δ), and a paired test over the seeds both ran (`stats.py`); how many (dataset,
  backbone) cases each strategy wins against FT (the study's headline measure); the cost per cell
  in device-seconds (result.json's train_s); failed and unfinished cells with their reasons.
- cells.csv, summary.csv, wins.csv, cost.csv, failures.csv: the same numbers, unrounded (`tables.py`).
- a data-fingerprint section and fingerprints.csv: per dataset, the fingerprints of the data its
  cells trained on, flagged where they disagree (`fingerprints.py`).
- heatmap_<dataset>.png and curves_<dataset>.png (`plots.py`).
"""
from __future__ import annotations

from pathlib import Path

from engine.cell_files import REPORT_DIR
from engine.report.cells import load_cells
from engine.report.fingerprints import fingerprint_rows, fingerprint_section
from engine.report.plots import plot_curves, plot_heatmaps
from engine.report.tables import cell_rows, cost_table, render_markdown, summarize, wins_table, write_csv

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
    summary = summarize(cells)
    wins, cost = wins_table(summary), cost_table(cells)
    tables = {"cells": cell_rows(cells), "summary": summary, "wins": wins, "cost": cost,
              "failures": [r for r in cell_rows(cells) if r["status"] == "failed"],
              "fingerprints": fingerprint_rows(cells)}
    for table, rows in tables.items():
        write_csv(rows, out / f"{table}.csv")
    figures = plot_heatmaps(summary, out) + plot_curves(cells, out)
    path = out / "report.md"
    markdown = render_markdown(name, run_dir, cells, summary, wins, cost, figures, description)
    path.write_text(markdown + "\n".join(["", *fingerprint_section(tables["fingerprints"])]))
    return path


