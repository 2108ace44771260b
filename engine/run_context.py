"""The state of one cell's run (`RunContext`) and building it (`build_context`).

The context holds state and small accessors only; the procedures that change it at an epoch
start live in engine/plan_apply.py, the steps in engine/steps.py, the epochs in engine/epochs.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from engine.config import CellConfig
from engine.data.balance import balanced_class_weights
from engine.distributed import RankGroup, init_rank_group
from engine.models import HEAD, backbone_spec, block_modules, create_backbone, model_blocks, model_layout
from strategies import create_strategy
from strategies.model_adapter import ModelAdapter, NoAdapter, model_adapter
from strategies.protocol import EpochPlan, ModelLayout, Strategy

log = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic; warn_only keeps ops without a
        # deterministic kernel usable (they are logged).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


@dataclass
class RunContext:
    """Everything one cell's run holds between epochs and steps.

    Attributes:
        cfg: the cell's config.
        device, amp_dtype, channels_last, scaler: where and in which precision it trains
            (amp_dtype None = fp32; the scaler is enabled for fp16 outside data-parallel mode).
        classes: the dataset's class names.
        model, layout, block_modules: the network, what a strategy may know of it, and each
            block's module names (for eval-mode BatchNorm).
        strategy: the strategy the loop asks for plans.
        ranks: the group of ranks training this cell together (trainer.data_parallel), else None.
        ds_engine: the DeepSpeed engine over model and optimizer, in data-parallel mode.
        forward: the module training batches go through (model, compiled model or ds_engine).
        optimizer: the optimizer of the current plan's param groups.
        plan: the plan the current epoch runs under, as applied (calibrated lr_scales).
        trainable_names, trainable_params: the tensors the plan trains, in model order.
        cached_inputs: (trainable set, EpochInputs) of the feature caches of a head-only stage.
        counters: train seconds, images and skipped images over the whole run.
        class_weights: float32 (K,) cross-entropy class weights on the device (loss.class_weights),
            None for the plain cross-entropy.
    """

    cfg: CellConfig
    device: torch.device
    classes: list[str]
    model: nn.Module
    layout: ModelLayout
    block_modules: dict[str, list[str]]
    strategy: Strategy
    amp_dtype: torch.dtype | None
    channels_last: bool
    scaler: torch.amp.GradScaler
    ranks: RankGroup | None = None
    ds_engine: object = None
    adapter: ModelAdapter = field(default_factory=NoAdapter)  # modules the strategy adds (LoRA)
    forward: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    plan: EpochPlan | None = None
    trainable_names: list[str] = field(default_factory=list)
    trainable_params: list[nn.Parameter] = field(default_factory=list)
    cached_inputs: tuple | None = None
    counters: dict = field(default_factory=lambda: {"train_s": 0.0, "train_images": 0, "skipped_images": 0})
    class_weights: torch.Tensor | None = None

    @property
    def is_main(self) -> bool:
        """The process that writes the cell's files (always, outside data-parallel mode)."""
        return self.ranks is None or self.ranks.is_main

    @property
    def shard(self) -> tuple[int, int]:
        return (self.ranks.rank, self.ranks.world) if self.ranks else (0, 1)

    def rank_data_config(self):
        """The data config of this rank: data-parallel ranks share the global train batch."""
        if self.ranks is None:
            return self.cfg.data
        return replace(self.cfg.data, train_batch_size=self.cfg.data.train_batch_size // self.ranks.world)

    def barrier(self) -> None:
        if self.ranks is not None:
            self.ranks.barrier()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last and images.dim() == 4 else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        return images, labels.to(self.device, non_blocking=True)

    def strategy_log(self, plan: EpochPlan) -> dict:
        """What the strategy did this epoch: phase, trainable count, and per block the learning rate
        its trainable tensors ran at (their mean; 0 when none trains). Frozen tensors of a partly
        trained block (Auto-RGN's BatchNorm) stay out of the mean, so it is a rate that was used."""
        group_lr = {id(p): g["lr"] for g in self.optimizer.param_groups for p in g["params"]}
        params = dict(self.model.named_parameters())
        row = {"strategy/phase": plan.phase,
               "strategy/trainable_params": sum(p.numel() for p in self.trainable_params)}
        for block, names in self.layout.blocks.items():
            lrs = [group_lr[id(params[n])] for n in names if id(params[n]) in group_lr]
            row[f"strategy/lr/{block}"] = float(np.mean(lrs)) if lrs else 0.0
        return row

    def totals(self) -> dict:
        return {"train_s": self.counters["train_s"], "train_images": self.counters["train_images"],
                "skipped_images": self.counters["skipped_images"], "device": str(self.device)}


def build_context(cfg: CellConfig, index) -> RunContext:
    """Builds model, strategy and precision settings for one cell (the optimizer comes with a plan)."""
    ranks = init_rank_group(cfg.trainer.zero_stage) if cfg.trainer.data_parallel else None
    if ranks and cfg.data.train_batch_size % ranks.world:
        raise ValueError(f"data.train_batch_size={cfg.data.train_batch_size} must divide among the "
                         f"{ranks.world} data-parallel ranks")
    device = ranks.device() if ranks else resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark and not cfg.trainer.deterministic
    amp = cfg.trainer.amp if cfg.trainer.amp != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = cfg.trainer.channels_last if cfg.trainer.channels_last is not None else device.type == "cuda"
    model = create_backbone(cfg.model.backbone, len(index.classes), cfg.model.weights, cfg.model.weights_prefix)
    adapter = model_adapter(cfg.strategy)
    adapter.adapt_(model, block_modules(model, cfg.model.backbone, cfg.model.head_scope)[HEAD])
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    blocks = model_blocks(model, cfg.model.backbone, cfg.model.head_scope)
    layout = model_layout(model, blocks, backbone_spec(cfg.model.backbone).head_layer)
    # Not copied: a strategy that keeps the pretrained values (SP's anchors) clones what it needs.
    strategy = create_strategy(cfg.strategy, layout, {n: p.detach() for n, p in model.named_parameters()},
                               cfg.trainer.epochs)
    return RunContext(cfg=cfg, device=device, classes=list(index.classes), model=model, layout=layout,
                      block_modules=block_modules(model, cfg.model.backbone, cfg.model.head_scope),
                      strategy=strategy, amp_dtype=_AMP_DTYPES[amp], channels_last=channels_last,
                      scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16" and ranks is None),
                      ranks=ranks, adapter=adapter, class_weights=_class_weights(cfg, index, device))


def _class_weights(cfg: CellConfig, index, device: torch.device) -> torch.Tensor | None:
    """loss.class_weights as a tensor: None, or the balanced weights of the train split's labels."""
    if cfg.loss.class_weights == "none":
        return None
    weights = balanced_class_weights([s.label for s in index.splits["train"]], len(index.classes))
    return torch.tensor(weights, dtype=torch.float32, device=device)
