"""Shared fixtures: generated demo data and CPU cell configs on tiny backbones (32 px, fp32)."""
from __future__ import annotations

import os

# Triton reads this when it is first imported, and importing torchvision imports it: set it before.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from engine.config import load_cell_config  # noqa: E402
from engine.data.synthetic import make_demo_dataset  # noqa: E402

TINY_BACKBONES = ("tiny_resnet", "tiny_densenet", "tiny_vgg")
MODERN_TINY_BACKBONES = ("tiny_efficientnet", "tiny_convnext", "tiny_vit", "tiny_swin")  # beyond the study
# The contract test's backbones: EfficientNet's and Swin's cells (the slowest) run with `-m slow`.
CONTRACT_BACKBONES = (*TINY_BACKBONES, "tiny_convnext", "tiny_vit",
                      *(pytest.param(b, marks=pytest.mark.slow) for b in ("tiny_efficientnet", "tiny_swin")))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A 3-class ImageFolder of generated JPEG/PNG files, 20 per class, 40 px."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo_data"), classes=3, per_class=20, size=40, seed=0)


@pytest.fixture
def cpu_cell_config(demo_data, tmp_path):
    """Factory of small CPU cell configs: `cpu_cell_config("strategy.name=lp", backbone=...)`."""
    def make(*overrides: str, backbone: str = "tiny_resnet", strategy: str = "ft", out=None):
        return load_cell_config(None, [
            f"data.path={demo_data}", "data.resize=36", "data.crop=32", "data.num_workers=0",
            "data.train_batch_size=16", "data.eval_batch_size=32", f"model.backbone={backbone}",
            "model.weights=none", f"strategy.name={strategy}", "trainer.epochs=2", "trainer.device=cpu",
            f"trainer.out_dir={out or tmp_path / 'runs'}", *overrides])
    return make
