"""The report's figures (matplotlib, Agg backend: no display needed).

- heatmap_<dataset>.png: Δ test accuracy vs FT, strategies x backbones, centred on zero.
- curves_<dataset>.png: validation accuracy per epoch from metrics.jsonl, one panel per
  backbone, one line per strategy (mean over the seeds that reached that epoch).
- cd_<metric>.png: the critical-difference diagram of the strategies' average ranks over cases.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from engine.cell_files import METRICS_FILE
from engine.report.cells import Cell
from engine.report.significance import AcrossCases
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


def _not_different_groups(ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs [i, j] of the rank-sorted strategies whose ranks differ by less than cd."""
    groups = []
    for i in range(len(ranks)):
        j = max(j for j in range(i, len(ranks)) if ranks[j] - ranks[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    return groups


def plot_critical_difference(test: AcrossCases, out: Path) -> Path | None:
    """cd_<metric>.png, Demšar's critical-difference diagram: the average-rank axis (1 = best, on
    the left), each strategy at its rank, the CD as a bar, and a thick line joining strategies
    whose ranks differ by less than the CD. None where the Friedman test is undefined."""
    if test.friedman is None:
        return None
    plt, f = _pyplot(), test.friedman
    ranks, names = zip(*sorted(zip(f.ranks, f.strategies)))
    k = len(ranks)
    half = (k + 1) // 2
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.28 * half))
    ax.set_xlim(-2.5, k + 3.5)  # room for the labels on both sides
    ax.set_ylim(-(half + 0.7), 1.6)
    ax.hlines(0, 1, k, color="black")
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.12, color="black")
        ax.text(tick, 0.2, str(tick), ha="center", va="bottom", fontsize=8)
    for i, (rank, name) in enumerate(zip(ranks, names)):
        left = i < half  # the better half is labelled on the left, the rest on the right
        level = -(i + 1) if left else -(k - i)
        edge = 0.5 if left else k + 0.5
        ax.plot([rank, rank, edge], [0, level, level], color="black", linewidth=0.8)
        ax.text(edge - 0.1 if left else edge + 0.1, level, f"{name} ({rank:.2f})", fontsize=8,
                ha="right" if left else "left", va="center")
    ax.plot([1, 1 + f.cd], [1.2, 1.2], color="tab:red", linewidth=2)
    ax.text(1 + f.cd / 2, 1.3, f"CD = {f.cd:.2f}", ha="center", va="bottom", fontsize=8, color="tab:red")
    for n, (i, j) in enumerate(_not_different_groups(list(ranks), f.cd)):
        y = -0.35 - 0.25 * n
        ax.plot([ranks[i] - 0.03, ranks[j] + 0.03], [y, y], color="tab:blue", linewidth=3)
    ax.set_title(f"{test.metric}: average rank over {f.cases} cases (Friedman p = {f.p:.3g})", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path = out / f"cd_{test.metric}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
