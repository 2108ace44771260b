import pytest
import torch

from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.models import block_modules
from engine.epoch_inputs import epoch_inputs
from engine.run_context import build_context
from engine.cell_files import cell_dir
from engine.trainer import train_cell
from strategies.protocol import Progress
from tests.conftest import TINY_BACKBONES
from tests.helpers import start_epoch


# The feature cache runs no backbone forward: with it off, the frozen blocks' eval mode is what
# keeps the BatchNorm buffers.
@pytest.mark.parametrize("backbone, feature_cache", [(b, "true") for b in TINY_BACKBONES + ("tiny_convnext", "tiny_vit")] + [("tiny_resnet", "false")])
def test_lp_backbone_bit_identical_after_training(cpu_cell_config, backbone, feature_cache):
    cfg = cpu_cell_config("strategy.name=lp", "trainer.epochs=2", "optim.lr=0.01",
                          f"trainer.feature_cache={feature_cache}", backbone=backbone)
    ctx = build_context(cfg, load_index(cfg.data))
    initial = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    head_prefixes = tuple(m + "." for m in block_modules(ctx.model, backbone)["head"])
    train_cell(cfg)
    trained = torch.load(cell_dir(cfg) / "last.pt", weights_only=False)["model"]
    backbone_keys = [k for k in initial if not k.startswith(head_prefixes)]
    assert any("running_mean" in k for k in backbone_keys) or backbone in ("tiny_vgg", "tiny_convnext", "tiny_vit")
    for key in backbone_keys:  # weights and BatchNorm buffers alike
        assert torch.equal(initial[key], trained[key]), key
    assert not torch.equal(initial[ctx.layout.blocks["head"][0]], trained[ctx.layout.blocks["head"][0]])


@pytest.mark.parametrize("backbone", ["tiny_densenet", "tiny_vgg", "tiny_convnext", "tiny_vit"])
def test_lp_feature_cache_matches_uncached_lp(cpu_cell_config, tmp_path, backbone):
    overrides = ("strategy.name=lp", "trainer.epochs=3", "optim.lr=0.01")
    cached = train_cell(cpu_cell_config(*overrides, out=tmp_path / "cached", backbone=backbone))
    plain_cfg = cpu_cell_config(*overrides, "trainer.feature_cache=false", out=tmp_path / "plain", backbone=backbone)
    plain = train_cell(plain_cfg)
    a = torch.load(tmp_path / "cached" / plain_cfg.cell_id / "last.pt", weights_only=False)["model"]
    b = torch.load(cell_dir(plain_cfg) / "last.pt", weights_only=False)["model"]
    # The features are computed at the eval batch size, the uncached path at the train batch
    # size: BLAS blocking differs, so values agree to float32 rounding, not bit for bit.
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert cached["test"]["confusion_matrix"] == plain["test"]["confusion_matrix"]
    for key in ("accuracy", "balanced_accuracy", "kappa"):
        assert cached["test"][key] == plain["test"][key]
    assert cached["test"]["loss"] == pytest.approx(plain["test"]["loss"], rel=1e-4)


def test_lp_feature_cache_is_off_when_augmentation_is_on(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=lp", "data.augment=true", "trainer.max_steps_per_epoch=1")
    index = load_index(cfg.data)
    ctx = build_context(cfg, index)
    loaders = build_loaders(index, cfg.data, cfg.trainer.seed, ctx.device)
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0)
    inputs = epoch_inputs(ctx, plan, loaders, index)
    assert inputs.train is loaders.train and inputs.val is loaders.val
    assert inputs.train_forward is ctx.model and inputs.eval_forward is ctx.model

