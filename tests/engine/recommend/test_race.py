"""The live race on tiny grids: its cells are the grid's, its decisions the replay's, and a killed
race restarts without losing or repeating an epoch."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.grid import worker as grid_worker
from engine.cell_files import ATTEMPTS_FILE, BEST_CKPT, METRICS_FILE, RECOMMEND_DIR, RECOMMEND_JSON, RESULT_FILE
from engine.data.synthetic import make_demo_dataset
from engine.grid.run import run_grid
from engine.grid.config import grid_from_dict
from engine.recommend.__main__ import main as recommend_main
from engine.recommend.policy import CellView, RaceSettings
from engine.recommend.race import run_race
from engine.recommend.replay import replay_run
from tests.engine.grid.helpers import REPO, events, tiny_grid

# lp_ft probes for 2 of 4 epochs, so the phase rule carries it past rung 2; a wide margin sends
# both finalists to the second seed, so every stage of the race runs.
SETTINGS = RaceSettings(eta=2, min_rung=2, phase_epochs=1, finalists=2, seed_margin=1.0)
TIMING_KEYS = {"train_s"}  # wall-clock totals: the only part of a result that may differ


def race_grid(data: Path, out: Path):
    return grid_from_dict(tiny_grid(data, out, strategies=["ft", "lp", "lp_ft"],
                                    cell={"trainer": {"epochs": 4, "patience": 10}}), "test")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, a finished grid of it, and a race on the same grid in another out_dir."""
    root = tmp_path_factory.mktemp("race")
    data = make_demo_dataset(root / "data", classes=3, per_class=12, size=32, seed=4)
    run_grid(race_grid(data, root / "grid"))
    outcomes = run_race(race_grid(data, root / "race"), SETTINGS)
    return data, root, outcomes


def epoch_rows(cell: Path) -> list[dict]:
    rows = [json.loads(line) for line in (cell / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def same_cell(a: Path, b: Path) -> None:
    """Two folders hold the same trained cell: result (but wall time), epochs, best weights."""
    ra, rb = (json.loads((c / RESULT_FILE).read_text()) for c in (a, b))
    assert {k: v for k, v in ra.items() if k not in TIMING_KEYS} == {k: v for k, v in rb.items() if k not in TIMING_KEYS}
    assert epoch_rows(a) == epoch_rows(b)
    wa, wb = (torch.load(c / BEST_CKPT, weights_only=True) for c in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def decisions(outcomes) -> list:
    return [(o.case.name, o.decision.recommendation, o.decision.stops, o.decision.carried,
             {k: len(v.points) for k, v in o.seen.items()}) for o in outcomes]


def test_race_trains_fewer_epochs_and_its_finished_cells_are_the_grids(runs):
    data, root, outcomes = runs
    (outcome,) = outcomes
    finished = [c for c in (root / "race").iterdir() if (c / RESULT_FILE).is_file()]
    assert finished and len(finished) < len(list((root / "grid").glob(f"*/{RESULT_FILE}")))
    for cell in finished:
        same_cell(cell, root / "grid" / cell.name)
    trained = {k: len(v.points) for k, v in outcome.seen.items()}
    assert sum(trained.values()) < 3 * 2 * 4  # arms x seeds x epochs of the full grid
    assert outcome.decision.carried == {2: ["lp_ft"]}


def test_replay_of_the_finished_grid_decides_as_the_live_race(runs):
    data, root, outcomes = runs
    assert decisions(replay_run(root / "grid", SETTINGS)) == decisions(outcomes)


def test_grid_after_the_race_trains_only_the_rest(runs, monkeypatch):
    data, root, outcomes = runs
    race_dir = root / "race_then_grid"
    shutil.copytree(root / "race", race_dir)
    race_epochs = {k: len(v.points) for k, v in outcomes[0].seen.items()}
    finished = {c.name: events(c) for c in race_dir.iterdir() if (c / RESULT_FILE).is_file()}
    trackers = KillAfter(None)
    monkeypatch.setattr(grid_worker, "create_tracker", trackers)
    run_grid(race_grid(data, race_dir))
    for name, before in finished.items():
        assert events(race_dir / name) == before  # a cell the race finished is not started again
    for (arm, seed), cfg in outcomes[0].case.cells.items():
        trained = [epoch for cell_id, epoch in trackers.logged if cell_id == cfg.cell_id]
        assert trained == list(range(race_epochs.get((arm, seed), 0), 4 if cfg.cell_id not in finished else 0))
        same_cell(race_dir / cfg.cell_id, root / "grid" / cfg.cell_id)
    # the finished grid answers `recommend` at once, with the same decisions
    logged = len(trackers.logged)
    assert decisions(run_race(race_grid(data, race_dir), SETTINGS)) == decisions(outcomes)
    assert len(trackers.logged) == logged


class KillAfter:
    """Trackers that count every epoch logged and raise KeyboardInterrupt at the `kill_at`-th."""

    def __init__(self, kill_at: int | None):
        self.kill_at, self.logged = kill_at, []

    def __call__(self, cfg, grid_name="", provenance=None):  # create_tracker's signature
        outer = self

        class Tracker:
            def log(self, metrics, step):
                outer.logged.append((cfg.cell_id, step))
                if len(outer.logged) == outer.kill_at:
                    raise KeyboardInterrupt("killed by the test")

            def summary(self, result):
                pass

            def finish(self):
                pass
        return Tracker()


def test_killed_race_restarts_with_the_same_decisions_and_no_epoch_twice(runs, monkeypatch):
    data, root, outcomes = runs
    trackers = KillAfter(kill_at=5)  # mid-rung: after the first epoch of the third cell of rung 2
    monkeypatch.setattr(grid_worker, "create_tracker", trackers)
    grid = race_grid(data, root / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_race(grid, SETTINGS)
    assert len(trackers.logged) == 5
    trackers.kill_at = None
    restarted = run_race(grid, SETTINGS)
    assert len(trackers.logged) == len(set(trackers.logged))  # no epoch trained twice
    assert decisions(restarted) == decisions(outcomes)
    assert len(trackers.logged) == sum(len(v.points) for v in restarted[0].seen.values())


def test_cli_writes_the_report_and_replays(runs, tmp_path, capsys):
    data, root, outcomes = runs
    config = tmp_path / "grid.yaml"
    config.write_text(json.dumps({**tiny_grid(data, root / "race", strategies=["ft", "lp", "lp_ft"],
                                              cell={"trainer": {"epochs": 4, "patience": 10}}),
                                  "recommend": {"eta": 2, "phase_epochs": 1, "seed_margin": 1.0}}))
    assert recommend_main([str(config)]) == 0  # the race dir is finished as far as the race goes
    summary = json.loads(next((root / "race" / RECOMMEND_DIR).glob(f"*/{RECOMMEND_JSON}")).read_text())
    assert summary["recommendation"] == outcomes[0].decision.recommendation
    stopped = {a["arm"]: a["stopped_at_epoch"] for a in summary["arms"]}
    assert stopped == {arm.name: (outcomes[0].decision.stops[arm.name].rung
                                  if arm.name in outcomes[0].decision.stops else None)
                       for arm in outcomes[0].case.arms}
    assert 0 < summary["cost"]["fraction"] < 1
    assert recommend_main(["--replay", str(root / "grid"), "recommend.eta=2", "recommend.phase_epochs=1",
                           "recommend.seed_margin=1.0"]) == 0
    assert f"recommend {outcomes[0].decision.recommendation}" in capsys.readouterr().out
    assert recommend_main(["--replay", str(root / "grid"), "cell.trainer.epochs=3"]) == 2
    assert cli.main(["recommend", "--replay", str(root / "grid"), "recommend.eta=1"]) == 2  # named in stderr
    assert "recommend.eta must be at least 2" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_share_the_race_and_decide_as_one(runs, tmp_path):
    data, root, outcomes = runs
    config = tmp_path / "grid.yaml"
    out = tmp_path / "shared"
    config.write_text(json.dumps({**tiny_grid(data, out, strategies=["ft", "lp", "lp_ft"],
                                              cell={"trainer": {"epochs": 4, "patience": 10}}),
                                  "recommend": {"eta": 2, "phase_epochs": 1, "seed_margin": 1.0}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "engine.recommend", str(config)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    outcome = outcomes[0]
    for (arm, seed), cfg in outcome.case.cells.items():
        folder = out / cfg.cell_id
        trained = len(outcome.seen.get((arm, seed), CellView()).points)
        assert (len(epoch_rows(folder)) if folder.is_dir() else 0) == trained
        if folder.is_dir():  # rung jobs of one cell ran one after another, each from where the last paused
            paused = [json.loads(line).get("epochs") for line in (folder / ATTEMPTS_FILE).read_text().splitlines()
                      if json.loads(line)["event"] == "paused"]
            assert paused == sorted(set(paused))
    summary = json.loads((out / RECOMMEND_DIR / outcome.case.name / RECOMMEND_JSON).read_text())
    assert summary["recommendation"] == outcome.decision.recommendation
