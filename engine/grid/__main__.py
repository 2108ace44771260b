"""`python -m engine.grid CONFIG [key=value ...]` (also `medft grid` and
`deepspeed --num_gpus N --module engine.grid CONFIG`): run a grid YAML's cells."""
from __future__ import annotations

import argparse
import logging
import sys

from engine.config import to_yaml
from engine.grid.config import expand_cells, load_grid_config
from engine.grid.run import run_grid
from engine.grid.worker import cell_state


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="grid YAML (e.g. configs/paper.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cell.trainer.epochs=5 seeds=[684]")
    parser.add_argument("--print-config", action="store_true", help="print the resolved grid and exit")
    parser.add_argument("--list", action="store_true", help="list the cell ids and their states, and exit")
    parser.add_argument("--restart-changed", action="store_true",
                        help="cells whose folder holds results of another config (keys that change results): "
                             "move them to OUT_DIR/replaced/<time>/ and train them afresh, instead of stopping")
    # The DeepSpeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def grid_command(args: argparse.Namespace) -> int:
    """Runs `medft grid` / `python -m engine.grid`; exit status 1 when some cell failed."""
    grid = load_grid_config(args.config, args.overrides)
    source = args.config + (" + overrides" if args.overrides else "")
    if args.print_config:
        print(to_yaml(grid), end="")
        return 0
    if args.list:
        for cfg in expand_cells(grid, source):
            print(f"{cell_state(cfg, grid):<8} {cfg.cell_id}")
        return 0
    states = run_grid(grid, source, restart_changed=args.restart_changed)
    failed = sorted(cell for cell, state in states.items() if state == "failed")
    print(f"grid {grid.name}: {len(states) - len(failed)} of {len(states)} cells done in {grid.out_dir}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.grid", description="run the cells of a grid YAML")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return grid_command(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"medft grid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medft grid: interrupted; claims released, run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
