import pytest
import torch
import torch.nn.functional as F

from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.run_context import build_context
from engine import trainer
from engine.trainer import train_cell
from strategies import create_strategy
from strategies.auto_rgn import AutoRgnConfig, AutoRgnOnlineConfig, AutoSnrConfig, snr
from strategies.protocol import Progress, TensorNorms
from tests.helpers import read_metrics, start_epoch, tiny_layout


def _context(cfg):
    index = load_index(cfg.data)
    ctx = build_context(cfg, index)
    return ctx, build_loaders(index, cfg.data, cfg.trainer.seed, ctx.device)


def _slow_reference(cfg, granularity):
    """The reference code's semantics, written plainly: per tensor, .item() norms, 5 batches."""
    ctx, loaders = _context(cfg)
    model = ctx.model
    bn = {n for m_name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
          for n in (f"{m_name}.weight", f"{m_name}.bias")}
    names = [n for n, _ in model.named_parameters() if n not in bn]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in bn)
    model.train()
    loaders.train.set_epoch(0)
    ratios, grad_norms = {n: 0.0 for n in names}, {n: 0.0 for n in names}
    params = dict(model.named_parameters())
    for i, batch in enumerate(loaders.train):
        if i == 5:
            break
        model.zero_grad()
        images, labels = ctx.to_device(batch.images, batch.labels)  # as the loop feeds them
        with ctx.autocast():
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        for n in names:
            ratios[n] += params[n].grad.norm().item() / params[n].norm().item() / 5
            grad_norms[n] += params[n].grad.norm().item() / 5
    if granularity == "module":  # from the batch-averaged gradient norms (auto_rgn's module docstring)
        for m_name, m in model.named_modules():
            own = [f"{m_name}.{p}" if m_name else p for p, _ in m.named_parameters(recurse=False)]
            own = [n for n in own if n in ratios]
            if own:
                g = sum(grad_norms[n] ** 2 for n in own) ** 0.5
                w = sum(params[n].norm().item() ** 2 for n in own) ** 0.5
                for n in own:
                    ratios[n] = g / w
    top = max(ratios.values())
    return {n: r / top for n, r in ratios.items()}


@pytest.mark.parametrize("granularity", ["tensor", "module"])
@pytest.mark.parametrize("batch_size", [4, 8])
def test_auto_rgn_scales_match_slow_reference(cpu_cell_config, granularity, batch_size):
    cfg = cpu_cell_config("strategy.name=auto_rgn", f"data.train_batch_size={batch_size}",
                          f"strategy.granularity={granularity}")
    ctx, loaders = _context(cfg)
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0, calibration_loader=loaders.train)
    want = _slow_reference(cfg, granularity)
    assert set(plan.lr_scales) == set(want)
    got = torch.tensor([plan.lr_scales[n] for n in want])
    torch.testing.assert_close(got, torch.tensor(list(want.values())), rtol=1e-4, atol=1e-6)
    assert max(plan.lr_scales.values()) == 1.0
    if granularity == "module":
        assert plan.lr_scales["fc.weight"] == plan.lr_scales["fc.bias"]


def test_auto_rgn_excludes_batchnorm_by_module_type():
    _, layout = tiny_layout()
    strategy = create_strategy(AutoRgnConfig(), layout, {}, 3)
    trainable = strategy.plan(Progress(0, 3)).trainable
    assert "layer1.0.downsample.1.weight" not in trainable and "bn1.weight" not in trainable
    assert "layer1.0.downsample.0.weight" in trainable and "fc.bias" in trainable
    included = create_strategy(AutoRgnConfig(exclude_bn=False), layout, {}, 3).plan(Progress(0, 3)).trainable
    assert "layer1.0.downsample.1.weight" in included


def test_auto_rgn_recomputes_scales_each_epoch_with_a_fresh_optimizer(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=auto_rgn", "trainer.epochs=2", "trainer.max_steps_per_epoch=2")
    train_cell(cfg)
    rows = read_metrics(cfg)
    # No cosine on top (lr_i = scale_i * lr): the logged rates are the scales times lr.
    scales = [{k: v / cfg.optim.lr for k, v in r.items() if k.startswith("strategy/lr/")} for r in rows]
    assert scales[0].keys() == scales[1].keys()
    assert any(abs(scales[0][k] - scales[1][k]) > 1e-6 for k in scales[0])
    ctx, loaders = _context(cfg)
    start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0, calibration_loader=loaders.train)
    first = ctx.optimizer
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(1, 2)), 1, calibration_loader=loaders.train)
    assert ctx.optimizer is not first
    assert all(g["weight_decay"] == 1e-4 for g in ctx.optimizer.param_groups)
    # lr_i = scale_i * lr, no cosine: the top tensor runs at lr in the last epoch too.
    assert [g["lr"] for g in ctx.optimizer.param_groups] == [cfg.optim.lr * g["lr_scale"]
                                                              for g in ctx.optimizer.param_groups]
    assert max(g["lr"] for g in ctx.optimizer.param_groups) == cfg.optim.lr


def test_the_logged_block_rate_is_that_of_the_blocks_trainable_tensors(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=auto_rgn")
    ctx, loaders = _context(cfg)
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0, calibration_loader=loaders.train)
    row = ctx.strategy_log(plan)
    rate = {n: cfg.optim.lr * plan.lr_scales[n] for n in plan.trainable}
    for block, names in ctx.layout.blocks.items():  # BatchNorm tensors are frozen: not in the mean
        trained = [rate[n] for n in names if n in rate]
        assert row[f"strategy/lr/{block}"] == pytest.approx(sum(trained) / len(trained), rel=1e-12), block


def test_auto_rgn_online_runs_no_extra_forward_or_backward(cpu_cell_config, tmp_path, monkeypatch):
    calls = {"forward": 0}

    def counting_build(*args, **kwargs):
        ctx = build_context(*args, **kwargs)
        ctx.model.register_forward_pre_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
        return ctx
    monkeypatch.setattr(trainer, "build_context", counting_build)

    def count_forwards(strategy, *overrides):
        calls["forward"] = 0
        cfg = cpu_cell_config(f"strategy.name={strategy}", "trainer.max_steps_per_epoch=3",
                              "data.train_batch_size=8", *overrides, out=tmp_path / strategy)
        train_cell(cfg)
        return calls["forward"], cfg
    online, cfg = count_forwards("auto_rgn_online", "strategy.refresh_every_steps=1")
    plain, _ = count_forwards("ft")
    offline, _ = count_forwards("auto_rgn")
    assert online == plain
    assert offline == plain + 2 * 5  # the reference variant calibrates on 5 batches every epoch
    rows = read_metrics(cfg)
    assert len({round(v, 12) for k, v in rows[-1].items() if k.startswith("strategy/lr/")}) > 1


def test_auto_rgn_online_smooths_ratios():
    _, layout = tiny_layout()
    strategy = create_strategy(AutoRgnOnlineConfig(smoothing=0.5), layout, {}, 3)
    ordered = tuple(sorted(strategy.plan(Progress(0, 3)).trainable))
    first = torch.rand(len(ordered)) + 0.1
    second = torch.rand(len(ordered)) + 0.1
    ones = torch.ones(len(ordered))
    strategy.update_scales(TensorNorms(ordered, ones, ones, first))
    scales = strategy.update_scales(TensorNorms(ordered, ones, ones, second))
    smoothed = 0.5 * first + 0.5 * second
    torch.testing.assert_close(torch.tensor([scales[n] for n in ordered]), smoothed / smoothed.max())


def test_auto_rgn_leaves_zero_weight_layers_out_of_the_maximum():
    _, layout = tiny_layout()
    strategy = create_strategy(AutoRgnConfig(), layout, {}, 3)
    names = ("a", "b", "zero_bias")
    grads, weights = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([2.0, 1.0, 0.0])
    scales = strategy.update_scales(TensorNorms(names, grads, weights, grads / (weights + 1e-12)))
    assert scales == {"a": 0.25, "b": 1.0, "zero_bias": 1.0}  # ratios 0.5 and 2; the zero layer trains fully


def test_auto_rgn_keeps_its_scales_when_the_norms_overflow():
    _, layout = tiny_layout()
    strategy = create_strategy(AutoRgnOnlineConfig(), layout, {}, 3)
    before = dict(strategy.scales)
    ones = torch.ones(2)
    assert strategy.update_scales(TensorNorms(("a", "b"), ones, ones, torch.tensor([1.0, float("inf")]))) is None
    assert strategy.scales == before and strategy.smoothed is None


@pytest.mark.parametrize("field, value", [("estimate_batches", 0)])
def test_auto_rgn_bad_config_is_an_error(field, value):
    _, layout = tiny_layout()
    with pytest.raises(ValueError, match=f"strategy.{field}"):
        create_strategy(AutoRgnConfig(**{field: value}), layout, {}, 3)


def test_auto_snr_matches_moments_of_per_batch_gradients():
    grads = torch.randn(5, 7) + 0.5  # 5 batches of a 7-element tensor
    mean = grads.mean(0)
    want = mean.square().sum() / ((grads - mean).square().sum(1).mean())
    got = snr(mean.norm().unsqueeze(0), grads.square().sum(1).mean().unsqueeze(0))
    torch.testing.assert_close(got, want.unsqueeze(0))


def test_auto_snr_needs_two_batches():
    _, layout = tiny_layout()
    with pytest.raises(ValueError, match="strategy.estimate_batches"):
        create_strategy(AutoSnrConfig(estimate_batches=1), layout, {}, 3)


@pytest.mark.parametrize("overflow", [float("inf"), float("nan")])
def test_auto_snr_keeps_its_scales_when_a_measurement_overflows(overflow):
    # An fp16 overflow in one calibration batch makes a moment inf (or nan): the scales must not
    # become NaN learning rates, and the last finite measurement's scales stay.
    _, layout = tiny_layout()
    strategy = create_strategy(AutoSnrConfig(), layout, {}, 3)
    ones, names = torch.ones(2), ("a", "b")
    measured = TensorNorms(names, ones, ones, ones, mean_grad_norms=torch.tensor([1.0, 0.5]),
                           grad_sq_means=torch.tensor([2.0, 2.0]))
    first = dict(strategy.update_scales(measured))
    assert first == pytest.approx({"a": 1.0, "b": (0.25 / 1.75) / (1.0 / 1.0)})
    overflowed = TensorNorms(names, ones, ones, ones, mean_grad_norms=torch.tensor([overflow, 0.5]),
                             grad_sq_means=torch.tensor([overflow, 2.0]))
    assert strategy.update_scales(overflowed) is None
    assert strategy.scales == first and strategy.plan(Progress(1, 3)).lr_scales == first
