"""`python -m tests.engine.grid.poison_grid CONFIG`: `python -m engine.grid` in which the cell named
by $POISON_CELL kills its own process (SIGKILL, as a segfault or the OOM killer would) before it
completes its first epoch, every time it runs."""
import os
import runpy
import signal

from engine.grid import worker

_train_cell = worker.train_cell


def train_or_die(cfg, *args, **kwargs):
    if cfg.cell_id == os.environ["POISON_CELL"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_cell(cfg, *args, **kwargs)


worker.train_cell = train_or_die
runpy.run_module("engine.grid", run_name="__main__", alter_sys=True)
