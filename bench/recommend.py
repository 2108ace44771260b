"""How good and how cheap `medft recommend` is, measured by replaying it on finished grids.

For every (dataset, backbone) case of each RUN_DIR (a finished grid's out_dir), the race is
replayed (engine/recommend/replay.py, no training) and compared with the full grid:
- best: the strategy with the highest mean test accuracy over the grid's seeds (ties: grid order);
- hit: the recommended strategy is the best, or its mean test accuracy is at least the best's mean
  minus the best's seed spread (the sample standard deviation, ddof=1, of its test accuracies);
- cost: the race's device seconds / the full case's (training + feature cache + validation time
  of every epoch from metrics.jsonl; the test passes are left out of both).
Each case is also replayed without the phase rule (`recommend.phase_aware=false`), to show what
the rule changes. One JSON row per case, an overall row, then a table. `--check` exits 1 when
fewer than 80% of the cases are hits or the race spends more than 25% of the grids' device time.

    python -m bench.recommend RUN_DIR... [--set recommend.eta=3 ...] [--out rows.jsonl] [--check]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

from engine.cell_files import RESULT_FILE, cell_dir
from engine.recommend.race import CaseOutcome, race_settings
from engine.recommend.replay import replay_run
from engine.recommend.report import race_cost

MIN_HIT_RATE, MAX_COST_FRACTION = 0.80, 0.25


def seed_accuracies(outcome: CaseOutcome) -> dict[str, list[float]]:
    """Strategy -> test accuracies of its finished cells, over the grid's seeds."""
    accuracies = {arm.name: [] for arm in outcome.case.arms}
    for (arm, _seed), cfg in outcome.case.cells.items():
        path = cell_dir(cfg) / RESULT_FILE
        if path.is_file():
            accuracies[arm].append(json.loads(path.read_text())["test"]["accuracy"])
    return accuracies


def judge(outcome: CaseOutcome) -> dict:
    """The case's row: the grid's best strategy, the recommended one, hit or not, the cost."""
    accuracies = seed_accuracies(outcome)
    means = {arm: statistics.mean(a) for arm, a in accuracies.items() if a}
    best = max(means, key=lambda arm: means[arm])  # max keeps the first of equals: grid order
    spread = statistics.stdev(accuracies[best]) if len(accuracies[best]) > 1 else 0.0
    recommended = outcome.decision.recommendation
    cost = race_cost(outcome)
    return {"best": best, "best_mean": means[best], "best_spread": spread, "recommended": recommended,
            "recommended_mean": means.get(recommended), "stops": {a: s.rung for a, s in outcome.decision.stops.items()},
            "hit": recommended == best or means.get(recommended, -1.0) >= means[best] - spread,
            "cost_fraction": cost["fraction"], "race_s": cost["race_s"], "grid_s": cost["grid_s"],
            "grid_exact": cost["grid_exact"]}


def case_rows(run_dir: str, settings) -> list[dict]:
    blind = {o.case.name: judge(o) for o in replay_run(run_dir, replace(settings, phase_aware=False))}
    rows = []
    for outcome in replay_run(run_dir, settings):
        row = {"bench": "recommend", "run_dir": str(run_dir), "case": outcome.case.name, **judge(outcome)}
        other = blind[outcome.case.name]
        row["without_phase_rule"] = {k: other[k] for k in ("recommended", "hit", "cost_fraction", "stops")}
        rows.append(row)
    return rows


def overall(rows: list[dict]) -> dict:
    race_s, grid_s = sum(r["race_s"] for r in rows), sum(r["grid_s"] for r in rows)
    blind_hits = sum(r["without_phase_rule"]["hit"] for r in rows)
    return {"bench": "recommend", "case": "overall", "cases": len(rows), "hits": sum(r["hit"] for r in rows),
            "hit_rate": sum(r["hit"] for r in rows) / len(rows), "cost_fraction": race_s / grid_s,
            "race_s": race_s, "grid_s": grid_s, "without_phase_rule_hits": blind_hits}


def print_table(rows: list[dict], total: dict) -> None:
    print(f"\n{'case':<34} {'best (mean±spread)':<26} {'recommended (mean)':<24} {'hit':<4} {'cost':>6}"
          f"   {'no phase rule: rec / hit / cost'}")
    for r in rows:
        b = f"{r['best']} ({r['best_mean']:.3f}±{r['best_spread']:.3f})"
        rec = f"{r['recommended']} ({r['recommended_mean']:.3f})"
        o = r["without_phase_rule"]
        print(f"{r['case']:<34} {b:<26} {rec:<24} {'yes' if r['hit'] else 'NO':<4} {100 * r['cost_fraction']:5.1f}%"
              f"   {o['recommended']} / {'yes' if o['hit'] else 'NO'} / {100 * o['cost_fraction']:.1f}%")
    print(f"overall: {total['hits']}/{total['cases']} hits ({100 * total['hit_rate']:.0f}%), "
          f"{100 * total['cost_fraction']:.1f}% of the grids' device time "
          f"({total['race_s']:.0f} of {total['grid_s']:.0f} s); without the phase rule "
          f"{total['without_phase_rule_hits']}/{total['cases']} hits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished grids' out_dirs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="recommend.KEY=VALUE",
                        help="race settings, e.g. --set recommend.eta=3")
    parser.add_argument("--out", help="append the JSON rows to this file")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 below {MIN_HIT_RATE:.0%} hits or above {MAX_COST_FRACTION:.0%} of the device time")
    args = parser.parse_args(argv)
    settings = race_settings(args.overrides, "--set")
    rows = [row for run_dir in args.run_dirs for row in case_rows(run_dir, settings)]
    total = overall(rows)
    for row in [*rows, total]:
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print_table(rows, total)
    missed = []
    if total["hit_rate"] < MIN_HIT_RATE:
        missed.append(f"hit rate {total['hit_rate']:.0%} < {MIN_HIT_RATE:.0%}")
    if total["cost_fraction"] > MAX_COST_FRACTION:
        missed.append(f"cost {total['cost_fraction']:.1%} of the grids' device time > {MAX_COST_FRACTION:.0%}")
    for m in missed:
        print(f"MISSED TARGET: {m}", file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
