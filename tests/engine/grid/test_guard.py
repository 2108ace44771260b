"""engine/grid/guard.py through run_grid and `python -m engine.grid`: a rerun with a changed config
stops before any cell trains, naming the keys; the same config skips done cells; --restart-changed
moves the changed cells aside and trains them afresh."""
import json
import os
import socket
import time

import pytest
import yaml

from engine.cell_files import CLAIMS_DIR, CONFIG_FILE, GRID_FILE, REPLACED_DIR, RESULT_FILE
from engine.config import to_yaml
from engine.config_guard import ConfigMismatch
from engine.grid.__main__ import main as grid_main
from engine.grid.config import expand_cells, grid_from_dict
from engine.grid.guard import cells_as_trained, check_out_dir
from engine.grid.run import run_grid
from tests.engine.grid.helpers import events, tiny_grid, write_grid

CELLS = ("shapes__tiny_resnet__ft__s684", "shapes__tiny_resnet__lp__s684")


def _grid(data, out, **changes):
    return grid_from_dict(tiny_grid(data, out, **{"seeds": [684], **changes}), "test")


@pytest.fixture
def done_grid(demo_data, tmp_path):
    out = tmp_path / "out"
    assert run_grid(_grid(demo_data, out)) == {cell: "done" for cell in CELLS}
    return out


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_rerun_with_a_changed_lr_stops_naming_the_keys_before_any_cell_trains(done_grid, demo_data):
    before = _files(done_grid)
    with pytest.raises(ConfigMismatch) as error:
        run_grid(_grid(demo_data, done_grid, cell={"optim": {"lr": 0.01}}))
    message = str(error.value)
    for cell in CELLS:
        assert f"{cell} (done): optim.lr: saved 0.001, now 0.01" in message
    assert f"{done_grid / GRID_FILE} was made by another grid" in message
    assert "new out_dir" in message and "--restart-changed" in message
    assert _files(done_grid) == before  # nothing trained, nothing rewritten (grid.yaml included)


def test_a_rerun_with_the_same_config_or_neutral_changes_skips_done_cells(done_grid, demo_data):
    results = {cell: (done_grid / cell / RESULT_FILE).read_bytes() for cell in CELLS}
    neutral = {"data": {"num_workers": 1}, "tracking": {"group": "other"}, "trainer": {"device": "cpu"}}
    for grid in (_grid(demo_data, done_grid), _grid(demo_data, done_grid, cell=neutral, grid={"retries": 5})):
        assert run_grid(grid) == {cell: "done" for cell in CELLS}
    assert all(events(done_grid / cell) == ["start", "done"] for cell in CELLS)
    assert {cell: (done_grid / cell / RESULT_FILE).read_bytes() for cell in CELLS} == results


def test_a_grown_grid_is_no_change(done_grid, demo_data, tmp_path):
    more_data = tmp_path / "more"
    more_data.mkdir()
    grown = _grid(demo_data, done_grid, seeds=[684, 559], strategies=["ft", "lp", "l2_sp"],
                  datasets=[{"name": "shapes", "path": str(demo_data), "format": "imagefolder"},
                            {"name": "more", "path": str(more_data)}])
    cells = cells_as_trained(grown, expand_cells(grown))
    assert len(cells) == 12 and check_out_dir(grown, cells) == []


def test_restart_changed_moves_only_the_changed_cells_aside_and_trains_them_afresh(done_grid, demo_data):
    ft, lp = CELLS
    old_lp = (done_grid / lp / RESULT_FILE).read_bytes()
    grid = _grid(demo_data, done_grid, cell={"trainer": {"patience": 7}})
    # FT's folder already holds the new config (as if trained under it): only LP's differs.
    saved = yaml.safe_load((done_grid / ft / CONFIG_FILE).read_text())
    saved["trainer"]["patience"] = 7
    (done_grid / ft / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigMismatch, match=f"1 cell\\(s\\) hold results of another config"):
        run_grid(grid)
    assert run_grid(grid, restart_changed=True) == {cell: "done" for cell in CELLS}
    moved = sorted((done_grid / REPLACED_DIR).glob("*/*"))
    assert [p.name for p in moved] == [lp]
    assert (moved[0] / RESULT_FILE).read_bytes() == old_lp and events(moved[0]) == ["start", "done"]
    assert events(done_grid / lp) == ["start", "done"]  # a fresh folder, trained once
    assert yaml.safe_load((done_grid / lp / CONFIG_FILE).read_text())["trainer"]["patience"] == 7
    assert events(done_grid / ft) == ["start", "done"]  # not moved, not retrained
    assert yaml.safe_load((done_grid / GRID_FILE).read_text())["cell"]["trainer"]["patience"] == 7
    run_grid(grid, restart_changed=True)  # nothing differs any more: nothing moves
    assert sorted((done_grid / REPLACED_DIR).glob("*/*")) == moved


def test_grid_yaml_alone_is_compared_when_no_cell_has_results_yet(demo_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / GRID_FILE).write_text(to_yaml(_grid(demo_data, out, cell={"optim": {"weight_decay": 0.1}})))
    grid = _grid(demo_data, out, cell={"trainer": {"epochs": 1}})
    with pytest.raises(ConfigMismatch) as error:
        run_grid(grid)
    message = str(error.value)
    assert "optim.weight_decay: saved 0.1, now 0.0 (in 2 cell(s)" in message
    assert "trainer.epochs: saved 2, now 1" in message and "hold results" not in message
    assert not any(p.name in CELLS for p in out.iterdir())  # no cell started
    assert run_grid(grid, restart_changed=True) == {cell: "done" for cell in CELLS}
    assert not (out / REPLACED_DIR).exists()  # no cell had results to move
    assert yaml.safe_load((out / GRID_FILE).read_text())["cell"]["trainer"]["epochs"] == 1


def test_restart_changed_refuses_a_cell_a_live_worker_is_training(done_grid, demo_data):
    lp = done_grid / CELLS[1]
    (lp / RESULT_FILE).unlink()  # resumable, and claimed by a live process (this one)
    number = max(int(p.stem) for p in (lp / CLAIMS_DIR).glob("*.json")) + 1
    now = time.time()
    (lp / CLAIMS_DIR / f"{number:06d}.json").write_text(json.dumps(
        {"state": "running", "host": socket.gethostname(), "pid": os.getpid(), "token": "x", "started": now,
         "heartbeat": now}))
    with pytest.raises(ValueError, match=f"cell {CELLS[1]} is being trained by .*:{os.getpid()}"):
        run_grid(_grid(demo_data, done_grid, cell={"optim": {"lr": 0.01}}), restart_changed=True)
    assert (lp / CONFIG_FILE).is_file()


def test_the_command_line_stops_with_exit_2_and_names_the_keys(done_grid, demo_data, tmp_path, capsys):
    config = write_grid(tmp_path / "grid.yaml", tiny_grid(demo_data, done_grid, seeds=[684]))
    assert grid_main([str(config), "cell.optim.betas=[0.8,0.99]"]) == 2
    err = capsys.readouterr().err
    assert "optim.betas: saved [0.9, 0.999], now [0.8, 0.99]" in err and "--restart-changed" in err
