"""bench/sp_ratio.py on the demo data: the CE gradient it measures is the plain autograd one, and its
ratios and summaries follow from it."""
import json

import torch.nn.functional as F

from bench import sp_ratio
from engine.data.loaders import build_loaders
from engine.data.sources import load_index
from engine.run_context import build_context


def test_sp_ratio_measures_the_ce_gradient_without_the_penalty(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=l1_sp", "data.train_batch_size=8")
    index = load_index(cfg.data)
    ctx = build_context(cfg, index)
    loader = build_loaders(index, cfg.data, cfg.trainer.seed, ctx.device).train
    rows = sp_ratio.measure(ctx, loader, warmup_steps=2, batches=2)
    params = dict(ctx.model.named_parameters())
    sq = {n: 0.0 for n in rows}
    for batch in sp_ratio._batches(loader, 2, epoch=1):  # the same batches, by hand
        ctx.model.zero_grad()
        F.cross_entropy(ctx.model(batch.images), batch.labels).backward()
        for n in rows:
            sq[n] += float(params[n].grad.square().mean()) / 2
    for n, row in rows.items():
        assert abs(row["ce_grad_rms"] - sq[n] ** 0.5) <= 1e-6 * sq[n] ** 0.5, n
    moved = sum(r["nonzero"] * r["numel"] for r in rows.values()) / sum(r["numel"] for r in rows.values())
    assert moved > 0.5  # the warm-up steps moved the weights off w0, where sign(w - w0) = 0
    assert "fc.weight" not in rows  # the new head's term is beta * w, not a distance to w0


def test_sp_ratio_rows_and_summaries(cpu_cell_config, demo_data, capsys):
    sp_ratio.main(["--data", str(demo_data), "--crop", "32", "--alphas", "1,1e-9", "--warmup-steps", "1",
                   "--batches", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tensors = [r for r in rows if r["row"] == "tensor"]
    big, small = [r for r in rows if r["row"] == "summary"]
    for r in tensors:
        assert r["ratio@1"] == r["nonzero"] ** 0.5 / r["ce_grad_rms"]
    assert big["tensors_over_1"] == sum(r["ratio@1"] > 1 for r in tensors) == len(tensors) == big["tensors"]
    assert small["tensors_over_1"] == 0 and small["weights_over_1"] == 0.0
