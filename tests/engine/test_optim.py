"""Each strategy's learning-rate schedule, pinned against torch's CosineAnnealingLR."""
import pytest

from engine.config import OptimConfig
from engine.optim import epoch_lr
from strategies import create_strategy
from strategies.auto_rgn import AutoRgnConfig, AutoRgnOnlineConfig, AutoSnrConfig
from strategies.full_ft import FtConfig
from strategies.gradual_unfreeze import GradualConfig
from strategies.protocol import Progress
from strategies.sp_regularized import SpConfig
from tests.helpers import tiny_layout, torch_cosine_lrs


def _rates(strategy_cfg, epochs: int, optim: OptimConfig | None = None) -> list[float]:
    optim = optim or OptimConfig()
    model, layout = tiny_layout()
    strategy = create_strategy(strategy_cfg, layout, dict(model.named_parameters()), epochs)
    plans = [strategy.plan(Progress(e, epochs)) for e in range(epochs)]
    return [epoch_lr(optim, p, e, epochs) * p.lr_factor for e, p in enumerate(plans)]


@pytest.mark.parametrize("strategy_cfg", [FtConfig(), SpConfig(name="l1_sp"), GradualConfig(name="g_lf")])
def test_one_phase_strategies_follow_one_cosine_over_the_run(strategy_cfg):
    assert _rates(strategy_cfg, 9) == pytest.approx(torch_cosine_lrs(1e-3, 9, 9), rel=1e-9)


def test_the_cosine_period_is_optim_t_max_epochs_when_set():
    assert _rates(FtConfig(), 6, OptimConfig(t_max_epochs=8)) == pytest.approx(torch_cosine_lrs(1e-3, 8, 6), rel=1e-9)


@pytest.mark.parametrize("strategy_cfg", [AutoRgnConfig(), AutoRgnOnlineConfig(), AutoSnrConfig()])
def test_the_auto_rgn_family_runs_at_scale_times_lr_with_no_cosine(strategy_cfg):
    assert _rates(strategy_cfg, 6) == [1e-3] * 6


def test_auto_rgn_takes_the_runs_cosine_when_asked():
    assert _rates(AutoRgnConfig(lr_schedule="cosine"), 6) == pytest.approx(torch_cosine_lrs(1e-3, 6, 6), rel=1e-9)


def test_gradual_unfreezing_by_stage_restarts_the_cosine_at_each_unfreeze():
    _, layout = tiny_layout()
    blocks = len(layout.backbone_blocks)
    period, epochs = 2, 2 * (blocks + 1) + 1  # the last stage runs 3 epochs
    rates = _rates(GradualConfig(name="g_fl", period_epochs=period, lr_schedule="stage"), epochs)
    expected = torch_cosine_lrs(1e-3, period, period) * blocks + torch_cosine_lrs(1e-3, 3, 3)
    assert rates == pytest.approx(expected, rel=1e-9)


def test_a_constant_optim_schedule_holds_every_strategy_at_lr():
    assert _rates(FtConfig(), 4, OptimConfig(schedule="constant")) == [1e-3] * 4
