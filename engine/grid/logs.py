"""The grid's log lines: every line names this process's rank and the cell it is training.

`configure_logging` installs the format on the root logger; `cell_logging(cell_id)` marks the
lines logged while one cell runs (also those of the loop, the data and the strategies), so that
the interleaved output of many workers reads cell by cell.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar

_NO_CELL = "-"
_current_cell: ContextVar[str] = ContextVar("medft_grid_cell", default=_NO_CELL)
FORMAT = "%(asctime)s %(levelname)s [rank %(rank)d %(cell)s] %(name)s: %(message)s"


class _RankAndCell(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank, record.cell = self.rank, _current_cell.get()
        return True


def configure_logging(verbose: bool, rank: int) -> None:
    """INFO (DEBUG with `verbose`) on stderr, each line with `rank` and the running cell's id.

    The root logger's handlers (`medft`'s own, or a host program's) keep their streams and take
    this format; a handler added later formats as it likes."""
    root = logging.getLogger()
    logging.basicConfig()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_RankAndCell(rank))


@contextmanager
def cell_logging(cell_id: str):
    token = _current_cell.set(cell_id)
    try:
        yield
    finally:
        _current_cell.reset(token)
