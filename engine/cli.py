"""The `medft` command: train one cell, check a dataset, list strategies, run the demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

from engine.config import load_cell_config, to_yaml


def preset_path(name: str) -> Path:
    """A YAML preset shipped in configs/ (installed with the package)."""
    return Path(str(resources.files("configs") / name))


def _train(args) -> int:
    from engine.trainer import cell_dir, train_cell

    cfg = load_cell_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    result = train_cell(cfg)
    print(json.dumps({k: result[k] for k in ("cell_id", "best_epoch", "test")}, indent=2))
    print(f"results: {cell_dir(cfg)}")
    return 0


def _data_check(args) -> int:
    from engine.data.check import main_data_check

    return main_data_check(args.path, args.format)


def _strategies(args) -> int:
    from strategies import list_strategies

    for name, summary in list_strategies():
        print(f"{name:<16} {summary}")
    return 0


def _demo(args) -> int:
    from engine.demo import run_demo

    return run_demo(Path(args.out), args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one cell (dataset x backbone x strategy x seed)")
    train.add_argument("--config", help="cell YAML (default: the built-in defaults)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 strategy.name=lp")
    train.set_defaults(run=_train)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="counts, unreadable files, extension mismatches, cross-split duplicates")
    check.add_argument("path")
    check.add_argument("--format", default="auto", choices=["auto", "imagefolder", "csv", "npz"])
    check.set_defaults(run=_data_check)

    strategies = sub.add_parser("strategies", help="list the registered strategies")
    strategies.set_defaults(run=_strategies)

    demo = sub.add_parser("demo", help="generate a synthetic dataset and train a few cells on it")
    demo.add_argument("--out", default="demo_runs", help="output directory (default: demo_runs)")
    demo.add_argument("overrides", nargs="*", help="dotted overrides applied to every demo cell")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"medft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
