import dataclasses
from importlib import resources
from pathlib import Path

import pytest
import yaml

from engine.config import CellConfig, load_cell_config, to_yaml


def test_config_defaults_follow_the_spec_protocol():
    cfg = load_cell_config()
    assert (cfg.data.resize, cfg.data.crop) == (232, 224)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("adam", 1e-3, "cosine")
    assert (cfg.trainer.epochs, cfg.trainer.patience, cfg.trainer.monitor) == (30, 3, "accuracy")
    assert (cfg.data.train_batch_size, cfg.data.eval_batch_size) == (96, 64)
    assert cfg.data.augment is False and cfg.strategy.name == "ft"


def test_config_loads_yaml_and_applies_dotted_overrides(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("trainer:\n  epochs: 7\nstrategy:\n  name: lp\ndata:\n  mean: [0.5, 0.5, 0.5]\n")
    cfg = load_cell_config(path, ["trainer.epochs=3", "optim.lr=0.01", "data.path=/x y/z", "optim.t_max_epochs=null"])
    assert cfg.trainer.epochs == 3 and cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.strategy.name == "lp" and cfg.data.mean == (0.5, 0.5, 0.5)
    assert cfg.data.path == "/x y/z" and cfg.optim.t_max_epochs is None


def test_config_yaml_round_trip_gives_the_same_config(tmp_path):
    cfg = load_cell_config(None, ["strategy.name=lp", "trainer.seed=5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_cell_config(path) == cfg


@pytest.mark.parametrize("override, needle", [
    ("trainer.epoch=5", "unknown key 'trainer.epoch'"),
    ("trainer.epochs=five", "'trainer.epochs' must be int"),
    ("trainer.epochs=true", "'trainer.epochs' must be int"),
    ("optim.lr=[1]", "'optim.lr' must be float"),
    ("trainer.amp=fp8", "'trainer.amp' must be one of"),
    ("data.mean=[1, 2]", "'data.mean' must have 3 items"),
    ("strategy.name=nope", "unknown strategy 'nope'"),
    ("strategy.alpha=1", "unknown key 'strategy.alpha'"),
    ("data=3", "'data' must be a mapping"),
    ("nonsense", "must look like key.path=value"),
    ("trainer.epochs=0", "trainer.epochs must be at least 1"),
    ("trainer.patience=0", "trainer.patience must be at least 1"),
    ("trainer.max_steps_per_epoch=0", "trainer.max_steps_per_epoch must be at least 1"),
    ("optim.lr=-0.1", "optim.lr must be at least 0"),
    ("optim.t_max_epochs=-3", "optim.t_max_epochs must be at least 1"),
    ("loss.class_weights=inverse", "'loss.class_weights' must be one of"),
    ("data.sampler=oversample", "'data.sampler' must be one of"),
    ("data.on_label_conflict=ignore", "'data.on_label_conflict' must be one of"),
    ("data.dicom_window=[40, 0]", "data.dicom_window must be [center, width] with width >= 1"),
    ("data.dicom_frame=-1", "data.dicom_frame must be at least 0"),
    ("data.group_pattern=P[0-9]+", "data.group_pattern needs a capture group"),
])
def test_config_error_names_the_key(override, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_cell_config(None, [override])


def test_config_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  epochs: 1\n  colour: red\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*trainer\.colour"):
        load_cell_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_cell_config(tmp_path / "missing.yaml")


def test_configs_every_shipped_yaml_loads():
    from engine.grid.config import cell_keys, load_grid_config

    root = Path(str(resources.files("configs")))
    found = sorted(root.rglob("*.yaml"))
    assert [p.name for p in found] == ["demo.yaml", "modern.yaml", "paper.yaml"]  # grid presets; update when presets are added
    for path in found:
        data = yaml.safe_load(path.read_text())
        grid = load_grid_config(path)
        assert grid.cell == data.get("cell", {}) and len(cell_keys(grid)) > 1


def test_config_every_section_is_a_dataclass_with_defaults():
    for f in dataclasses.fields(CellConfig):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
