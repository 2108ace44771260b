"""The grid's command line (engine/grid/__main__.py, through `medft grid`)."""
from engine import cli
from tests.engine.grid.helpers import tiny_grid, write_grid


def test_grid_command_lists_cells_and_reports_bad_input(demo_data, tmp_path, capsys):
    config = write_grid(tmp_path / "g.yaml", tiny_grid(demo_data, tmp_path / "out"))
    assert cli.main(["grid", "--list", str(config), "seeds=[7]"]) == 0
    assert capsys.readouterr().out.split() == ["pending", "shapes__tiny_resnet__ft__s7",
                                               "pending", "shapes__tiny_resnet__lp__s7"]
    assert cli.main(["grid", "--print-config", str(config), "grid.retries=5"]) == 0
    assert "retries: 5" in capsys.readouterr().out
    assert cli.main(["grid", str(config), "backbones=[resnet5]"]) == 2
    assert "unknown backbone 'resnet5'" in capsys.readouterr().err
