import pytest
import torch

from strategies import create_strategy
from strategies.protocol import Progress
from strategies.sp_regularized import SpConfig
from tests.helpers import tiny_layout

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
