"""A killed worker never costs a cell (engine/grid/worker.py, `settle_takeover`): workers killed at
random moments after their cell made progress cost no attempt, and every cell ends exactly as in an
unkilled run; a poison cell that kills its worker before an epoch completes fails after
1 + grid.retries attempts, and `--retry-failed` runs it again."""
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from configs import preset_path
from engine import cli
from engine.cell_files import ATTEMPTS_FILE, CLAIMS_DIR, FAILURE_FILE, METRICS_FILE
from engine.config import read_yaml
from engine.data.synthetic import make_demo_dataset
from engine.demo import DEMO_IMAGES_PER_CLASS
from engine.grid.claims import attempt_start, latest
from engine.grid.config import grid_from_dict
from engine.grid.run import run_grid
from engine.grid.worker import resume_epoch
from tests.engine.grid.helpers import events, results, spawn, tiny_grid, write_grid


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _progressed(out: Path, pid: int, min_epochs: int, last_epoch: int) -> bool:
    """Whether the cell that worker `pid` runs has completed `min_epochs` epochs in this attempt
    (its resume state moved on) and is not past epoch `last_epoch` (so that the kill lands mid-cell,
    not while the worker starts its next one)."""
    for claims in out.glob(f"*/{CLAIMS_DIR}"):
        number, record = latest(claims)
        if record is None or record.get("state") != "running" or record.get("pid") != pid:
            continue
        start = attempt_start(claims.parent, number)
        return start is not None and start["resume_epoch"] + min_epochs <= resume_epoch(claims.parent) <= last_epoch
    return False


def _kill_repeatedly(config: Path, out: Path, log: Path, signals, rng: random.Random, last_epoch: int,
                     threads: int) -> int:
    """Starts a worker and sends it the next signal once its cell progressed 1-2 epochs, plus up to
    0.3 s (mid-epoch, mid-checkpoint); returns how many signals were sent before the grid finished."""
    sent = 0
    for sig in signals:
        worker = spawn(config, log, threads=threads)
        wanted = rng.randint(1, 2)
        deadline = time.time() + 300
        while worker.poll() is None and time.time() < deadline and not _progressed(out, worker.pid, wanted,
                                                                                    last_epoch):
            time.sleep(0.02)
        if worker.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 0.3))
        worker.send_signal(sig)
        code = worker.wait(timeout=120)
        sent += 1
        if sig == signal.SIGTERM:  # a stopped worker frees its claim at once, and says so
            assert code == 130, log.read_text()[-3000:]
            assert all(latest(claims)[1]["state"] == "released" for claims in out.glob(f"*/{CLAIMS_DIR}"))
    return sent


def _assert_resumed_where_killed(out: Path, whole: Path) -> None:
    """Each cell's epochs equal the unkilled run's, and every restart resumed at the epoch its dead
    worker had completed: no epoch but the one a kill interrupted was trained twice."""
    for cell in sorted(p.parent.name for p in whole.glob("*/result.json")):
        assert events(out / cell).count("done") == 1, events(out / cell)
        rows, reference = _rows(out / cell / METRICS_FILE), _rows(whole / cell / METRICS_FILE)
        assert [(r["epoch"], r["train/loss"]) for r in rows] == [(r["epoch"], r["train/loss"]) for r in reference]
        attempts = _rows(out / cell / ATTEMPTS_FILE)
        for died, after in zip(attempts, attempts[1:]):
            if died["event"] == "died":
                assert after["event"] == "start" and after["resume_epoch"] == died["resume_epoch"], attempts


SMALL = {"strategies": ["lp_ft"], "grid": {"retries": 1},
         "cell": {"trainer": {"epochs": 6, "patience": 10, "deterministic": True}}}


# Worker processes take seconds each to start; minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_killed_workers_cost_no_attempt_and_cells_end_as_unkilled(demo_data, tmp_path):
    expected_states = run_grid(grid_from_dict(tiny_grid(demo_data, tmp_path / "whole", **SMALL), "test"))
    out = tmp_path / "killed"
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, out, **SMALL))
    signals = (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL)
    # As many threads as the reference run: CPU results depend on the thread count.
    sent = _kill_repeatedly(config, out, tmp_path / "worker.log", signals, random.Random(0), last_epoch=4,
                            threads=torch.get_num_threads())
    assert sent == len(signals)
    assert run_grid(grid_from_dict(tiny_grid(demo_data, out, **SMALL), "test")) == expected_states
    assert results(out) == results(tmp_path / "whole")  # deterministic training resumes exactly
    _assert_resumed_where_killed(out, tmp_path / "whole")
    died = [r for p in out.glob(f"*/{ATTEMPTS_FILE}") for r in _rows(p) if r["event"] == "died"]
    assert len(died) == 2 and not any(r["charged"] for r in died)  # every SIGKILL came after progress
    assert not list(out.glob(f"*/{FAILURE_FILE}"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_demo_grid_survives_a_dozen_sigkills(tmp_path):
    """The acceptance of the issue: the demo grid, its own retries, 12 SIGKILLs, one final run."""
    data = tmp_path / "data"
    make_demo_dataset(data / "shapes", per_class=DEMO_IMAGES_PER_CLASS, seed=0)
    demo = read_yaml(preset_path("demo.yaml"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's thread count, in the workers too
    try:
        expected_states = run_grid(grid_from_dict({**demo, "data_root": str(data), "out_dir": str(tmp_path / "whole")},
                                                  "demo"))
        out = tmp_path / "killed"
        config = write_grid(tmp_path / "g.yaml", {**demo, "data_root": str(data), "out_dir": str(out)})
        epochs = demo["cell"]["trainer"]["epochs"]
        sent = _kill_repeatedly(config, out, tmp_path / "worker.log", (signal.SIGKILL,) * 12, random.Random(1),
                                last_epoch=epochs - 2, threads=1)
        assert sent >= 10
        final = spawn(config, tmp_path / "final.log", threads=1)
        assert final.wait(timeout=1800) == 0, (tmp_path / "final.log").read_text()[-3000:]
    finally:
        torch.set_num_threads(threads)
    assert expected_states == {cell: "done" for cell in expected_states} and len(expected_states) == 16
    assert results(out) == results(tmp_path / "whole")  # every cell done, as in the unkilled run
    _assert_resumed_where_killed(out, tmp_path / "whole")


# Worker processes take seconds each to start; minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_poison_cell_fails_after_its_attempts_and_retry_failed_runs_it_again(demo_data, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, out, strategies=["ft", "lp"], seeds=[684],
                                                       grid={"retries": 1}))
    poison = "shapes__tiny_resnet__ft__s684"
    os.environ["POISON_CELL"] = poison  # read by the wrapper in the workers only
    try:
        codes = []
        while not codes or codes[-1] == -signal.SIGKILL and len(codes) < 5:
            worker = spawn(config, tmp_path / "worker.log", entry=("-m", "tests.engine.grid.poison_grid"))
            codes.append(worker.wait(timeout=300))
    finally:
        del os.environ["POISON_CELL"]
    log = (tmp_path / "worker.log").read_text()[-3000:]
    assert codes == [-signal.SIGKILL] * 2 + [1], log  # 1 + retries deaths, then the grid ends with a failure
    assert events(out / "shapes__tiny_resnet__lp__s684") == ["start", "done"]
    failure = json.loads((out / poison / FAILURE_FILE).read_text())
    assert failure["attempts"] == 2 and "died before completing an epoch" in failure["reason"]
    assert [r["charged"] for r in _rows(out / poison / ATTEMPTS_FILE) if r["event"] == "died"] == [True, True]

    assert cli.main(["grid", "--list", str(config)]) == 0
    listed = capsys.readouterr().out
    assert f"failed   {poison}  (worker " in listed and "died before completing an epoch" in listed
    assert cli.main(["grid", str(config), "--retry-failed"]) == 0  # without the poison now
    assert "requeued" in events(out / poison) and events(out / poison)[-2:] == ["start", "done"]
    requeued = next(r for r in _rows(out / poison / ATTEMPTS_FILE) if r["event"] == "requeued")
    assert requeued["previous_attempts"] == 2 and requeued["reason"] == failure["reason"]
    assert not (out / poison / FAILURE_FILE).exists() and len(results(out)) == 2
