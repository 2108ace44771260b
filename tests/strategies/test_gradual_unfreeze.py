import logging

import pytest

from engine.cell_files import cell_dir
from engine.trainer import train_cell
from strategies import create_strategy, strategy_config_class
from strategies.gradual_unfreeze import GradualConfig, unfreeze_schedule
from strategies.protocol import Progress
from tests.helpers import read_metrics, tiny_layout

RESNET = ["stem", "layer1", "layer2", "layer3", "layer4"]
DENSENET = ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3", "transition3",
            "denseblock4"]
VGG = ["block1", "block2", "block3", "block4", "block5"]

# Written out by hand from the spec: head-only for T epochs, then one block more every T epochs.
HAND_SCHEDULES = {
    # ResNet, E = 12, K = 5: T = max(1, 12 // 6) = 2
    ("tiny_resnet", "g_lf", 12): [[], [], ["layer4"], ["layer4"], ["layer3", "layer4"], ["layer3", "layer4"],
                                  ["layer2", "layer3", "layer4"], ["layer2", "layer3", "layer4"],
                                  RESNET[1:], RESNET[1:], RESNET, RESNET],
    ("tiny_resnet", "g_fl", 12): [[], [], ["stem"], ["stem"], ["stem", "layer1"], ["stem", "layer1"],
                                  RESNET[:3], RESNET[:3], RESNET[:4], RESNET[:4], RESNET, RESNET],
    # DenseNet, E = 10, K = 8: T = 1, all unfrozen from epoch 8
    ("tiny_densenet", "g_lf", 10): [[], ["denseblock4"], ["transition3", "denseblock4"], DENSENET[5:], DENSENET[4:],
                                    DENSENET[3:], DENSENET[2:], DENSENET[1:], DENSENET, DENSENET],
    ("tiny_densenet", "g_fl", 10): [[], ["stem"], DENSENET[:2], DENSENET[:3], DENSENET[:4], DENSENET[:5],
                                    DENSENET[:6], DENSENET[:7], DENSENET, DENSENET],
    # VGG, E = 7, K = 5: T = 1
    ("tiny_vgg", "g_lf", 7): [[], ["block5"], ["block4", "block5"], VGG[2:], VGG[1:], VGG, VGG],
    ("tiny_vgg", "g_fl", 7): [[], ["block1"], ["block1", "block2"], VGG[:3], VGG[:4], VGG, VGG],
}


@pytest.mark.parametrize("backbone, name, epochs", list(HAND_SCHEDULES))
def test_gradual_trainable_sets_per_epoch_match_hand_schedule(backbone, name, epochs):
    _, layout = tiny_layout(backbone)
    strategy = create_strategy(strategy_config_class(name)(name=name), layout, {}, epochs)
    for epoch, blocks in enumerate(HAND_SCHEDULES[(backbone, name, epochs)]):
        plan = strategy.plan(Progress(epoch, epochs))
        assert plan.trainable == frozenset(blocks) | {"head"}, epoch
        assert plan.backbone_eval and plan.use_feature_cache == (not blocks)


def test_g_fl_unfreezes_input_block_first_in_a_run(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=g_fl", "strategy.period_epochs=1", "trainer.epochs=3",
                          "trainer.max_steps_per_epoch=1", "trainer.patience=5")
    train_cell(cfg)
    rows = read_metrics(cfg)
    assert [r["strategy/lr/stem"] > 0 for r in rows] == [False, True, True]
    assert [r["strategy/lr/layer1"] > 0 for r in rows] == [False, False, True]
    assert all(r["strategy/lr/layer4"] == 0 for r in rows)
    counts = [r["strategy/trainable_params"] for r in rows]
    assert counts[0] < counts[1] < counts[2]


def test_gradual_early_stopping_waits_until_every_block_trains(cpu_cell_config):
    # lr 0: validation never improves; patience 1 may only end the run in the last stage.
    cfg = cpu_cell_config("strategy.name=g_lf", "strategy.period_epochs=1", "trainer.epochs=9",
                          "trainer.patience=1", "optim.lr=0.0", "trainer.max_steps_per_epoch=1")
    result = train_cell(cfg)
    rows = read_metrics(cfg)
    assert [r["strategy/phase"] for r in rows] == [f"g_lf/{k}" for k in range(6)] + ["g_lf/5"]
    assert result["stopped_early"]
    early = cpu_cell_config("strategy.name=g_lf", "strategy.period_epochs=1", "trainer.epochs=9",
                            "trainer.patience=1", "optim.lr=0.0", "trainer.max_steps_per_epoch=1",
                            "strategy.early_stop_in_stages=true", out=cfg.trainer.out_dir + "/early")
    train_cell(early)
    assert len((cell_dir(early) / "metrics.jsonl").read_text().splitlines()) < len(rows)


def test_unfreeze_schedule_period_longer_than_budget_stays_head_only():
    assert unfreeze_schedule(5, 3, 4, "last_first") == [frozenset()] * 3


def test_gradual_rejects_a_zero_period():
    _, layout = tiny_layout()
    with pytest.raises(ValueError, match="strategy.period_epochs"):
        create_strategy(strategy_config_class("g_lf")(name="g_lf", period_epochs=0), layout, {}, 10)


def test_a_period_that_never_reaches_the_last_stage_is_said_at_creation(caplog):
    _, layout = tiny_layout()
    blocks = len(layout.backbone_blocks)
    with caplog.at_level(logging.WARNING, logger="strategies.gradual_unfreeze"):
        create_strategy(GradualConfig(name="g_lf", period_epochs=2), layout, {}, 2 * blocks + 1)
    assert not caplog.records  # the last stage starts at epoch 2K, the last epoch
    with caplog.at_level(logging.WARNING, logger="strategies.gradual_unfreeze"):
        create_strategy(GradualConfig(name="g_lf", period_epochs=2), layout, {}, 2 * blocks)
    assert "1 block(s) never unfreeze and early stopping never applies" in caplog.text
