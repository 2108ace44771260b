"""Tests of engine/demo_source.py: the source pretraining of the demo's backbones."""
from __future__ import annotations

import json

import pytest
import torch

from engine.cell_files import ATTEMPTS_FILE, BEST_CKPT, cell_dir
from engine.config import load_cell_config
from engine.data.synthetic import SOURCE_PATTERNS, make_demo_dataset
from engine.demo import demo_grid
from engine.demo_source import SourceTask, pretrain_on_source, source_grid, source_weights
from engine.grid_config import expand_cells
from engine.models import backbone_spec, create_backbone
from engine.trainer import train_cell

BACKBONES = ["tiny_resnet", "tiny_densenet"]
TINY = ["cell.data.resize=36", "cell.data.crop=32", "cell.trainer.max_steps_per_epoch=2"]


def _source_grid(tmp_path, backbones=BACKBONES, overrides=(), task=SourceTask(images_per_class=6, epochs=1)):
    demo = demo_grid(tmp_path, [f"backbones={backbones}", *TINY, *overrides])
    return source_grid(demo, tmp_path / "source", task), task


def test_source_grid_is_one_ft_cell_per_demo_backbone_from_random_weights(tmp_path):
    demo = demo_grid(tmp_path, ["cell.optim.lr=0.01"])
    grid = source_grid(demo, tmp_path / "source", SourceTask(epochs=4))
    assert grid.backbones == demo.backbones and grid.seeds == demo.seeds[:1] and grid.strategies == ["ft"]
    assert grid.out_dir == str(tmp_path / "source") and grid.data_root == demo.data_root
    assert grid.cell["model"]["weights"] == "none" and grid.cell["trainer"]["epochs"] == 4
    assert grid.cell["optim"] == demo.cell["optim"] and grid.cell["data"] == demo.cell["data"]
    assert demo.cell["model"]["weights"] == str(source_weights(tmp_path / "source"))  # demo's own stays


def test_source_task_rejects_sizes_that_leave_a_split_without_a_class():
    with pytest.raises(ValueError, match="images_per_class"):
        SourceTask(images_per_class=2)
    with pytest.raises(ValueError, match="epochs"):
        SourceTask(epochs=0)


def test_pretrain_on_source_writes_weights_that_load_into_each_backbone_and_a_rerun_reuses_them(tmp_path):
    grid, task = _source_grid(tmp_path)
    results = pretrain_on_source(grid, task)
    assert sorted(results) == sorted(BACKBONES)
    for cfg in expand_cells(grid):
        backbone = cfg.model.backbone
        trained = torch.load(cell_dir(cfg) / BEST_CKPT, weights_only=True)
        model = create_backbone(backbone, num_classes=3, weights=str(source_weights(grid.out_dir, backbone)))
        head = backbone_spec(backbone).head_layer + "."
        loaded = model.state_dict()
        body = [k for k in trained if not k.startswith(head)]
        assert body and all(torch.equal(loaded[k], trained[k]) for k in body)
        assert model.get_submodule(head[:-1]).out_features == 3  # the 5-class source head is replaced
        assert results[backbone]["classes"] == sorted(SOURCE_PATTERNS)
    before = {b: source_weights(grid.out_dir, b).read_bytes() for b in BACKBONES}
    pretrain_on_source(grid, task)
    for cfg in expand_cells(grid):
        starts = [json.loads(line) for line in (cell_dir(cfg) / ATTEMPTS_FILE).read_text().splitlines()]
        assert sum(e.get("event") == "start" for e in starts) == 1  # trained once, found done the second time
        assert source_weights(grid.out_dir, cfg.model.backbone).read_bytes() == before[cfg.model.backbone]


def test_demo_grid_cells_start_from_the_source_weights_of_their_backbone(tmp_path):
    (tmp_path / "data" / "shapes").mkdir(parents=True)
    cells = expand_cells(demo_grid(tmp_path, []))
    assert {c.model.backbone for c in cells} == set(BACKBONES)
    for cfg in cells:
        assert cfg.model.weights == str(source_weights(tmp_path / "source", cfg.model.backbone))


def test_lp_from_source_weights_beats_lp_from_random_weights_on_the_target(tmp_path):
    grid, task = _source_grid(tmp_path, ["tiny_densenet"], ["cell.trainer.max_steps_per_epoch=null"],
                              SourceTask(images_per_class=60, epochs=8))
    pretrain_on_source(grid, task)
    target = make_demo_dataset(tmp_path / "target", per_class=40, seed=0)
    accuracy = {}
    for name, weights in (("source", source_weights(grid.out_dir, "tiny_densenet")), ("random", "none")):
        cfg = load_cell_config(None, [f"data.path={target}", "data.resize=36", "data.crop=32", "data.num_workers=0",
                                      "data.train_batch_size=16", "model.backbone=tiny_densenet",
                                      f"model.weights={weights}", "strategy.name=lp", "optim.lr=0.01",
                                      "trainer.epochs=8", "trainer.device=cpu", f"trainer.out_dir={tmp_path / name}"])
        accuracy[name] = train_cell(cfg)["test"]["accuracy"]
    assert accuracy["source"] > accuracy["random"], accuracy
