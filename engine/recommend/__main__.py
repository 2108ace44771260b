"""`python -m engine.recommend GRID.yaml [key=value ...]` (or `medft recommend`): a budgeted race of
the grid's strategies per dataset x backbone, ending with a recommended strategy and its evidence;
`--replay RUN_DIR` runs the same policy on a finished grid without training.

Any number of processes may race the same grid at once, like `medft grid`: the ranks of
`deepspeed --num_gpus 8 --module engine.recommend GRID.yaml`, several processes, several hosts.
"""
from __future__ import annotations

import argparse
import logging
import sys

from engine.recommend.race import CaseOutcome, Worker, load_race_config, race_settings, run_race
from engine.recommend.replay import replay_run
from engine.recommend.report import race_cost, write_case


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="grid YAML (e.g. configs/paper.yaml); omit with --replay")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides of the grid or the race, e.g. cell.trainer.epochs=5 recommend.eta=3")
    parser.add_argument("--replay", metavar="RUN_DIR", help="replay the race on a finished grid's out_dir")
    # The DeepSpeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _print(outcomes: list[CaseOutcome], paths: list) -> None:
    for outcome, path in zip(outcomes, paths):
        cost = race_cost(outcome)
        stops = ", ".join(f"{arm}@{stop.rung}" for arm, stop in outcome.decision.stops.items())
        print(f"{outcome.case.name}: recommend {outcome.decision.recommendation} (stopped: {stops}); "
              f"{100 * cost['fraction']:.1f}% of the grid's device time; {path}")


def recommend_command(args: argparse.Namespace) -> int:
    """Runs `medft recommend`; writes the reports (rank 0 of a launcher) and prints one line per case."""
    if args.replay:
        overrides = [args.config, *args.overrides] if args.config else args.overrides
        settings = race_settings(overrides)
        outcomes, out_dir, writes = replay_run(args.replay, settings), args.replay, True
    elif args.config:
        grid, settings = load_race_config(args.config, args.overrides)
        worker = Worker.from_env()
        outcomes, out_dir, writes = run_race(grid, settings, args.config, worker), grid.out_dir, worker.logs_progress
    else:
        raise ValueError("give a grid YAML, or --replay RUN_DIR")
    if writes:
        _print(outcomes, [write_case(o, settings, out_dir) for o in outcomes])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.recommend", description=__doc__.split("\n")[0])
    add_recommend_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return recommend_command(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"medft recommend: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medft recommend: interrupted; claims released, run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
