"""What the policy sees of a cell folder, and what kind of arm a cell's strategy is.

The live race and the replay both build the policy's input here, from the same files: a cell's
metrics.jsonl (one line per completed epoch) and whether its result.json exists.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.cell_files import METRICS_FILE, RESULT_FILE
from engine.config import CellConfig
from engine.recommend.policy import Arm, CellView, EpochPoint

# The timings of an epoch line that add up to its device time (training, the LP feature cache, validation).
_SECONDS_KEYS = ("perf/epoch_s", "perf/feature_cache_s", "perf/val_s")


def read_points(folder: Path, monitor: str) -> tuple[EpochPoint, ...]:
    """The cell's completed epochs in order (a line cut short by a kill is not one)."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return ()
    points = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch") != len(points):
            continue  # a line from before a restart truncated the file; the trainer keeps order otherwise
        points.append(EpochPoint(value=float(row[f"val/{monitor}"]), trainable=int(row["strategy/trainable_params"]),
                                 seconds=sum(float(row.get(k, 0.0)) for k in _SECONDS_KEYS)))
    return tuple(points)


def cell_view(folder: Path, monitor: str, failed: bool = False) -> CellView:
    """The cell as it stands: done once its result.json exists, or when it failed for good."""
    return CellView(read_points(folder, monitor), done=failed or (folder / RESULT_FILE).is_file())


def arm_of(cfg: CellConfig) -> Arm:
    """The race's arm for a cell's strategy: head-first when its first epoch trains the head alone
    and a later one trains more (asked of the strategy itself, on an untrained model)."""
    from engine.models import backbone_spec, create_backbone, model_blocks, model_layout
    from strategies import create_strategy
    from strategies.protocol import Progress

    model = create_backbone(cfg.model.backbone, 2, "none")
    layout = model_layout(model, model_blocks(model, cfg.model.backbone, cfg.model.head_scope),
                          backbone_spec(cfg.model.backbone).head_layer)
    strategy = create_strategy(cfg.strategy, layout, {n: p.detach() for n, p in model.named_parameters()},
                               cfg.trainer.epochs)
    epochs = cfg.trainer.epochs
    trainable = [strategy.plan(Progress(epoch, epochs)).trainable for epoch in range(epochs)]
    head_only = trainable[0] == {layout.head_block}
    return Arm(cfg.strategy.name, head_first=head_only and any(t != trainable[0] for t in trainable))
