"""grid.parallel=cells (engine/grid/cells_mode.py) through run_grid and `python -m engine.grid`
worker processes: each cell once, failures recorded and retried, dead workers' cells taken over."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cell_files import ATTEMPTS_FILE, CLAIMS_DIR, FAILURE_FILE
from engine.grid.claims import latest
from engine.grid.config import grid_from_dict
from engine.grid.run import run_grid
from engine.report import write_report
from tests.engine.grid.helpers import REPO, events, results, spawn, tiny_grid, write_grid


def test_grid_runs_each_cell_once_and_skips_done_cells(demo_data, tmp_path):
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path / "out"), "test")
    states = run_grid(grid)
    assert states == {f"shapes__tiny_resnet__{s}__s{seed}": "done" for s in ("ft", "lp") for seed in (684, 559)}
    for cell in states:
        folder = tmp_path / "out" / cell
        assert events(folder) == ["start", "done"]
        assert latest(folder / CLAIMS_DIR)[1]["state"] == "released"
        assert [json.loads(r)["epoch"] for r in (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (tmp_path / "out" / "grid.yaml").is_file()
    run_grid(grid)  # a second run finds everything done
    assert all(events(tmp_path / "out" / cell) == ["start", "done"] for cell in states)


def test_grid_failing_cells_are_recorded_retried_and_reported(demo_data, tmp_path):
    broken = tmp_path / "one_class"  # a dataset that cannot be indexed: a single class
    shutil.copytree(demo_data / "circles", broken / "circles")
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path / "out", seeds=[684], grid={"retries": 1},
                                    datasets=[{"name": "shapes", "path": str(demo_data)},
                                              {"name": "broken", "path": str(broken)}],
                                    strategies=["ft", {"name": "g_lf", "period_epochs": 0}]), "test")
    states = run_grid(grid)
    assert states == {"shapes__tiny_resnet__ft__s684": "done", "shapes__tiny_resnet__g_lf__s684": "failed",
                      "broken__tiny_resnet__ft__s684": "failed", "broken__tiny_resnet__g_lf__s684": "failed"}
    out = tmp_path / "out"
    bad_strategy = json.loads((out / "shapes__tiny_resnet__g_lf__s684" / FAILURE_FILE).read_text())
    assert bad_strategy["attempts"] == 2 and "period_epochs must be at least 1" in bad_strategy["reason"]
    assert bad_strategy["traceback"] and len(bad_strategy["history"]) == 2
    bad_data = json.loads((out / "broken__tiny_resnet__ft__s684" / FAILURE_FILE).read_text())
    assert bad_data["reason"].startswith("ValueError") and "class" in bad_data["reason"]
    assert events(out / "broken__tiny_resnet__ft__s684") == ["start", "failed", "start", "failed"]

    report = write_report(out).read_text()
    assert "4 cells; 1 done, 3 failed" in report
    assert "| shapes__tiny_resnet__g_lf__s684 | 2 | ValueError: strategy.period_epochs must be at least 1" in report


def test_grid_takes_over_the_cell_of_a_dead_worker(demo_data, tmp_path):
    grid = grid_from_dict(tiny_grid(demo_data, tmp_path / "out", strategies=["ft"], seeds=[684]), "test")
    folder = tmp_path / "out" / "shapes__tiny_resnet__ft__s684"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / CLAIMS_DIR).mkdir(parents=True)
    record = {"state": "running", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}
    (folder / CLAIMS_DIR / "000001.json").write_text(json.dumps(record))
    assert run_grid(grid) == {folder.name: "done"}
    failure = json.loads((folder / FAILURE_FILE).read_text())
    assert failure["attempts"] == 1 and f":{dead.pid} died" in failure["reason"]


def _shared_needlessly(starts: list[dict]) -> list[str]:
    """The work groups (dataset x backbone) a second worker joined although another group had a
    cell no one had started and no other worker was busy in (with a second of slack for the
    worker's look at the states before it claims)."""
    def group(row):
        return tuple(row["cell"].split("__")[:2])
    needless = []
    for row in starts:
        earlier = [r for r in starts if r["time"] < row["time"]]
        if not any(group(r) == group(row) and r["pid"] != row["pid"] for r in earlier) or \
                any(group(r) == group(row) and r["pid"] == row["pid"] for r in earlier):
            continue  # the first worker in its group, or one that stays in it
        for other in {group(r) for r in starts} - {group(row)}:
            unstarted = any(group(r) == other and r["time"] > row["time"] for r in starts)
            busy = any(group(r) == other and r["pid"] != row["pid"] and r["time"] < row["time"]
                       and r["done"] > row["time"] - 1.0 for r in starts)
            if unstarted and not busy:
                needless.append(f"{row['cell']} by {row['pid']}")
    return needless


# Worker processes take seconds each to start; minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_grid_two_worker_processes_run_each_cell_once_loading_each_group_once(demo_data, tmp_path):
    grid = tiny_grid(demo_data, tmp_path / "out", backbones=["tiny_resnet", "tiny_vgg"],
                     strategies=["ft", "lp", "lp_ft"], seeds=[684])
    config = write_grid(tmp_path / "g.yaml", grid)
    workers = [spawn(config, tmp_path / f"worker{i}.log", threads=1) for i in range(2)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0], (tmp_path / "worker0.log").read_text()[-3000:]
    cells = sorted((tmp_path / "out").glob("shapes__*"))
    assert len(cells) == 6 and len(results(tmp_path / "out")) == 6
    starts = []
    for cell in cells:
        assert events(cell) == ["start", "done"], cell.name  # trained exactly once
        start, done = [json.loads(line) for line in (cell / ATTEMPTS_FILE).read_text().splitlines()]
        starts.append({**start, "cell": cell.name, "done": done["time"]})
    # Each dataset x backbone loaded by one worker unless both had nothing else left.
    assert _shared_needlessly(starts) == []


@pytest.mark.deepspeed
def test_grid_under_the_deepspeed_launcher_shares_cells_between_ranks(demo_data, tmp_path):
    pytest.importorskip("deepspeed", reason="needs deepspeed")
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, tmp_path / "out", strategies=["ft", "lp", "lp_ft"]))
    launcher = Path(sys.executable).parent / "deepspeed"
    # `python -m engine.grid` whose first cell per rank waits for the other rank's first start
    # (both_ranks_grid.py), so that rank 0 cannot finish every cell before rank 1 is up.
    done = subprocess.run([str(launcher), "--num_gpus", "2", "--module", "tests.engine.grid.both_ranks_grid",
                           str(config)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = sorted((tmp_path / "out").glob("shapes__*"))
    assert len(cells) == 6 and len(results(tmp_path / "out")) == 6
    ranks = set()
    for cell in cells:
        rows = [json.loads(line) for line in (cell / ATTEMPTS_FILE).read_text().splitlines()]
        assert [r["event"] for r in rows] == ["start", "done"]
        ranks.add(rows[0]["rank"])
    assert ranks == {0, 1}  # both workers trained cells
