"""Tests of engine/demo_source.py: the source pretraining of the demo's backbones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cell_files import ATTEMPTS_FILE, BEST_CKPT, cell_dir
from engine.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from engine.data.images import open_rgb
from engine.data.sources import load_index_as_found
from engine.data.synthetic import SOURCE_PATTERNS, make_demo_dataset
from engine.demo import demo_grid
from engine.demo_source import SourceTask, pretrain_on_source, source_grid, source_weights
from engine.grid.config import expand_cells
from engine.models import backbone_spec, create_backbone, features_and_head

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


def _normalised_images(root) -> tuple[torch.Tensor, torch.Tensor]:
    samples = load_index_as_found(DataConfig(path=str(root))).splits["train"]
    images = torch.stack([torch.from_numpy(np.array(open_rgb(s.source))).permute(2, 0, 1) for s in samples]) / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images - mean) / std, torch.tensor([s.label for s in samples])


def _nearest_mean_probe_accuracy(backbone: str, weights: str, train, test) -> float:
    """A linear probe in closed form: each test image's class is the nearest class mean of the
    frozen backbone's features of the training images (no training noise to hide a difference)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same random weights for the random baseline on every run
        model = create_backbone(backbone, num_classes=3, weights=weights).eval()
    features, _ = features_and_head(model, backbone, "last_layer")
    with torch.no_grad():
        train_features, test_features = features(train[0]), features(test[0])
    means = torch.stack([train_features[train[1] == c].mean(0) for c in range(3)])
    return (torch.cdist(test_features, means).argmin(1) == test[1]).float().mean().item()


def test_target_classes_are_more_separable_in_source_features_than_in_random_ones(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `medft demo` does: on a busy CPU, more threads made this 10x slower
    try:
        pretrained, random = _probe_source_and_random(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert pretrained > random + 0.05, (pretrained, random)


def _probe_source_and_random(tmp_path) -> tuple[float, float]:
    grid, task = _source_grid(tmp_path, ["tiny_densenet"],
                              ["cell.trainer.max_steps_per_epoch=null", "cell.trainer.patience=20"],
                              SourceTask(images_per_class=150, epochs=12))
    pretrain_on_source(grid, task)
    train = _normalised_images(make_demo_dataset(tmp_path / "train", per_class=40, size=32, seed=0))
    test = _normalised_images(make_demo_dataset(tmp_path / "test", per_class=20, size=32, seed=2))
    pretrained = _nearest_mean_probe_accuracy("tiny_densenet", str(source_weights(grid.out_dir, "tiny_densenet")),
                                              train, test)
    return pretrained, _nearest_mean_probe_accuracy("tiny_densenet", "none", train, test)
