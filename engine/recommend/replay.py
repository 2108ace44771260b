"""`medft recommend --replay RUN_DIR`: the race's policy run on a finished grid, without training.

The replay asks `policy.decide` exactly what the live race asks it (`policy.replay`), with each
cell's metrics.jsonl revealed only up to the epochs the race would have trained so far; a job
"train cell X until epoch k" reveals X's first k epochs (all of them, and the cell counts as
finished, when X stopped before k). Since the live race's cells train exactly as the grid's did
(resume is bit-identical), its decisions are the replay's; the live race ends with this same
call on its own cells.
"""
from __future__ import annotations

from pathlib import Path

from engine.recommend.policy import RaceSettings
from engine.recommend.race import CaseOutcome, load_run_cells, outcome_of, race_cases


def replay_run(run_dir: str | Path, settings: RaceSettings) -> list[CaseOutcome]:
    """Replays every (dataset, backbone) case of a finished grid's run dir.

    Raises:
        FileNotFoundError: a run dir without grid.yaml or with a cell that never started.
        ValueError: a cell the race needs that is not finished.
    """
    grid, cells = load_run_cells(Path(run_dir))
    return [outcome_of(case, grid, settings) for case in race_cases(grid, str(run_dir), cells)]
