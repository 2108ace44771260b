"""`python -m engine.grid CONFIG [key=value ...]` (also `medft grid` and
`deepspeed --num_gpus N --module engine.grid CONFIG`): run a grid YAML's cells."""
from __future__ import annotations

import argparse
import sys
import traceback

from engine.cell_files import cell_dir
from engine.config import to_yaml
from engine.grid.claims import failure_record
from engine.grid.config import expand_cells, load_grid_config
from engine.grid.logs import configure_logging
from engine.grid.run import run_grid
from engine.grid.worker import Worker, cell_state


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="grid YAML (e.g. configs/paper.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cell.trainer.epochs=5 seeds=[684]")
    parser.add_argument("--print-config", action="store_true", help="print the resolved grid and exit")
    parser.add_argument("--list", action="store_true", help="list the cell ids and their states (with why a "
                        "failed cell failed), and exit")
    parser.add_argument("--retry-failed", action="store_true", help="re-queue the failed cells with a fresh "
                        "attempt count (recorded in their attempts.jsonl), then run the grid")
    # SUPPRESS: `medft -v grid` sets it on the main parser, which this default must not undo.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and tracebacks of errors and failed cells")
    parser.add_argument("--restart-changed", action="store_true",
                        help="cells whose folder holds results of another config (keys that change results): "
                             "move them to OUT_DIR/replaced/<time>/ and train them afresh, instead of stopping")
    # The DeepSpeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def grid_command(args: argparse.Namespace) -> int:
    """Runs `medft grid` / `python -m engine.grid`: exit status 1 when some cell failed, 130 on
    Ctrl-C or SIGTERM (the claim released: the same command continues)."""
    worker = Worker.from_env()
    configure_logging(getattr(args, "verbose", False), worker.rank)
    grid = load_grid_config(args.config, args.overrides)
    source = args.config + (" + overrides" if args.overrides else "")
    if args.print_config:
        print(to_yaml(grid), end="")
        return 0
    if args.list:
        for cfg in expand_cells(grid, source):
            state = cell_state(cfg, grid)
            why = f"  ({failure_record(cell_dir(cfg))['reason']})" if state == "failed" else ""
            print(f"{state:<8} {cfg.cell_id}{why}")
        return 0
    try:
        states = run_grid(grid, source, worker, retry_failed=args.retry_failed,
                          restart_changed=args.restart_changed)
    except KeyboardInterrupt:
        print("medft grid: interrupted; claims released, run the same command to continue", file=sys.stderr)
        return 130
    failed = sorted(cell for cell, state in states.items() if state == "failed")
    if worker.logs_progress:  # the launcher's other ranks would print the same line
        print(f"grid {grid.name}: {len(states) - len(failed)} of {len(states)} cells done in {grid.out_dir}"
              + (f"; failed: {', '.join(failed)} (see --list; --retry-failed runs them again)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.grid", description="run the cells of a grid YAML")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return grid_command(args)
    except (ValueError, FileNotFoundError) as e:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"medft grid: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
