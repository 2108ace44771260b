"""`deepspeed --module tests.engine.grid.both_ranks_grid CONFIG`: `python -m engine.grid` whose first
cell on each rank waits until two ranks have started a cell.

Tiny cells take a second: rank 0 could train them all before rank 1 has imported torch, so a test
asserting that both ranks trained cells would pass or fail by the machine's load. With this wait it
cannot pass unless the second rank really claims a cell, and does not fail when rank 0 is faster.
"""
import json
import runpy
import time
from pathlib import Path

from engine.cell_files import ATTEMPTS_FILE
from engine.grid import worker

WAIT_S = 120.0  # for the other rank's first start; past it the cell trains and the test's assertion fails
_train_cell = worker.train_cell
_waited = False


def started_ranks(out_dir: Path) -> set[int]:
    ranks = set()
    for path in out_dir.glob(f"*/{ATTEMPTS_FILE}"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line being written
                continue
            if row["event"] == "start":
                ranks.add(row["rank"])
    return ranks


def train_once_both_started(cfg, *args, **kwargs):
    global _waited
    deadline = time.monotonic() + WAIT_S
    while not _waited and len(started_ranks(Path(cfg.trainer.out_dir))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    _waited = True
    return _train_cell(cfg, *args, **kwargs)


worker.train_cell = train_once_both_started
runpy.run_module("engine.grid", run_name="__main__", alter_sys=True)
