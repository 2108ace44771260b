"""The live race: rung jobs on the grid's own scheduler, cells and claims.

Every process that runs `medft recommend GRID.yaml` (or each rank of `deepspeed --module
engine.recommend GRID.yaml`) loops: read every race cell's folder, ask the policy for each
(dataset, backbone) case what to train next, claim the first such cell that is free (the grid's
claim files), train it up to the job's epoch and release it. A rung job is "cell X until epoch
k", and a cell's folder says how far it is, so a killed race restarts where it was: the claim of
a dead worker is taken over, the cell resumes from its last completed epoch, and no decision is
kept anywhere but in the cells. The cells are the grid's (same ids, folders, configs), so a
later `medft grid` on the same out_dir only trains what the race did not.

This is the one module of engine/recommend that imports the grid's modules.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pathlib import Path

from engine.cell_files import CONFIG_FILE, GRID_FILE, cell_dir, parse_cell_id
from engine.grid.claims import try_claim
from engine import checkpoint
from engine.config import CellConfig, apply_overrides, from_dict, load_cell_config, read_yaml, to_yaml
from engine.grid.run import _place, _signals_as_interrupt
from engine.grid.worker import DatasetCache, Worker, cell_state, run_cell
from engine.grid.config import GridConfig, cell_keys, expand_cells, grid_from_dict
from engine.recommend.policy import Arm, CellView, Decision, RaceSettings, decide, replay
from engine.recommend.views import arm_of, cell_view

log = logging.getLogger(__name__)

_MAX_POLL_S = 5.0  # how often an idle process looks again while others train the rung's cells


@dataclass
class Case:
    """One (dataset, backbone) of the grid: its arms and its cells by (strategy, seed)."""

    dataset: str
    backbone: str
    arms: list[Arm]
    seeds: list[int]
    epochs: int
    cells: dict[tuple[str, int], CellConfig] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.dataset}__{self.backbone}"


def race_cases(grid: GridConfig, source: str = "grid", cells: list[CellConfig] | None = None) -> list[Case]:
    """The grid's cells grouped into cases, in grid order.

    Raises:
        ValueError: what `expand_cells` rejects, or cells of one case with different epoch budgets.
    """
    cases: dict[tuple[str, str], Case] = {}
    for cfg in cells if cells is not None else expand_cells(grid, source):
        key = parse_cell_id(cfg.cell_id)[:2]
        if key not in cases:
            cases[key] = Case(*key, [], list(grid.seeds), cfg.trainer.epochs)
        case = cases[key]
        if cfg.trainer.epochs != case.epochs:
            raise ValueError(f"{source}: the strategies of {case.name} must share trainer.epochs to race "
                             f"({cfg.cell_id} has {cfg.trainer.epochs}, others {case.epochs})")
        if cfg.trainer.seed == grid.seeds[0]:
            case.arms.append(arm_of(cfg))
        case.cells[(cfg.strategy.name, cfg.trainer.seed)] = cfg
    return list(cases.values())


@dataclass
class CaseOutcome:
    """A case's race: its final decision, the cells' views it was made from, and the cells as they
    are (a replay's finished cells; the live race's own views)."""

    case: Case
    decision: Decision
    seen: dict[tuple[str, int], CellView]
    full: dict[tuple[str, int], CellView]


def load_race_config(path: str | Path, overrides: list[str] = ()) -> tuple[GridConfig, RaceSettings]:
    """A grid YAML with an optional `recommend:` section (RaceSettings), plus dotted overrides of
    either (`recommend.eta=3`, `cell.trainer.epochs=5`).

    Raises:
        FileNotFoundError, ValueError: as `load_grid_config`, naming the key and the file.
    """
    source = str(path) + (" + overrides" if overrides else "")
    data = apply_overrides(read_yaml(path), list(overrides))
    settings = from_dict(RaceSettings, data.pop("recommend", None) or {}, source, "recommend")
    return grid_from_dict(data, source), settings


def race_settings(overrides: list[str], source: str = "overrides") -> RaceSettings:
    """RaceSettings from `recommend.*` overrides alone (a replay has no grid YAML to hold them)."""
    data = apply_overrides({}, list(overrides))
    unknown = sorted(set(data) - {"recommend"})
    if unknown:
        raise ValueError(f"{source}: only recommend.* keys apply to a replay, got {', '.join(unknown)}")
    return from_dict(RaceSettings, data.get("recommend", {}), source, "recommend")


def load_run_cells(run_dir: Path) -> tuple[GridConfig, list[CellConfig]]:
    """A grid's run dir as the grid and its cells' own configs (read where they lie now, so a
    copied or moved run dir works without the datasets).

    Raises:
        FileNotFoundError: naming the run dir's grid.yaml or a cell's config.yaml that is missing.
    """
    run_dir = Path(run_dir)
    if not (run_dir / GRID_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / GRID_FILE}: not found; is {run_dir} a grid's out_dir?")
    grid = grid_from_dict({**read_yaml(run_dir / GRID_FILE), "out_dir": str(run_dir)}, str(run_dir / GRID_FILE))
    cells = []
    for key in cell_keys(grid):
        path = run_dir / key.cell_id / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; the cell {key.cell_id} never started")
        cells.append(load_cell_config(path, [f"trainer.out_dir={run_dir}"]))
    return grid, cells


def observe(case: Case, grid: GridConfig) -> dict[tuple[str, int], CellView]:
    """The policy's view of every started cell of the case, from the cell folders as they are now."""
    views = {key: cell_view(cell_dir(cfg), cfg.trainer.monitor, failed=cell_state(cfg, grid) == "failed")
             for key, cfg in case.cells.items()}
    return {key: view for key, view in views.items() if view.points or view.done}


def outcome_of(case: Case, grid: GridConfig, settings: RaceSettings) -> CaseOutcome:
    """The race's outcome from the cells as they are: the decisions and the epochs they used.

    Raises:
        ValueError: (from `policy.replay`) a cell the race still needs that is not far enough.
    """
    full = observe(case, grid)
    try:
        decision, seen = replay(case.arms, case.seeds, case.epochs, settings, full)
    except ValueError as e:
        raise ValueError(f"{case.name}: {e}") from None
    return CaseOutcome(case, decision, seen, full)


def run_race(grid: GridConfig, settings: RaceSettings, source: str = "grid",
             worker: Worker | None = None) -> list[CaseOutcome]:
    """Runs this process's share of the race until every case has its recommendation.

    Every process returns the same outcomes (they are read from the cell folders).

    Raises:
        ValueError: bad input found before any cell starts, or `grid.parallel: data`.
    """
    if grid.grid.parallel == "data":
        raise ValueError(f"{source}: 'grid.parallel: data' is not supported by recommend; race with parallel: cells")
    worker = worker or Worker.from_env()
    cells = _place(expand_cells(grid, source), worker)
    checkpoint.write_text_atomic(to_yaml(grid), Path(grid.out_dir) / GRID_FILE)  # what a replay reads
    cases = race_cases(grid, source, cells)
    cache = DatasetCache(grid.grid.dataset_cache_size)
    with _signals_as_interrupt():
        while True:
            jobs = [(case, job) for case in cases
                    for job in decide(case.arms, case.seeds, case.epochs, settings, observe(case, grid)).jobs]
            if not jobs:
                return [outcome_of(case, grid, settings) for case in cases]
            if not _run_one_job(jobs, grid, cache, worker):
                time.sleep(min(grid.grid.heartbeat_s, _MAX_POLL_S))


def _run_one_job(jobs: list, grid: GridConfig, cache: DatasetCache, worker: Worker) -> bool:
    """Claims and runs the first free job's cell (cells of a loaded dataset first); False if none is free."""
    pending = [(case, job) for case, job in jobs
               if cell_state(case.cells[(job.arm, job.seed)], grid) == "pending"]
    for case, job in sorted(pending, key=lambda cj: not cache.holds(cj[0].cells[(cj[1].arm, cj[1].seed)])):
        cfg = case.cells[(job.arm, job.seed)]
        claim = try_claim(cell_dir(cfg), grid.grid.stale_after_s)
        if claim is not None:
            log.info("recommend %s: %s seed %d to epoch %d", case.name, job.arm, job.seed, job.until_epoch)
            run_cell(cfg, claim, grid, cache, worker, until_epoch=job.until_epoch)
            return True
    return False
