import copy

import pytest
import yaml

from configs import preset_path
from engine.cell_files import CellKey, parse_cell_id
from engine.grid.config import cell_keys, expand_cells, grid_from_dict, load_grid_config
from strategies.sp_regularized import SpConfig

BASE = {"name": "g", "out_dir": "runs/g", "datasets": [{"name": "shapes", "path": "shapes"}],
        "backbones": ["tiny_resnet"], "strategies": ["ft"], "seeds": [684]}


def _grid(**changes):
    return {**copy.deepcopy(BASE), **changes}


def test_grid_expands_every_combination_with_ids_and_shared_settings(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    grid = grid_from_dict(_grid(data_root=str(tmp_path), datasets=[{"name": "a", "path": "a", "format": "imagefolder"},
                                                                   {"name": "b", "path": str(tmp_path / "b")}],
                                backbones=["tiny_resnet", "tiny_vgg"],
                                strategies=["ft", {"name": "l2_sp", "alpha": 0.02}], seeds=[1, 2],
                                cell={"trainer": {"epochs": 3}, "data": {"crop": 32}}), "test")
    cells = expand_cells(grid)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    first = cells[0]
    assert first.cell_id == "a__tiny_resnet__ft__s1" and first.name == first.cell_id
    assert first.data.path == str(tmp_path / "a") and first.data.format == "imagefolder"
    assert (first.trainer.epochs, first.data.crop, first.trainer.out_dir) == (3, 32, "runs/g")
    assert first.tracking.group == "g"
    sp = next(c for c in cells if c.cell_id == "b__tiny_vgg__l2_sp__s2")
    assert isinstance(sp.strategy, SpConfig) and sp.strategy.alpha == 0.02 and sp.model.backbone == "tiny_vgg"
    assert sp.data.path == str(tmp_path / "b") and sp.trainer.seed == 2


def test_grid_seeds_default_to_the_study_seeds():
    grid = grid_from_dict({k: v for k, v in _grid().items() if k != "seeds"}, "test")
    assert grid.seeds == [684, 559, 629]


def test_cell_id_round_trips():
    key = CellKey("chest_xray", "resnet50", "lp_ft", 684)
    assert parse_cell_id(key.cell_id) == key
    with pytest.raises(ValueError, match="not a grid cell id"):
        parse_cell_id("report")


@pytest.mark.parametrize("changes, needle", [
    ({"seed": [1]}, "unknown key 'seed'"),
    ({"strategies": ["ft", "nope"]}, "'strategies[1].name': unknown strategy 'nope'"),
    ({"strategies": [{"name": "l2_sp", "alpah": 1}]}, "unknown key 'strategies[0].alpah'"),
    ({"strategies": [{"alpha": 1}]}, "'strategies[0]' needs a 'name'"),
    ({"backbones": []}, "'backbones' must list at least one entry"),
    ({"seeds": ["x"]}, "'seeds[0]' must be int"),
    ({"datasets": [{"name": "a__b", "path": "x"}]}, "'datasets[0].name'"),
    ({"datasets": [{"path": "x"}]}, "'datasets[0].name' = '' must be"),
    ({"datasets": [{"name": "x"}]}, "'datasets[0].path' must be set"),
    ({"out_dir": ""}, "'out_dir' must be set"),
    ({"grid": {"parallel": "both"}}, "'grid.parallel' must be one of"),
    ({"grid": {"heartbeat_s": 10, "stale_after_s": 15}}, "'grid.stale_after_s' must be at least twice"),
    ({"cell": {"trainer": {"epochz": 1}}}, "unknown key 'cell.trainer.epochz'"),
    ({"cell": {"optim": {"lr": "fast"}}}, "'cell.optim.lr' must be float"),
    ({"cell": {"model": {"backbone": "vgg19"}}}, "'cell.model.backbone' is set per cell by the grid's backbones"),
    ({"cell": {"strategy": {"name": "lp"}}}, "'cell.strategy' is set per cell"),
    ({"cell": {"data": {"path": "/x"}}}, "'cell.data.path' is set per cell"),
])
def test_bad_grid_is_rejected_naming_the_key(changes, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        grid_from_dict(_grid(**changes), "grid.yaml")


def test_bad_grid_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_grid(cell={"trainer": {"colour": 1}})))
    with pytest.raises(ValueError, match=r"bad\.yaml.*cell\.trainer\.colour"):
        load_grid_config(path)
    with pytest.raises(ValueError, match=r"bad\.yaml \+ overrides.*unknown key 'grid.retry'"):
        load_grid_config(tmp_path / "bad.yaml", ["grid.retry=1", "cell.trainer={}"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_grid_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("changes, needle", [
    ({"datasets": [{"name": "shapes", "path": "/nowhere/shapes"}]}, r"'datasets\[0\].path' of dataset 'shapes' "
                                                                     r"does not exist: /nowhere/shapes"),
    ({"backbones": ["resnet5"]}, "unknown backbone 'resnet5'"),
    ({"strategies": ["ft", "lp", "ft"]}, r"duplicate cell ids \['shapes__tiny_resnet__ft__s684'\]"),
    ({"seeds": [1, 1]}, "duplicate cell ids"),
])
def test_expand_rejects_what_only_the_file_system_or_registry_knows(tmp_path, changes, needle):
    (tmp_path / "shapes").mkdir()
    grid = grid_from_dict(_grid(data_root=str(tmp_path), **changes), "grid.yaml")
    with pytest.raises(ValueError, match=needle):
        expand_cells(grid, "grid.yaml")


def test_paper_grid_is_the_study_432_cells(tmp_path):
    grid = load_grid_config(preset_path("paper.yaml"), [f"data_root={tmp_path}"])
    assert len(grid.datasets) == 6 and grid.backbones == ["resnet50", "densenet121", "vgg19"]
    assert [s for s in grid.strategies] == ["ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"]
    assert grid.seeds == [684, 559, 629]
    for entry in grid.datasets:
        (tmp_path / entry.path).mkdir()
    cells = expand_cells(grid)
    assert len(cells) == len(cell_keys(grid)) == 432
    assert cells[0].trainer.epochs == 30 and cells[0].data.crop == 224  # the shared protocol's defaults


def test_grid_weights_path_may_name_each_cells_backbone(tmp_path):
    (tmp_path / "shapes").mkdir()
    grid = grid_from_dict(_grid(data_root=str(tmp_path), backbones=["tiny_resnet", "tiny_densenet"],
                                cell={"model": {"weights": "/w/{backbone}.pth"}}), "test")
    assert {c.model.backbone: c.model.weights for c in expand_cells(grid)} == {
        "tiny_resnet": "/w/tiny_resnet.pth", "tiny_densenet": "/w/tiny_densenet.pth"}
    assert grid.cell["model"]["weights"] == "/w/{backbone}.pth"  # the grid itself keeps the template
