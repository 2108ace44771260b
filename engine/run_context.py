"""The state of one cell's run: model, strategy, optimizer, precision, and applying a plan.

Applying a plan is where the loop carries out what the strategy answered: it sets
`requires_grad`, rebuilds the optimizer with one param group per lr_scales key, and recompiles
after a change of the trainable set (torch.compile does not notice a `requires_grad` change on a
module it already compiled: pytorch#139476, measured in ../shared/spec/performance.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from engine.config import CellConfig, to_dict
from engine.distributed import DataParallel, init_data_parallel
from engine.data.sharding import shard_batches
from engine.feature_cache import (FeatureCache, build_feature_rows, cache_applies, shared_rows,
                                  weights_fingerprint)
from engine.models import (HEAD, backbone_spec, block_modules, create_backbone, features_and_head, model_blocks,
                           model_layout)
from engine.optim import build_optimizer, epoch_lr, param_groups, set_group_lrs, trainable_param_names
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


@dataclass(frozen=True)
class EpochInputs:
    """What one epoch trains and validates on, and through which module."""

    train: object  # Batches
    val: object  # Batches
    train_forward: nn.Module
    eval_forward: nn.Module


@dataclass
class RunContext:
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
    parallel: DataParallel | None = None  # trainer.data_parallel: every rank trains this cell
    engine: object = None  # the DeepSpeed engine over the model, in data-parallel mode
    adapter: ModelAdapter = field(default_factory=NoAdapter)  # modules the strategy adds (LoRA)
    forward: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    plan: EpochPlan | None = None
    trainable_names: list[str] = field(default_factory=list)
    trainable_params: list[nn.Parameter] = field(default_factory=list)
    cached_inputs: tuple[frozenset, EpochInputs] | None = None  # the feature caches of a head-only stage
    counters: dict = field(default_factory=lambda: {"train_s": 0.0, "train_images": 0, "skipped_images": 0})

    @property
    def is_main(self) -> bool:
        """The process that writes the cell's files (always, outside data-parallel mode)."""
        return self.parallel is None or self.parallel.is_main

    @property
    def shard(self) -> tuple[int, int]:
        return (self.parallel.rank, self.parallel.world) if self.parallel else (0, 1)

    def rank_data_config(self):
        """The data config of this rank: data-parallel ranks share the global train batch."""
        if self.parallel is None:
            return self.cfg.data
        return replace(self.cfg.data, train_batch_size=self.cfg.data.train_batch_size // self.parallel.world)

    def barrier(self) -> None:
        if self.parallel is not None:
            self.parallel.barrier()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last and images.dim() == 4 else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        return images, labels.to(self.device, non_blocking=True)

    def apply_plan(self, plan: EpochPlan, epoch: int, calibration_loader=None) -> EpochPlan:
        """Carries out `plan` for `epoch` and returns it as applied (with calibrated lr_scales).

        With `calibration_loader` and `plan.calibration_batches`, the strategy first gets the
        per-tensor norms of that many batches (engine/epochs.py) and may answer new lr_scales.
        """
        previous = self.plan
        names = trainable_param_names(plan, self.layout)
        params = dict(self.model.named_parameters())
        chosen = set(names)
        for name, p in params.items():
            p.requires_grad_(name in chosen)
        self.trainable_names, self.trainable_params = names, [params[n] for n in names]
        structural = previous is None or (plan.trainable, plan.backbone_eval) != (previous.trainable,
                                                                                previous.backbone_eval)
        if structural:
            self.forward = self._compiled()
        if calibration_loader is not None and plan.calibration_batches:
            from engine.epochs import calibration_norms
            scales = self.strategy.update_scales(calibration_norms(self, calibration_loader, plan, epoch))
            if scales is not None:
                plan = replace(plan, lr_scales=dict(scales))
        if structural or plan.fresh_optimizer or plan.phase != previous.phase or \
                set(plan.lr_scales) != set(previous.lr_scales) or plan.weight_decay != previous.weight_decay:
            self.optimizer = build_optimizer(self.cfg.optim, param_groups(plan, self.layout, params),
                                             plan.weight_decay, self.device)
            if self.parallel is not None:
                self._wrap_data_parallel(plan)
        else:
            for group in self.optimizer.param_groups:
                group["lr_scale"] = float(plan.lr_scales.get(group["name"], 1.0))
        set_group_lrs(self.optimizer, epoch_lr(self.cfg.optim, epoch, self.cfg.trainer.epochs), plan.lr_factor)
        self.plan = plan
        return plan

    def epoch_inputs(self, plan: EpochPlan, loaders, index) -> EpochInputs:
        """The epoch's batches and the module they go through: cached features and the head when
        the plan allows it (train and validation alike), else the image loaders and the model."""
        cfg = self.cfg
        head = self.layout.blocks[self.layout.head_block]
        if not (cfg.trainer.feature_cache and cache_applies(plan, cfg.data.augment, self.trainable_names, head)):
            self.cached_inputs = None
            return EpochInputs(loaders.train, loaders.val, self.forward, self.forward)
        if self.cached_inputs is None or self.cached_inputs[0] != plan.trainable:
            features, head_module = features_and_head(self.model, cfg.model.backbone, cfg.model.head_scope)
            seed, shard = cfg.trainer.seed, self.shard
            # Same images, same backbone weights, same precision and shard: the same features.
            same_features = (json.dumps(to_dict(cfg.data), sort_keys=True), _pixel_source(loaders.train),
                             cfg.model.backbone, cfg.model.head_scope, weights_fingerprint(features),
                             str(self.device), str(self.amp_dtype), self.channels_last, shard)

            def cache(ordered, split, batch_size, shuffle, positions):
                samples = index.splits[split]
                rows = shared_rows((split, *same_features), lambda: build_feature_rows(
                    features, ordered, positions, [s.source for s in samples], self.autocast, self.to_device))
                return FeatureCache(rows, lambda epoch: shard_batches(len(samples), seed, epoch, batch_size,
                                                                       shuffle, shard))
            n_train, n_val = len(index.splits["train"]), len(index.splits["val"])
            val_positions = np.arange(n_val)[shard[0]::shard[1]]  # the rank's evaluation shard
            # Every rank caches the whole train split: its batches draw from all of it.
            inputs = EpochInputs(cache(loaders.train_in_order, "train", self.rank_data_config().train_batch_size,
                                       True, np.arange(n_train)),
                                 cache(loaders.val, "val", cfg.data.eval_batch_size, False, val_positions),
                                 head_module, head_module)
            self.cached_inputs = (plan.trainable, inputs)
        return self.cached_inputs[1]

    def _wrap_data_parallel(self, plan: EpochPlan) -> None:
        if self.parallel.zero_stage > 0 and (plan.extra_grad or plan.calibration_batches or plan.norms_every_k_steps):
            raise ValueError(f"strategy '{self.strategy.name}' reads or changes gradients, which ZeRO stage "
                             f"{self.parallel.zero_stage} keeps partitioned: use trainer.zero_stage=0")
        cfg = self.cfg
        self.engine = self.parallel.wrap(self.model, self.optimizer, self.amp_dtype,
                                         cfg.data.train_batch_size // self.parallel.world, cfg.optim.grad_clip_norm)
        if cfg.trainer.compile:
            self.engine.compile(backend=cfg.trainer.compile_backend)
        self.forward = self.engine

    def _compiled(self) -> nn.Module:
        if not self.cfg.trainer.compile:
            return self.model
        torch._dynamo.reset()  # drop graphs guarded on the old requires_grad pattern (pytorch#139476)
        return torch.compile(self.model, backend=self.cfg.trainer.compile_backend)

    def set_train_modes(self, plan: EpochPlan) -> None:
        """Training mode, except frozen blocks when the plan freezes their BatchNorm statistics."""
        self.model.train()
        if plan.backbone_eval:
            trainable = set(self.trainable_names)
            for block, names in self.layout.blocks.items():
                if trainable.isdisjoint(names):
                    for module in self.block_modules.get(block, []):
                        self.model.get_submodule(module).eval()

    def strategy_log(self, plan: EpochPlan) -> dict:
        """What the strategy did this epoch: phase, trainable count, effective lr per block."""
        group_lr = {id(p): g["lr"] for g in self.optimizer.param_groups for p in g["params"]}
        params = dict(self.model.named_parameters())
        row = {"strategy/phase": plan.phase,
               "strategy/trainable_params": sum(p.numel() for p in self.trainable_params)}
        for block, names in self.layout.blocks.items():
            lrs = [group_lr.get(id(params[n]), 0.0) for n in names]
            row[f"strategy/lr/{block}"] = float(np.mean(lrs)) if lrs else 0.0
        return row

    def totals(self) -> dict:
        return {"train_s": self.counters["train_s"], "train_images": self.counters["train_images"],
                "skipped_images": self.counters["skipped_images"], "device": str(self.device)}


def _pixel_source(batches) -> tuple[str, ...]:
    """The classes that decode a loader's images (data.loader=auto may pick another one per cell:
    their pixels differ by a level or so, so their features are not interchangeable)."""
    chain, node = [], batches
    while node is not None:
        chain.append(type(node).__name__)
        node = getattr(node, "decoder", None) or getattr(node, "inner", None)
    return tuple(chain)


def build_context(cfg: CellConfig, index) -> RunContext:
    """Builds model, strategy and precision settings for one cell (the optimizer comes with a plan)."""
    parallel = init_data_parallel(cfg.trainer.zero_stage) if cfg.trainer.data_parallel else None
    if parallel and cfg.data.train_batch_size % parallel.world:
        raise ValueError(f"data.train_batch_size={cfg.data.train_batch_size} must divide among the "
                         f"{parallel.world} data-parallel ranks")
    device = parallel.device() if parallel else resolve_device(cfg.trainer.device)
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
                      scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16" and parallel is None),
                      parallel=parallel, adapter=adapter)
