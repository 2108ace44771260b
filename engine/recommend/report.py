"""What a race leaves: `<out_dir>/recommend/<dataset>__<backbone>/` with recommend.md, recommend.json
and curves.png (the first seed's validation curves, the rungs and where each arm was cut).

Cost is device time as the cells' metrics.jsonl record it: per epoch, training + LP feature
cache + validation seconds (a cell's final test pass is left out, in the race and in the grid
alike). The race's cost is that of the epochs its decisions saw; the full grid's is exact when
every cell of the case is finished (a replay), else estimated: each cell's seen epochs plus its
missing ones at the seconds of its arm's last seen epoch.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from engine.cell_files import RECOMMEND_DIR, RECOMMEND_FIGURE, RECOMMEND_JSON, RECOMMEND_MD
from engine.checkpoint import write_json_atomic, write_text_atomic
from engine.recommend.policy import CellView, RaceSettings
from engine.recommend.race import CaseOutcome


def _seconds(view: CellView | None) -> float:
    return sum(p.seconds for p in view.points) if view else 0.0


def race_cost(outcome: CaseOutcome) -> dict:
    """Device seconds the race's decisions used, and what the whole case of the grid costs."""
    case, spent = outcome.case, sum(_seconds(v) for v in outcome.seen.values())
    full, exact = 0.0, True
    for arm in case.arms:
        known = [outcome.full[(arm.name, s)] for s in case.seeds if (arm.name, s) in outcome.full]
        last_epoch_s = next((v.points[-1].seconds for v in known if v.points), 0.0)
        for seed in case.seeds:
            view = outcome.full.get((arm.name, seed), CellView())
            full += _seconds(view)
            if not view.done:
                exact = False
                full += (case.epochs - len(view.points)) * last_epoch_s
    return {"race_s": spent, "grid_s": full, "fraction": spent / full if full else math.nan, "grid_exact": exact}


def summarize(outcome: CaseOutcome, settings: RaceSettings) -> dict:
    """The JSON of one case: the recommendation, every arm's stop, the rungs and the cost."""
    case, decision = outcome.case, outcome.decision
    arms = []
    for arm in case.arms:
        stop = decision.stops.get(arm.name)
        trained = {str(s): len(outcome.seen[(arm.name, s)].points) for s in case.seeds if (arm.name, s) in outcome.seen}
        arms.append({"arm": arm.name, "head_first": arm.head_first, "stopped_at_epoch": stop.rung if stop else None,
                     "seeds": stop.seeds if stop else len(trained),
                     "val_value": stop.value if stop else decision.scores.get(arm.name),
                     "epochs_trained": trained})
    monitor = next(iter(case.cells.values())).trainer.monitor
    return {"dataset": case.dataset, "backbone": case.backbone, "recommendation": decision.recommendation,
            "metric": f"val/{monitor}", "epochs": case.epochs, "seeds": case.seeds, "rungs": decision.rungs,
            "carried_by_phase_rule": {str(k): v for k, v in decision.carried.items()}, "arms": arms,
            "cost": race_cost(outcome), "settings": asdict(settings)}


def _markdown(summary: dict) -> str:
    cost = summary["cost"]
    lines = [f"# {summary['dataset']} x {summary['backbone']}: recommended `{summary['recommendation']}`", "",
             f"Rungs (epochs): {summary['rungs']} of {summary['epochs']}; seeds {summary['seeds']}; "
             f"decisions on {summary['metric']} (best so far), never on test.", "",
             "| arm | stopped at epoch | seeds | validation there | epochs trained per seed |", "|---|---|---|---|---|"]
    for arm in summary["arms"]:
        stopped = arm["stopped_at_epoch"] if arm["stopped_at_epoch"] is not None else "— (recommended)"
        value = "n/a" if arm["val_value"] is None or not math.isfinite(arm["val_value"]) else f"{arm['val_value']:.4f}"
        trained = ", ".join(f"s{s}: {n}" for s, n in arm["epochs_trained"].items())
        lines.append(f"| {arm['arm']}{' (head first)' if arm['head_first'] else ''} | {stopped} | {arm['seeds']} "
                     f"| {value} | {trained} |")
    carried = summary["carried_by_phase_rule"]
    lines += ["", "Carried unjudged by the phase rule: "
              + ("; ".join(f"epoch {r}: {', '.join(a)}" for r, a in carried.items()) if carried else "none"), "",
              f"Device time: race {cost['race_s']:.1f} s vs full grid {cost['grid_s']:.1f} s "
              f"({'exact' if cost['grid_exact'] else 'estimated'}): {100 * cost['fraction']:.1f}%.", "",
              f"![validation curves]({RECOMMEND_FIGURE})", ""]
    return "\n".join(lines)


def plot_case(outcome: CaseOutcome, path: Path) -> None:
    """The first seed's validation curves as far as the race trained them, rungs dashed, cuts as x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case, decision = outcome.case, outcome.decision
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in case.arms:
        view = outcome.seen.get((arm.name, case.seeds[0]), CellView())
        values = [p.value for p in view.points]
        line, = ax.plot(range(1, len(values) + 1), values, marker=".", label=arm.name,
                        linewidth=2.5 if arm.name == decision.recommendation else 1.2)
        stop = decision.stops.get(arm.name)
        if stop is not None and values:
            ax.plot([len(values)], [values[-1]], "x", color=line.get_color(), markersize=9)
    for rung in decision.rungs:
        ax.axvline(rung, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="epochs trained", ylabel=f"val {next(iter(case.cells.values())).trainer.monitor} (seed "
           f"{case.seeds[0]})", title=f"{case.name}: recommended {decision.recommendation}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_case(outcome: CaseOutcome, settings: RaceSettings, out_dir: str | Path) -> Path:
    """Writes the case's folder under `out_dir`/recommend; returns its recommend.md."""
    folder = Path(out_dir) / RECOMMEND_DIR / outcome.case.name
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(outcome, settings)
    write_json_atomic(summary, folder / RECOMMEND_JSON)
    write_text_atomic(_markdown(summary), folder / RECOMMEND_MD)
    plot_case(outcome, folder / RECOMMEND_FIGURE)
    return folder / RECOMMEND_MD
