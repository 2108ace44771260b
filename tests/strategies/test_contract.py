"""Every registered strategy x the tiny backbones trains a short cell on the CPU."""
import json

import pytest

from engine.cell_files import cell_dir
from engine.trainer import train_cell
from strategies import list_strategies
from tests.conftest import CONTRACT_BACKBONES


@pytest.mark.parametrize("backbone", CONTRACT_BACKBONES)
@pytest.mark.parametrize("strategy", [name for name, _ in list_strategies()])
def test_contract_strategy_trains_and_logs_what_it_did(cpu_cell_config, strategy, backbone):
    cfg = cpu_cell_config("trainer.max_steps_per_epoch=2", "trainer.epochs=2", "strategy.name=" + strategy,
                          backbone=backbone)
    if strategy == "lp_ft":
        cfg.strategy.lp_epochs = 1
    result = train_cell(cfg)
    assert result["status"] == "done" and 0.0 <= result["test"]["accuracy"] <= 1.0
    rows = [json.loads(line) for line in (cell_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert row["strategy/trainable_params"] > 0 and row["strategy/phase"]
        block_lrs = {k: v for k, v in row.items() if k.startswith("strategy/lr/")}
        assert "strategy/lr/head" in block_lrs and block_lrs["strategy/lr/head"] > 0
