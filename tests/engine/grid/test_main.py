"""The grid's command line (engine/grid/__main__.py, through `medft grid`)."""
import logging
import signal
import time

import pytest

from engine import cli
from engine.cell_files import CLAIMS_DIR, METRICS_FILE, RESULT_FILE
from engine.grid.claims import latest
from tests.engine.grid.helpers import events, spawn, tiny_grid, write_grid


def test_grid_command_lists_cells_and_reports_bad_input(demo_data, tmp_path, capsys):
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, tmp_path / "out"))
    assert cli.main(["grid", "--list", str(config), "seeds=[7]"]) == 0
    assert capsys.readouterr().out.split() == ["pending", "shapes__tiny_resnet__ft__s7",
                                               "pending", "shapes__tiny_resnet__lp__s7"]
    assert cli.main(["grid", "--print-config", str(config), "grid.retries=5"]) == 0
    assert "retries: 5" in capsys.readouterr().out
    assert cli.main(["grid", str(config), "backbones=[resnet5]"]) == 2
    assert "unknown backbone 'resnet5'" in capsys.readouterr().err


@pytest.fixture
def root_level():
    """`-v` sets the root logger to DEBUG; the tests after this one get their level back."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_grid_command_with_verbose_prints_the_traceback_of_an_error(demo_data, tmp_path, capsys, root_level):
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, tmp_path / "out"))
    for argv in (["grid", str(config), "backbones=[resnet5]"], ["-v", "grid", str(config), "backbones=[resnet5]"],
                 ["grid", "-v", str(config), "backbones=[resnet5]"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "unknown backbone 'resnet5'" in err and ("Traceback" in err) == ("-v" in argv), argv


# Worker processes take seconds each to start; minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_medft_grid_exits_130_on_ctrl_c_with_the_claim_released(demo_data, tmp_path):
    out = tmp_path / "out"
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, out, strategies=["ft"], seeds=[684],
                                                       cell={"trainer": {"epochs": 50, "patience": 50}}))
    cell = out / "shapes__tiny_resnet__ft__s684"
    grid = spawn(config, tmp_path / "grid.log", entry=("-m", "engine.cli", "grid"))
    deadline = time.time() + 300
    while grid.poll() is None and time.time() < deadline and not (cell / METRICS_FILE).is_file():
        time.sleep(0.05)  # until it trains
    grid.send_signal(signal.SIGINT)
    assert grid.wait(timeout=120) == 130, (tmp_path / "grid.log").read_text()[-3000:]
    assert latest(cell / CLAIMS_DIR)[1]["state"] == "released"
    assert events(cell) == ["start", "interrupted"] and not (cell / RESULT_FILE).exists()
    assert "interrupted; claims released" in (tmp_path / "grid.log").read_text()
