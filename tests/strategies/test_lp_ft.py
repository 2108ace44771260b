import pytest
import torch

from engine.config import OptimConfig
from engine.data.sources import load_index
from engine.optim import epoch_lr
from engine.run_context import build_context
from engine.trainer import train_cell
from strategies import create_strategy
from strategies.lp_ft import LpFtConfig, lp_ft_phase
from strategies.protocol import Progress
from tests.helpers import read_metrics, start_epoch, tiny_layout, torch_cosine_lrs


def test_lp_ft_rebuilds_optimizer_at_phase_two_with_every_param_at_tenth_lr(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=lp_ft", "trainer.epochs=4")
    ctx = build_context(cfg, load_index(cfg.data))
    start_epoch(ctx, ctx.strategy.plan(Progress(1, 4)), 1)
    phase_one_optimizer = ctx.optimizer
    head = ctx.model.fc.weight
    with torch.no_grad():
        head.add_(1.0)  # stands for what phase 1 learned
    probed_head = head.detach().clone()
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(2, 4)), 2)
    assert plan.phase == "ft" and ctx.optimizer is not phase_one_optimizer
    assert not ctx.optimizer.state  # a new optimizer: no Adam moments carried over
    in_groups = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    assert len(in_groups) == len(list(ctx.model.parameters())) == len({id(p) for p in in_groups})
    expected_lr = torch_cosine_lrs(cfg.optim.lr * 0.1, 2, 2)[0]  # phase 2's own cosine, at its first epoch
    assert all(g["lr"] == pytest.approx(expected_lr, rel=1e-12) for g in ctx.optimizer.param_groups)
    assert torch.equal(ctx.model.fc.weight, probed_head)
    phase_two_optimizer = ctx.optimizer
    start_epoch(ctx, ctx.strategy.plan(Progress(3, 4)), 3)
    assert ctx.optimizer is phase_two_optimizer  # one new optimizer for the phase, not one per epoch


def test_lp_ft_phases_in_a_run_and_head_carried_over(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=lp_ft", "trainer.epochs=4", "trainer.max_steps_per_epoch=2",
                          "trainer.patience=5")
    train_cell(cfg)
    rows = read_metrics(cfg)
    assert [r["strategy/phase"] for r in rows] == ["lp", "lp", "ft", "ft"]
    assert [r["strategy/lr/stem"] > 0 for r in rows] == [False, False, True, True]
    phase_one, phase_two = torch_cosine_lrs(cfg.optim.lr, 2, 2), torch_cosine_lrs(cfg.optim.lr * 0.1, 2, 2)
    assert [r["strategy/lr/head"] for r in rows] == pytest.approx(phase_one + phase_two, rel=1e-12)


def test_lp_ft_without_phase_one_early_stopping_still_reaches_phase_two(cpu_cell_config):
    # lr 0: validation never improves, so patience 1 runs out at once; phase 1 must still end on time.
    cfg = cpu_cell_config("strategy.name=lp_ft", "strategy.lp_early_stopping=false", "strategy.lp_epochs=3",
                          "trainer.epochs=6", "trainer.patience=1", "optim.lr=0.0", "trainer.max_steps_per_epoch=1")
    result = train_cell(cfg)
    rows = read_metrics(cfg)
    assert [r["strategy/phase"] for r in rows] == ["lp", "lp", "lp", "ft", "ft"] and result["stopped_early"]


def test_lp_ft_phase_ends_early_when_phase_one_stops():
    assert lp_ft_phase(Progress(1, 10, patience_exhausted=False), 5, True, False) == "lp"
    assert lp_ft_phase(Progress(1, 10, patience_exhausted=True), 5, True, False) == "ft"
    assert lp_ft_phase(Progress(1, 10, patience_exhausted=True), 5, False, False) == "lp"
    assert lp_ft_phase(Progress(5, 10), 5, True, False) == "ft"
    assert lp_ft_phase(Progress(3, 10), 5, True, True) == "ft"  # never back to lp


def test_lp_ft_state_survives_a_round_trip():
    _, layout = tiny_layout()
    strategy = create_strategy(LpFtConfig(lp_epochs=2), layout, {}, 6)
    strategy.plan(Progress(0, 6, patience_exhausted=True))
    copy = create_strategy(LpFtConfig(lp_epochs=2), layout, {}, 6)
    copy.load_state_dict(strategy.state_dict())
    assert copy.plan(Progress(1, 6)).phase == "ft"


@pytest.mark.parametrize("lp_epochs", [0, 6, 9])
def test_lp_ft_split_outside_the_budget_is_an_error(lp_epochs):
    _, layout = tiny_layout()
    with pytest.raises(ValueError, match="strategy.lp_epochs"):
        create_strategy(LpFtConfig(lp_epochs=lp_epochs), layout, {}, 6)


@pytest.mark.parametrize("epochs, lp_epochs, switch", [(30, 15, 15), (30, 15, 4), (7, 3, 1)])
def test_lp_ft_each_phase_restarts_the_cosine_over_its_own_epochs(epochs, lp_epochs, switch):
    # Phase 2 starts at lr * 0.1 and anneals over the epochs left, also when phase 1 stops early.
    _, layout = tiny_layout()
    cfg = OptimConfig()
    strategy = create_strategy(LpFtConfig(lp_epochs=lp_epochs), layout, {}, epochs)
    plans = [strategy.plan(Progress(e, epochs, patience_exhausted=e == switch)) for e in range(epochs)]
    assert [p.phase for p in plans] == ["lp"] * switch + ["ft"] * (epochs - switch)
    rates = [epoch_lr(cfg, p, e, epochs) * p.lr_factor for e, p in enumerate(plans)]
    expected = torch_cosine_lrs(cfg.lr, lp_epochs, switch) + torch_cosine_lrs(cfg.lr * 0.1, epochs - switch,
                                                                                epochs - switch)
    assert rates == pytest.approx(expected, rel=1e-9)
