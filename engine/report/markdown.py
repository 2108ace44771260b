"""report.md, rendered from the report's tables, intervals and tests."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.cell_files import PREDICTIONS_FILE
from engine.report.bootstrap import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED
from engine.report.cells import Cell
from engine.report.significance import AcrossCases
from engine.report.stats import ALPHA
from engine.report.tables import METRICS

NO_INTERVAL = "shown as –, counted as 'no interval'"


def num(value, fmt: str = ".3f") -> str:
    """`value` formatted, or '–' for a missing (None or NaN) one."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def interval(low, high, fmt: str = ".3f") -> str:
    """'[low, high]', or '–' where there is no interval."""
    return "–" if num(low) == "–" or num(high) == "–" else f"[{format(low, fmt)}, {format(high, fmt)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown pipe table's lines, and a blank line after it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]


@dataclass(frozen=True)
class ReportData:
    """Everything report.md shows, computed by write_report."""

    name: str
    run_dir: Path
    cells: list[Cell]
    summary: list[dict]
    wins: list[dict]
    cost: list[dict]
    figures: list[Path]
    intervals: dict  # CellKey -> metric -> (low, high), the cells with saved predictions
    tests: list[AcrossCases]  # one per metric
    description: str = ""  # the grid's own paragraph (e.g. where its weights come from)


SHORT = {"accuracy": "acc", "balanced_accuracy": "bal. acc"}


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
    lines = []
    for r in rows:
        cells = [r["backbone"], r["strategy"], r["seeds"]]
        for m in METRICS:
            mean = num(r[f"{m}_mean"]) + ("" if math.isnan(r[f"{m}_std"]) else f" ± {num(r[f'{m}_std'])}")
            if m == "accuracy" and r[f"{m}_mean"] == best[r["backbone"]]:
                mean = f"**{mean}**"
            delta_ci = interval(r.get(f"{m}_delta_low"), r.get(f"{m}_delta_high"), "+.3f")
            if delta_ci != "–" and r["delta_seeds"] != r["seeds"]:  # Δ is over all seeds, its interval over fewer
                delta_ci += f" ({r['delta_seeds']} seeds)"
            cells += [mean, num(r.get(f"{m}_seed_ci_halfwidth"), ".3f"), num(r[f"{m}_delta_vs_ft"], "+.3f"),
                      delta_ci, r.get(f"{m}_outcome", "")]
        lines.append(cells + [num(r["train_s_mean"], ".1f")])
    header = ["backbone", "strategy", "seeds"]
    for m in METRICS:
        header += [SHORT[m], "CI½ 1 seed", f"Δ {SHORT[m]}", "Δ 95% CI", "vs FT"]
    heatmap = [f"![Δ accuracy vs FT, {dataset}]({f.name})" for f in figures if f.name == f"heatmap_{dataset}.png"]
    return [f"## {dataset}", "", *counts, *table(header + ["train s"], lines), *heatmap, ""]


def _wins_section(wins: list[dict]) -> list[str]:
    lines = ["## Wins against FT", "",
             "Per (dataset, backbone) case: a **win** when the paired bootstrap 95% interval of Δ vs FT lies "
             "above 0, a **loss** when it lies below 0, a **tie within noise** when it holds 0; cases whose cells "
             f"have no saved test predictions have no interval ({NO_INTERVAL}). 'mean higher' counts the cases "
             "whose mean Δ is above 0 at all.", ""]
    header = ["strategy", "cases"]
    for m in METRICS:
        header += [f"{SHORT[m]} wins/ties/losses", "no interval", "mean higher", f"mean Δ {SHORT[m]}"]
    return lines + table(header, [[w["strategy"], w["cases"]] + [x for m in METRICS for x in (
        f"{w[f'{m}_wins']}/{w[f'{m}_ties']}/{w[f'{m}_losses']}", w[f"{m}_no_interval"], w[f"{m}_mean_higher"],
        num(w[f"{m}_mean_delta"], "+.3f"))] for w in wins])


def _across_cases_section(tests: list[AcrossCases], figures: list[Path]) -> list[str]:
    lines = ["## Across cases: Friedman test, average ranks, critical difference", "",
             f"Each (dataset, backbone) case on which every strategy has a result is one block; a strategy's score "
             f"is its seed-mean test metric. Rank 1 = best, ties share their mean rank. The Nemenyi critical "
             f"difference (CD, alpha = {ALPHA}) is the least difference of average ranks that is significant "
             f"(Demšar 2006); strategies joined by a bar in the figure are not.", ""]
    for t in tests:
        f = t.friedman
        if f is None:
            lines += [f"{SHORT[t.metric]}: {len(t.cases)} complete cases of {len(t.strategies)} strategies: the "
                      "Friedman test needs at least 3 strategies and 2 cases.", ""]
            continue
        lines += [f"**{t.metric}**: {f.cases} cases, {len(f.strategies)} strategies; Friedman χ² = "
                  f"{num(f.statistic, '.2f')}, p = {num(f.p, '.3g')}; CD = {num(f.cd, '.2f')}.", ""]
        order = sorted(zip(f.ranks, f.strategies))
        lines += table(["strategy", "average rank"], [[s, num(r, ".2f")] for r, s in order])
        lines += [f"![critical difference, {t.metric}]({p.name})" for p in figures if p.stem == f"cd_{t.metric}"]
        lines.append("")
    lines += ["## Wilcoxon signed-rank test against FT over cases (Holm)", "",
              "Two-sided, on the seed-mean metric of each case; p adjusted by Holm's step-down over the "
              "strategies. With n cases the smallest exact p is 2/2^n (0.5 for 2 cases, 0.0625 for 5).", ""]
    header = ["strategy", "cases"] + [x for t in tests for x in (f"median Δ {SHORT[t.metric]}", "p", "p Holm")]
    by_strategy: dict[str, list] = {}
    for t in tests:
        for r in t.wilcoxon:
            by_strategy.setdefault(r["strategy"], [r["strategy"], r["cases"]]).extend(
                [num(r["median_delta"], "+.3f"), num(r["p"], ".3g"), num(r["p_holm"], ".3g")])
    return lines + table(header, list(by_strategy.values()))


def _cells_section(cells: list[Cell], intervals: dict) -> list[str]:
    done = [c for c in cells if c.status == "done"]
    missing = sum(c.key not in intervals for c in done)
    lines = ["## Cells: test metric with its bootstrap 95% interval", "",
             f"Over the cell's test images ({BOOTSTRAP_SAMPLES} resamples, seed {BOOTSTRAP_SEED}, percentile "
             "interval); the Δ intervals pair a strategy's and FT's cells of the same seed by test image, "
             "resample both alike and average Δ over the seeds (seeds held fixed)."
             + (f" {missing} done cells have no {PREDICTIONS_FILE} (run before medft saved it): {NO_INTERVAL}."
                if missing else ""), ""]
    rows = [[c.key.cell_id] + [x for m in METRICS for x in (num(c.test.get(m)), interval(
        *intervals.get(c.key, {}).get(m, (None, None))))] for c in done]
    header = ["cell"] + [x for m in METRICS for x in (SHORT[m], "95% CI")]
    return lines + [f"<details><summary>{len(rows)} cells</summary>", "", *table(header, rows), "</details>", ""]


def render_markdown(r: ReportData) -> str:
    """report.md: the headline wins, the tests across cases, one table per dataset, the cells'
    intervals, cost, failures and figures."""
    counts = {s: sum(c.status == s for c in r.cells) for s in ("done", "failed", "unfinished", "not started")}
    lines = [f"# medft report: {r.name}", "", *([r.description.strip(), ""] if r.description.strip() else []),
             f"Run folder `{r.run_dir}`: {len(r.cells)} cells; " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + ".", "", "Test metrics, mean ± sample std over seeds. Δ = strategy mean − FT mean on the same dataset "
             "and backbone; 'Δ 95% CI' its paired bootstrap interval over test images, 'CI½ 1 seed' the mean "
             "half-width of one seed's interval. summary.csv also has the paired t-test and the exact sign-flip "
             "test over seeds (with 3 seeds the latter's smallest p is 0.25). Best accuracy per dataset and "
             "backbone in bold.", ""]
    lines += _wins_section(r.wins) + _across_cases_section(r.tests, r.figures)
    for dataset in sorted({row["dataset"] for row in r.summary}):
        lines += _dataset_section(dataset, r.summary, r.figures, _class_counts_line(r.cells, dataset))
    lines += _cells_section(r.cells, r.intervals)
    backbones = sorted(k[len("train_s_mean_"):] for k in (r.cost[0] if r.cost else {}) if k.startswith("train_s_mean_"))
    lines += ["## Cost (device-seconds per cell)", ""]
    lines += table(["strategy", "cells", *backbones, "mean", "total device-h", "vs FT"],
                   [[c["strategy"], c["cells"], *(num(c[f"train_s_mean_{b}"], ".1f") for b in backbones),
                     num(c["train_s_mean"], ".1f"), num(c["device_h_total"], ".3f"), num(c["vs_ft"], ".2f")]
                    for c in r.cost])
    failed = [c for c in r.cells if c.status == "failed"]
    if failed:
        lines += ["## Failed cells", ""]
        lines += table(["cell", "failed attempts", "reason"],
                       [[c.key.cell_id, c.attempts, c.reason.replace("|", "\\|").replace("\n", " ")] for c in failed])
    waiting = [c.key.cell_id for c in r.cells if c.status in ("unfinished", "not started")]
    if waiting:
        lines += ["## Unfinished cells", "", ", ".join(waiting), ""]
    curves = [f"![learning curves, {f.stem[7:]}]({f.name})" for f in r.figures if f.stem.startswith("curves_")]
    if curves:
        lines += ["## Learning curves (validation accuracy per epoch, mean over seeds)", "", *curves, ""]
    return "\n".join(lines)
