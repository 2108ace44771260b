"""Experiment tracking behind one small protocol; tracking never blocks or fails training."""
from __future__ import annotations

from typing import Protocol


class Tracker(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...

    def summary(self, result: dict) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing: the cell's own metrics.jsonl and result.json are the record."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, result: dict) -> None:
        pass

    def finish(self) -> None:
        pass
