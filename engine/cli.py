"""The `medft` command: train one cell, run a grid, race its strategies, report and sync it, check a
dataset, list strategies, run the demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from engine.config import load_cell_config, to_yaml


def _train(args) -> int:
    from engine.tracking import create_tracker
    from engine.cell_files import cell_dir
    from engine import provenance
    from engine.config_guard import require_same_config, restart_if_changed
    from engine.data.sources import load_index
    from engine.trainer import train_cell

    cfg = load_cell_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.restart_changed and (moved := restart_if_changed(cfg)):
        print(f"moved the results of another config to {moved}")
    require_same_config(cfg)  # before a tracker run starts for a cell that cannot train
    index = load_index(cfg.data)
    tracker = create_tracker(cfg, provenance=provenance.for_cell(cfg, index))
    try:
        result = train_cell(cfg, tracker, index)
    finally:
        tracker.finish()
    print(json.dumps({k: result[k] for k in ("cell_id", "best_epoch", "test")}, indent=2))
    print(f"results: {cell_dir(cfg)}")
    return 0


def _data_check(args) -> int:
    from engine.data.check import main_data_check

    return main_data_check(args.path, args.format, args.group_pattern)


def _strategies(args) -> int:
    from strategies import list_strategies

    for name, summary in list_strategies():
        print(f"{name:<16} {summary}")
    return 0


def _grid(args) -> int:
    from engine.grid.__main__ import grid_command

    return grid_command(args)


def _recommend(args) -> int:
    from engine.recommend.__main__ import recommend_command

    return recommend_command(args)


def _report(args) -> int:
    from engine.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def _sync(args) -> int:
    from engine.tracking import sync_offline_runs

    return 1 if sync_offline_runs(args.run_dir, args.jobs) else 0


def _demo(args) -> int:
    from engine.demo import run_demo

    return run_demo(Path(args.out), args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one cell (dataset x backbone x strategy x seed)")
    train.add_argument("--config", help="cell YAML (default: the built-in defaults)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--restart-changed", action="store_true",
                       help="if the cell's folder holds results of another config, move them to "
                            "OUT_DIR/replaced/<time>/ and train afresh")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 strategy.name=lp")
    train.set_defaults(run=_train)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="counts, unreadable files, extension mismatches, label conflicts, "
                                          "cross-split duplicates and groups, DICOM files")
    check.add_argument("path")
    check.add_argument("--format", default="auto", choices=["auto", "imagefolder", "csv", "npz"])
    check.add_argument("--group-pattern", default="", help="data.group_pattern: regex over the relative path, "
                       "first capture group = the group id (patient, study)")
    check.set_defaults(run=_data_check)

    strategies = sub.add_parser("strategies", help="list the registered strategies")
    strategies.set_defaults(run=_strategies)

    _add_grid_commands(sub)

    demo = sub.add_parser("demo", help="generate a synthetic dataset, run the demo grid on it, write its report")
    demo.add_argument("--out", default="demo_runs", help="output directory (default: demo_runs)")
    demo.add_argument("overrides", nargs="*", help="dotted overrides of the demo grid, e.g. cell.trainer.epochs=2")
    demo.set_defaults(run=_demo)
    return parser


def _add_grid_commands(sub) -> None:
    from engine.grid.__main__ import add_grid_arguments

    grid = sub.add_parser("grid", help="run a grid of cells (with any number of processes or hosts at once)")
    add_grid_arguments(grid)
    grid.set_defaults(run=_grid)

    from engine.recommend.__main__ import add_recommend_arguments

    recommend = sub.add_parser("recommend", help="race a grid's strategies per dataset x backbone on a budget; "
                                                 "recommend one (--replay RUN_DIR: on a finished grid)")
    add_recommend_arguments(recommend)
    recommend.set_defaults(run=_recommend)

    report = sub.add_parser("report", help="tables, tests against FT and figures of a grid's results")
    report.add_argument("run_dir", help="the grid's out_dir")
    report.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    report.set_defaults(run=_report)

    sync = sub.add_parser("sync", help="upload a grid's offline W&B runs")
    sync.add_argument("run_dir", help="folder searched for offline W&B runs (e.g. the grid's out_dir)")
    sync.add_argument("--jobs", type=int, default=4, help="runs uploaded at a time (default: 4)")
    sync.set_defaults(run=_sync)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"medft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
