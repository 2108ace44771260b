"""Helpers shared by the tests: a cell's files, tiny layouts, and the loop's epoch start."""
from __future__ import annotations

import json
from pathlib import Path

from engine.cell_files import METRICS_FILE, RESULT_FILE, cell_dir
from engine.models import backbone_spec, create_backbone, model_blocks, model_layout
from engine.plan_apply import refresh_optimizer, set_trainable, with_scales
from engine.steps import calibration_norms


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_metrics(cfg) -> list[dict]:
    """The metrics.jsonl rows of a cell, one per epoch."""
    return read_jsonl(cell_dir(cfg) / METRICS_FILE)


def read_result(cfg) -> dict:
    """The result.json of a finished cell."""
    return json.loads((cell_dir(cfg) / RESULT_FILE).read_text())


def tiny_layout(backbone: str = "tiny_resnet", num_classes: int = 3):
    """(model, layout) of a tiny backbone with fresh weights."""
    model = create_backbone(backbone, num_classes, "none")
    return model, model_layout(model, model_blocks(model, backbone), backbone_spec(backbone).head_layer)


def start_epoch(ctx, plan, epoch: int, calibration_loader=None):
    """The epoch start of `train_cell`, step by step as it calls them; returns the plan as applied."""
    set_trainable(ctx, plan)
    if calibration_loader is not None and plan.calibration_batches:
        plan = with_scales(plan, ctx.strategy.update_scales(calibration_norms(ctx, calibration_loader, plan, epoch)))
    refresh_optimizer(ctx, plan, epoch)
    return plan


def torch_cosine_lrs(lr: float, t_max: int, epochs: int) -> list[float]:
    """The rate of each of `epochs` epochs under torch's CosineAnnealingLR(T_max=t_max) from `lr`: the
    independent reference the schedule tests pin medft's against."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates
