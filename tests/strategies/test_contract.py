"""Every registered strategy x the tiny backbones trains a short cell on the CPU."""
import pytest

from engine import trainer
from engine.trainer import train_cell
from strategies import list_strategies
from tests.conftest import CONTRACT_BACKBONES
from tests.helpers import read_metrics


@pytest.mark.parametrize("backbone", CONTRACT_BACKBONES)
@pytest.mark.parametrize("strategy", [name for name, _ in list_strategies()])
def test_contract_strategy_trains_and_logs_what_it_did(cpu_cell_config, monkeypatch, strategy, backbone):
    partitions = []  # per epoch: (epoch, grouped ids in order, requires_grad ids, ctx.trainable_params ids)

    def recording_refresh(ctx, plan, epoch):
        real_refresh(ctx, plan, epoch)
        grouped = [id(p) for group in ctx.optimizer.param_groups for p in group["params"]]
        trainable = {id(p) for p in ctx.model.parameters() if p.requires_grad}
        partitions.append((epoch, grouped, trainable, {id(p) for p in ctx.trainable_params}))
    real_refresh = trainer.refresh_optimizer
    monkeypatch.setattr(trainer, "refresh_optimizer", recording_refresh)
    cfg = cpu_cell_config("trainer.max_steps_per_epoch=2", "trainer.epochs=2", "strategy.name=" + strategy,
                          backbone=backbone)
    if strategy == "lp_ft":
        cfg.strategy.lp_epochs = 1
    result = train_cell(cfg)
    assert result["status"] == "done"
    assert [epoch for epoch, *_ in partitions] == [0, 1]
    for epoch, grouped, trainable, recorded in partitions:
        # The param groups partition the trainable tensors exactly: each once, nothing else.
        assert len(grouped) == len(set(grouped)), f"epoch {epoch}: a tensor in two param groups"
        assert set(grouped) == trainable == recorded, f"epoch {epoch}: groups differ from the trainable set"
    rows = read_metrics(cfg)
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert row["strategy/trainable_params"] > 0 and row["strategy/phase"]
        block_lrs = {k: v for k, v in row.items() if k.startswith("strategy/lr/")}
        assert "strategy/lr/head" in block_lrs and block_lrs["strategy/lr/head"] > 0
