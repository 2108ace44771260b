import copy

import pytest
import torch
import torch.nn.functional as F

from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.run_context import build_context
from engine.steps import train_step
from strategies import create_strategy
from strategies.protocol import Progress
from strategies.sp_regularized import SpConfig
from tests.helpers import start_epoch, tiny_layout

# w_H, written out: the replaced classifier layer only; the rest of a head block starts pretrained.
NEW_HEAD = {"tiny_resnet": {"fc.weight", "fc.bias"},
            "tiny_densenet": {"classifier.weight", "classifier.bias"},
            "tiny_vgg": {"classifier.6.weight", "classifier.6.bias"}}


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    grads = [torch.randn_like(p) for p in params]
    return names, params, grads


@pytest.mark.parametrize("name", ["l1_sp", "l2_sp"])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("backbone", list(NEW_HEAD))
def test_sp_grad_matches_closed_form(name, exclude, backbone):
    model, layout = tiny_layout(backbone)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SpConfig(name=name, alpha=0.03, beta=0.02, exclude_bn_and_bias=exclude)
    strategy = create_strategy(cfg, layout, dict(model.named_parameters()), 5)
    names, params, grads = _perturbed(model)
    before = [g.clone() for g in grads]
    strategy.extra_grad_(names, params, grads)
    head = NEW_HEAD[backbone]
    skipped = layout.norm_params | layout.bias_params if exclude else set()
    for n, w, g0, g in zip(names, params, before, grads):
        if n in head:
            want = g0 + 0.02 * w.detach()
        elif n in skipped:
            want = g0
        else:
            diff = w.detach() - initial[n]
            want = g0 + 0.03 * (diff.sign() if name == "l1_sp" else diff)
        torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7, msg=n)


def test_sp_anchors_are_the_pretrained_values_not_live_weights():
    model, layout = tiny_layout()
    strategy = create_strategy(SpConfig(alpha=1.0), layout, dict(model.named_parameters()), 5)
    conv = model.conv1.weight
    with torch.no_grad():
        conv.add_(0.5)  # training moves the weight; the anchor must stay
    grad = torch.zeros_like(conv)
    strategy.extra_grad_(["conv1.weight"], [conv], [grad])
    torch.testing.assert_close(grad, torch.full_like(conv, 0.5))


def test_sp_plan_trains_everything_with_weight_decay_zero():
    model, layout = tiny_layout()
    strategy = create_strategy(SpConfig(name="l1_sp"), layout, dict(model.named_parameters()), 5)
    plan = strategy.plan(Progress(0, 5))
    assert plan.weight_decay == 0.0 and plan.trainable == frozenset(layout.blocks)


@pytest.mark.parametrize("field", ["alpha", "beta"])
def test_sp_negative_coefficient_is_an_error(field):
    model, layout = tiny_layout()
    with pytest.raises(ValueError, match=f"strategy.{field}"):
        create_strategy(SpConfig(**{field: -0.1}), layout, dict(model.named_parameters()), 5)


@pytest.mark.parametrize("name", ["l1_sp", "l2_sp"])
def test_the_loop_steps_on_autograd_of_ce_plus_the_penalty_under_a_grad_scaler(cpu_cell_config, name):
    alpha, beta = 0.05, 0.02
    cfg = cpu_cell_config(f"strategy.name={name}", f"strategy.alpha={alpha}", f"strategy.beta={beta}",
                          "optim.weight_decay=0.1")
    index = load_index(cfg.data)
    ctx = build_context(cfg, index)
    initial = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0)
    assert all(g["weight_decay"] == 0.0 for g in ctx.optimizer.param_groups)  # not optim.weight_decay
    _perturbed(ctx.model)  # away from w0, so that sign(w - w0) is not 0
    ctx.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # a real scale, unscaled before the penalty
    batch = next(iter(build_loaders(index, cfg.data, cfg.trainer.seed, ctx.device).train))
    images, labels = ctx.to_device(batch.images, batch.labels)
    reference = copy.deepcopy(ctx.model)
    loss = F.cross_entropy(reference(images), labels)
    for n, w in reference.named_parameters():
        if n in NEW_HEAD["tiny_resnet"]:
            loss = loss + beta / 2 * w.square().sum()
        elif name == "l1_sp":
            loss = loss + alpha * (w - initial[n]).abs().sum()
        else:
            loss = loss + alpha / 2 * (w - initial[n]).square().sum()
    loss.backward()
    received = {}
    ctx.optimizer.register_step_pre_hook(lambda opt, args, kwargs: received.update(
        {n: p.grad.clone() for n, p in ctx.model.named_parameters()}))
    train_step(ctx, images, labels, 0, 0)
    assert received, "the optimizer did not step"
    for n, w in reference.named_parameters():
        torch.testing.assert_close(received[n], w.grad, rtol=1e-4, atol=1e-6, msg=n)
