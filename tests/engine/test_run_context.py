import pytest
import torch
import torch.nn.functional as F

from engine.data.sources import load_index
from engine.run_context import build_context
from strategies.protocol import Progress
from tests.helpers import start_epoch


def _step(ctx, images, labels):
    ctx.model.zero_grad(set_to_none=True)
    F.cross_entropy(ctx.forward(images), labels).backward()


@pytest.mark.parametrize("backend", ["none", "aot_eager", "inductor"])
def test_unfrozen_block_gets_grad_under_compile(cpu_cell_config, backend):
    # pytorch#139476 (torch 2.11): a compiled module does not notice requires_grad changes, so the
    # unfrozen block would get no gradient; the loop recompiles after every change of the set.
    compile_overrides = [] if backend == "none" else ["trainer.compile=true", f"trainer.compile_backend={backend}"]
    cfg = cpu_cell_config("strategy.name=g_lf", "strategy.period_epochs=1", "trainer.epochs=3",
                          *compile_overrides, backbone="tiny_vgg")
    ctx = build_context(cfg, load_index(cfg.data))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    start_epoch(ctx, ctx.strategy.plan(Progress(0, 3)), 0)
    _step(ctx, images, labels)
    block5 = ctx.model.features[-3].weight  # block5's last conv
    assert block5.grad is None and ctx.model.classifier[-1].weight.grad is not None
    start_epoch(ctx, ctx.strategy.plan(Progress(1, 3)), 1)
    _step(ctx, images, labels)
    assert block5.grad is not None and block5.grad.abs().sum() > 0


def test_loop_recompiles_on_a_trainable_change_only(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=g_lf", "strategy.period_epochs=2", "trainer.epochs=4",
                          "trainer.compile=true", "trainer.compile_backend=aot_eager", backbone="tiny_vgg")
    ctx = build_context(cfg, load_index(cfg.data))
    compiled = []
    for epoch in range(4):
        start_epoch(ctx, ctx.strategy.plan(Progress(epoch, 4)), epoch)
        compiled.append(ctx.forward)
    assert compiled[0] is compiled[1] and compiled[2] is compiled[3]
    assert compiled[1] is not compiled[2] and compiled[0] is not ctx.model


def test_frozen_blocks_run_in_eval_mode_when_the_plan_freezes_statistics(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=surgical", "strategy.block=layer2")
    ctx = build_context(cfg, load_index(cfg.data))
    start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0)
    assert ctx.model.layer2.training and ctx.model.fc.training
    assert not ctx.model.layer1.training and not ctx.model.bn1.training and not ctx.model.layer4.training


def test_each_trainable_tensor_in_exactly_one_param_group(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=llrd")
    ctx = build_context(cfg, load_index(cfg.data))
    start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0)
    grouped = [id(p) for g in ctx.optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in ctx.model.parameters())
    scales = {g["name"]: g["lr_scale"] for g in ctx.optimizer.param_groups}
    assert scales["head"] == 1.0 and scales["stem"] < scales["layer4"] < 1.0
