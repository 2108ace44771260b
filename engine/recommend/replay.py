"""`medft recommend --replay RUN_DIR`: the race's policy run on a finished grid, without training.

The replay asks `policy.decide` exactly what the live race asks it, with each cell's metrics.jsonl
revealed only up to the epochs the race would have trained so far; a job "train cell X until
epoch k" reveals X's first k epochs (all of them, and the cell counts as finished, when X stopped
before k). Since the live race's cells train exactly as the grid's did (resume is bit-identical),
its decisions are the replay's.
"""
from __future__ import annotations

from pathlib import Path

from engine.recommend.policy import CellView, RaceSettings, decide
from engine.recommend.race import Case, CaseOutcome, load_run_cells, observe, race_cases

def reveal(full: CellView, epochs: int) -> CellView:
    """The cell as the race sees it after training it until `epochs`."""
    return CellView(full.points[:epochs], done=full.done and len(full.points) <= epochs)


def replay_case(case: Case, settings: RaceSettings, full: dict[tuple[str, int], CellView]) -> CaseOutcome:
    """Runs the policy on `full` (finished cells) as the live race would have trained them.

    Raises:
        ValueError: naming a cell the race needs further than the run dir has it.
    """
    revealed: dict[tuple[str, int], int] = {}
    while True:
        seen = {key: reveal(full[key], epochs) for key, epochs in revealed.items()}
        decision = decide(case.arms, case.seeds, case.epochs, settings, seen)
        if not decision.jobs:
            return CaseOutcome(case, decision, seen, full)
        for job in decision.jobs:
            key = (job.arm, job.seed)
            view = full.get(key, CellView())
            if not view.done and len(view.points) < job.until_epoch:
                raise ValueError(f"replay of {case.name}: cell {job.arm} seed {job.seed} has "
                                 f"{len(view.points)} epochs and is not finished; the race needs {job.until_epoch}")
            revealed[key] = job.until_epoch


def replay_run(run_dir: str | Path, settings: RaceSettings) -> list[CaseOutcome]:
    """Replays every (dataset, backbone) case of a finished grid's run dir.

    Raises:
        FileNotFoundError: a run dir without grid.yaml or with a cell that never started.
        ValueError: a cell the race needs that is not finished.
    """
    grid, cells = load_run_cells(Path(run_dir))
    return [replay_case(case, settings, observe(case, grid)) for case in race_cases(grid, str(run_dir), cells)]
