"""Tests of engine/data/synthetic.py: real files, deterministic, learnable."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from engine.config import DataConfig
from engine.data.images import open_rgb, sniff_image_format
from engine.data.sources import load_index, load_index_as_found
from engine.data.synthetic import PATTERNS, SOURCE_PATTERNS, make_demo_dataset


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_demo_dataset_writes_jpeg_and_png_in_image_folder_layout(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", classes=4, per_class=6, size=32)
    formats = Counter(sniff_image_format(p) for p in root.rglob("*") if p.is_file())
    assert formats == {"jpeg": 12, "png": 12}
    index = load_index_as_found(DataConfig(path=str(root)))
    assert index.classes == sorted(PATTERNS[:4]) and not index.skipped
    assert Counter(s.label for s in index.splits["train"]) == {label: 6 for label in range(4)}
    assert open_rgb(index.splits["train"][0].source).size == (32, 32)


def test_make_demo_dataset_is_deterministic_from_seed(tmp_path):
    first = _files(make_demo_dataset(tmp_path / "a", per_class=4, size=32, seed=7))
    again = _files(make_demo_dataset(tmp_path / "b", per_class=4, size=32, seed=7))
    other = _files(make_demo_dataset(tmp_path / "c", per_class=4, size=32, seed=8))
    assert first == again
    assert first.keys() == other.keys() and all(first[k] != other[k] for k in first)


def test_make_demo_dataset_with_splits_writes_70_15_15_per_class(tmp_path):
    root = make_demo_dataset(tmp_path / "split", classes=2, per_class=20, size=16, with_splits=True)
    index = load_index(DataConfig(path=str(root)))
    assert index.split_origin == "data"
    for split, expected in (("train", 14), ("val", 3), ("test", 3)):
        assert Counter(s.label for s in index.splits[split]) == {0: expected, 1: expected}


def test_make_demo_dataset_source_task_has_other_classes_than_the_target(tmp_path):
    root = make_demo_dataset(tmp_path / "source", classes=len(SOURCE_PATTERNS), per_class=4, size=32, task="source")
    assert sorted(p.name for p in root.iterdir()) == sorted(SOURCE_PATTERNS)
    assert not set(SOURCE_PATTERNS) & set(PATTERNS)
    target = make_demo_dataset(tmp_path / "target", classes=len(PATTERNS), per_class=4, size=32)
    source_pixels = {f.read_bytes() for f in root.rglob("*") if f.is_file()}
    assert not source_pixels & {f.read_bytes() for f in target.rglob("*") if f.is_file()}


@pytest.mark.parametrize("kwargs", [dict(classes=1), dict(classes=len(PATTERNS) + 1), dict(per_class=0),
                                    dict(size=8), dict(task="imagenet")])
def test_make_demo_dataset_rejects_out_of_range_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_demo_dataset(tmp_path, **kwargs)


def _tensors(root) -> tuple[torch.Tensor, torch.Tensor]:
    samples = load_index_as_found(DataConfig(path=str(root))).splits["train"]
    images = [torch.from_numpy(np.array(open_rgb(s.source))).permute(2, 0, 1) for s in samples]
    return torch.stack(images).float() / 255, torch.tensor([s.label for s in samples])


# Above chance by: five source classes learn less in the same 50 steps than three target ones.
@pytest.mark.parametrize("task, classes, margin", [("target", 3, 0.4), ("source", len(SOURCE_PATTERNS), 0.25)])
def test_make_demo_dataset_is_learnable_by_a_small_cnn(tmp_path, task, classes, margin):
    train_x, train_y = _tensors(make_demo_dataset(tmp_path / "train", classes, per_class=40, size=32, seed=0,
                                                  task=task))
    test_x, test_y = _tensors(make_demo_dataset(tmp_path / "test", classes, per_class=20, size=32, seed=1,
                                                task=task))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(train_x), train_y).backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (net(test_x).argmax(dim=1) == test_y).float().mean().item()
    chance = 1 / classes
    assert accuracy >= chance + margin, accuracy  # held-out images from another seed
