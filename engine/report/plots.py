"""The report's figures (matplotlib, Agg backend: no display needed).

- heatmap_<dataset>.png: Δ test accuracy vs FT, strategies x backbones, centred on zero.
- curves_<dataset>.png: validation accuracy per epoch from metrics.jsonl, one panel per
  backbone, one line per strategy (mean over the seeds that reached that epoch).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from engine.cell_files import METRICS_FILE
from engine.report.cells import Cell
from engine.report.tables import BASELINE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; also works where no display exists
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(summary: list[dict], out: Path) -> list[Path]:
    """One Δ-accuracy heatmap per dataset that has strategies besides FT; returns the files."""
    plt = _pyplot()
    paths = []
    for dataset in sorted({r["dataset"] for r in summary}):
        rows = [r for r in summary if r["dataset"] == dataset and r["strategy"] != BASELINE]
        strategies = sorted({r["strategy"] for r in rows})
        backbones = sorted({r["backbone"] for r in rows})
        if not strategies:
            continue
        delta = np.full((len(strategies), len(backbones)), np.nan)
        for r in rows:
            delta[strategies.index(r["strategy"]), backbones.index(r["backbone"])] = r["accuracy_delta_vs_ft"]
        limit = max(float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0, 1e-3)
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(backbones), 1.0 + 0.45 * len(strategies)))
        image = ax.imshow(delta, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(backbones)), backbones)
        ax.set_yticks(range(len(strategies)), strategies)
        for (i, j), value in np.ndenumerate(delta):
            dark = not math.isnan(value) and abs(value) > 0.6 * limit  # white text on the saturated cells
            ax.text(j, i, "–" if math.isnan(value) else f"{value:+.3f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
        ax.set_title(f"{dataset}: Δ test accuracy vs FT")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        paths.append(out / f"heatmap_{dataset}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _val_curve(folder: Path) -> list[float]:
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["val/accuracy"] for r in sorted(rows, key=lambda r: r["epoch"])]


def _mean_curve(curves: list[list[float]]) -> np.ndarray:
    """Per epoch, the mean over the curves that reached it (early stopping ends some sooner)."""
    length = max(map(len, curves))
    padded = np.full((len(curves), length), np.nan)
    for i, curve in enumerate(curves):
        padded[i, :len(curve)] = curve
    return np.nanmean(padded, axis=0)


def plot_curves(cells: list[Cell], out: Path) -> list[Path]:
    """One figure of validation-accuracy curves per dataset; returns the files."""
    plt = _pyplot()
    done = [c for c in cells if c.status == "done" and c.folder is not None]
    paths = []
    for dataset in sorted({c.key.dataset for c in done}):
        mine = [c for c in done if c.key.dataset == dataset]
        backbones = sorted({c.key.backbone for c in mine})
        fig, axes = plt.subplots(1, len(backbones), figsize=(4.2 * len(backbones), 3.2), squeeze=False)
        for ax, backbone in zip(axes[0], backbones):
            for strategy in sorted({c.key.strategy for c in mine if c.key.backbone == backbone}):
                same = [c for c in mine if (c.key.backbone, c.key.strategy) == (backbone, strategy)]
                curves = [curve for curve in map(_val_curve, (c.folder for c in same)) if curve]
                if curves:
                    ax.plot(_mean_curve(curves), marker=".", label=strategy)
            ax.set_title(f"{dataset} / {backbone}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("val accuracy")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"curves_{dataset}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
