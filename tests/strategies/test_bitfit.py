import json

import torch

from engine.cell_files import LAST_CKPT, METRICS_FILE, cell_dir
from engine.data.sources import load_index
from engine.run_context import build_context
from engine.trainer import train_cell
from strategies.bitfit import bitfit_trainable
from strategies.protocol import Progress
from tests.helpers import start_epoch, tiny_layout


def test_bitfit_plan_is_every_backbone_bias_and_the_head():
    model, layout = tiny_layout("tiny_convnext")
    names = [n for n, _ in model.named_parameters()]
    head = set(layout.blocks["head"])
    expected = {n for n in names if n.endswith(".bias") and n not in head}
    assert bitfit_trainable(layout) == frozenset(expected) | {"head"}
    assert any(".block.5." in n for n in expected)  # the MLP linears' biases, not only the norms'


def test_bitfit_trains_biases_and_head_and_keeps_every_other_weight(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=bitfit", "trainer.max_steps_per_epoch=2", "optim.lr=0.01")
    ctx = build_context(cfg, load_index(cfg.data))
    initial = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    plan = start_epoch(ctx, ctx.strategy.plan(Progress(0, 2)), 0)
    expected_count = sum(p.numel() for n, p in ctx.model.named_parameters()
                         if n.endswith(".bias") or n.startswith("fc."))
    train_cell(cfg)
    trained = torch.load(cell_dir(cfg) / LAST_CKPT, weights_only=False)["model"]
    params = {n for n, _ in ctx.model.named_parameters()}
    for key in params:
        trains = key.endswith(".bias") or key.startswith("fc.")
        assert torch.equal(initial[key], trained[key]) != trains, key
    # BatchNorm statistics follow the target data: no block is frozen whole, so it runs in train mode.
    assert not plan.backbone_eval and not torch.equal(initial["bn1.running_mean"], trained["bn1.running_mean"])
    rows = [json.loads(line) for line in (cell_dir(cfg) / METRICS_FILE).read_text().splitlines()]
    assert [r["strategy/trainable_params"] for r in rows] == [expected_count] * 2
