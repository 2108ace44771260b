"""Tests of engine/data/balance.py: balanced class weights and the balanced sampler, on 1:9 data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import DataConfig, load_cell_config
from engine.data.balance import balanced_class_weights, balanced_sample_weights
from engine.data.loaders import build_loaders
from engine.data.sharding import shard_batches
from engine.data.sources import load_index
from engine.data.synthetic import make_demo_dataset
from engine.run_context import build_context
from engine.steps import backward

CPU = torch.device("cpu")
LABELS = np.array([0] * 12 + [1] * 108)  # 1:9


@pytest.fixture
def one_to_nine(tmp_path):
    """An image folder with 6 'stripes' and 54 'circles' images (1:9)."""
    root = tmp_path / "data"
    make_demo_dataset(tmp_path / "common", classes=2, per_class=54, size=16, seed=5)
    make_demo_dataset(tmp_path / "rare", classes=2, per_class=6, size=16, seed=4)
    root.mkdir()
    (tmp_path / "common" / "circles").rename(root / "circles")
    (tmp_path / "rare" / "stripes").rename(root / "stripes")
    return root


def test_balanced_class_weights_are_n_over_k_n_c_and_give_each_class_equal_total_weight():
    weights = balanced_class_weights(LABELS, 3)  # a third class without samples weighs 0
    assert np.allclose(weights, [120 / (3 * 12), 120 / (3 * 108), 0.0])
    assert np.isclose(weights[0] * 12, weights[1] * 108)


def test_balanced_sample_weights_sum_to_one_and_give_each_class_half():
    p = balanced_sample_weights(LABELS)
    assert np.isclose(p.sum(), 1.0) and np.isclose(p[LABELS == 0].sum(), 0.5)
    assert np.allclose(p[LABELS == 0], 1 / (2 * 12)) and np.allclose(p[LABELS == 1], 1 / (2 * 108))


def test_balanced_draws_sample_the_classes_equally_and_images_uniformly_within_them():
    p = balanced_sample_weights(LABELS)
    drawn = np.concatenate([b for epoch in range(300)
                            for b in shard_batches(len(LABELS), 7, epoch, 16, True, draw_weights=p)])
    rare_share = (LABELS[drawn] == 0).mean()
    assert abs(rare_share - 0.5) < 0.02  # 36k draws: the binomial sd is 0.0026
    per_rare_image = np.bincount(drawn[LABELS[drawn] == 0], minlength=12)[:12] / (LABELS[drawn] == 0).sum()
    assert np.abs(per_rare_image - 1 / 12).max() < 0.01
    uniform = np.concatenate(shard_batches(len(LABELS), 7, 0, 16, True))
    assert sorted(uniform.tolist()) == list(range(120))  # the default stays a permutation


@pytest.mark.parametrize("sampler, rare_share", [("uniform", 0.1), ("balanced", 0.5)])
def test_sampler_sets_the_train_class_frequencies_of_every_backend(one_to_nine, sampler, rare_share):
    cfg = DataConfig(path=str(one_to_nine), resize=18, crop=16, num_workers=0, train_batch_size=8,
                     split_fractions=(1.0, 0.0, 0.0), sampler=sampler)
    index = load_index(cfg)
    labels = {}
    for loader in ("torchvision", "gpu_cache"):
        train = build_loaders(index, DataConfig(**{**cfg.__dict__, "loader": loader}), 3, CPU).train
        seen = []
        for epoch in range(12):
            train.set_epoch(epoch)
            seen += [int(y) for batch in train for y in batch.labels]
        labels[loader] = seen
    assert labels["torchvision"] == labels["gpu_cache"]
    share = np.mean(np.array(labels["torchvision"]) == index.classes.index("stripes"))
    assert abs(share - rare_share) < 0.06


def test_balanced_loss_is_the_class_weighted_cross_entropy(one_to_nine, tmp_path):
    overrides = [f"data.path={one_to_nine}", "data.resize=18", "data.crop=16", "model.backbone=tiny_resnet",
                 "model.weights=none", "trainer.device=cpu", f"trainer.out_dir={tmp_path}"]
    index = load_index(load_cell_config(None, overrides).data)
    images, labels = torch.randn(10, 3, 16, 16), torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    plain = build_context(load_cell_config(None, overrides), index)
    ctx = build_context(load_cell_config(None, [*overrides, "loss.class_weights=balanced"]), index)
    assert plain.class_weights is None
    counts = np.bincount([s.label for s in index.splits["train"]])
    expected_w = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    assert torch.allclose(ctx.class_weights, expected_w)
    ctx.model.eval()  # no BatchNorm statistics update between the two forwards
    loss = backward(ctx, images, labels, scaled=False, forward=ctx.model)
    with torch.no_grad():
        nll = -F.log_softmax(ctx.model(images).float(), 1)[torch.arange(10), labels]
    w = expected_w[labels]
    assert torch.allclose(loss, (w * nll).sum() / w.sum(), atol=1e-6)
