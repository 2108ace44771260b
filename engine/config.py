"""Config as data: dataclasses loaded from YAML, with dotted `key=value` overrides.

Every value that docs/protocol.md names is a field here (the protocol) or in the
config dataclass beside its strategy (strategies/). Loading is strict: an unknown key or a value
of the wrong type raises ValueError naming the key and where it came from.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engine.cell_files import make_cell_id

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    path: str = ""
    format: Literal["auto", "imagefolder", "csv", "npz"] = "auto"
    resize: int = 232
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augment: bool = False  # flips and small rotations; off in the study's protocol
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # used when the data has no val/test
    split_seed: int = 0
    loader: Literal["auto", "torchvision", "dali", "gpu_cache"] = "auto"  # auto: the fastest that fits
    num_workers: int = 2
    train_batch_size: int = 96
    eval_batch_size: int = 64
    on_bad_image: Literal["skip", "error"] = "skip"  # undecodable image at load time
    # Real datasets (README, Data): groups kept in one split, label conflicts, DICOM, class balance.
    group_pattern: str = ""  # regex over the relative path; its first capture group is the group id
    drop_cross_split_duplicates: bool = False  # leave out train copies of val/test images
    on_label_conflict: Literal["skip", "error", "keep"] = "skip"  # one image under two labels
    dicom_window: tuple[float, float] | None = None  # (center, width); None = the file's VOI LUT/window
    dicom_frame: int | None = None  # the frame of multi-frame DICOM files; None = such a file is an error
    sampler: Literal["uniform", "balanced"] = "uniform"  # balanced: train draws classes equally often

    def __post_init__(self):
        if self.group_pattern:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as e:
                raise ValueError(f"data.group_pattern is not a regular expression: {e}") from None
            if groups < 1:
                raise ValueError(f"data.group_pattern needs a capture group (the group id), got {self.group_pattern!r}")
        if self.dicom_window is not None and (len(self.dicom_window) != 2 or self.dicom_window[1] < 1):
            raise ValueError(f"data.dicom_window must be [center, width] with width >= 1, got {self.dicom_window}")
        _at_least("data", dicom_frame=(self.dicom_frame, 0))
        for key, allowed in (("on_label_conflict", ("skip", "error", "keep")), ("sampler", ("uniform", "balanced"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"data.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")


@dataclass
class LossConfig:
    # balanced: cross-entropy weight N / (K * n_c) for class c (n_c train images of K classes, N in all)
    class_weights: Literal["none", "balanced"] = "none"

    def __post_init__(self):
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"loss.class_weights must be 'none' or 'balanced', got {self.class_weights!r}")


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path to a state_dict file
    # The prefix the file's keys carry (e.g. "module."; "" = none); null = find it among module.,
    # model., backbone., encoder. (engine/weights.py). Only for a weights file.
    weights_prefix: str | None = None
    # block: the spec's head block (VGG's three classifier linears, DenseNet's norm5+classifier);
    # last_layer: only the replaced layer, the rest of that block becomes block "pre_head".
    head_scope: Literal["block", "last_layer"] = "block"

    def __post_init__(self):
        if self.weights_prefix is not None and self.weights in ("imagenet", "none"):
            raise ValueError(f"model.weights_prefix applies to a weights file, not to model.weights={self.weights}")


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    schedule: Literal["cosine", "constant"] = "cosine"
    t_max_epochs: int | None = None  # cosine period; None = trainer.epochs
    impl: Literal["auto", "fused", "foreach", "apex"] = "auto"
    grad_clip_norm: float | None = None

    def __post_init__(self):
        _at_least("optim", lr=(self.lr, 0.0), weight_decay=(self.weight_decay, 0.0),
                  t_max_epochs=(self.t_max_epochs, 1), grad_clip_norm=(self.grad_clip_norm, 0.0))


@dataclass
class TrainerConfig:
    epochs: int = 30
    patience: int = 3
    monitor: Literal["accuracy", "balanced_accuracy", "macro_f1", "auroc", "kappa"] = "accuracy"
    amp: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no code generation)
    feature_cache: bool = True  # train head-only stages on cached backbone features (spec 2)
    cudnn_benchmark: bool = True
    seed: int = 684
    deterministic: bool = False
    device: str = "auto"
    out_dir: str = "runs"
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benches; None = full epoch
    # One cell trained by every rank of the launcher together (engine/distributed.py); the train
    # batch size stays the global one and is divided among the ranks.
    data_parallel: bool = False
    zero_stage: int = 0

    def __post_init__(self):
        _at_least("trainer", epochs=(self.epochs, 1), patience=(self.patience, 1),
                  max_steps_per_epoch=(self.max_steps_per_epoch, 1), zero_stage=(self.zero_stage, 0))


def _at_least(section: str, **values: tuple) -> None:
    """Raises ValueError naming `section.key` for a value below its minimum (None means unset)."""
    for key, (value, minimum) in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"{section}.{key} must be at least {minimum}, got {value}")


@dataclass
class TrackingConfig:
    backend: Literal["none", "wandb"] = "none"
    project: str = "medft"
    mode: Literal["offline", "online", "disabled"] = "offline"
    group: str = ""
    dir: str = ""  # W&B files; "" = the cell's output directory
    init_timeout_s: float = 30.0


@dataclass
class CellConfig:
    """One cell of the study: dataset x backbone x strategy x seed."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: Any = None  # the strategy's own config dataclass, chosen by its `name`
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    name: str = ""  # cell id; "" = derived from dataset, backbone, strategy and seed

    def __post_init__(self):
        if self.strategy is None:
            self.strategy = parse_strategy({}, "defaults")

    @property
    def cell_id(self) -> str:
        if self.name:
            return self.name
        dataset = Path(self.data.path).name or "data"
        return make_cell_id(dataset, self.model.backbone, self.strategy.name, self.trainer.seed)


# Keys of a CellConfig that do not change a cell's results: a cell folder whose saved config
# differs from a new one only in these is the same cell (engine/config_guard.py compares the rest).
# A key names a field or a whole section; each value says why it may differ.
RESULT_NEUTRAL_KEYS = {
    "name": "the cell id: it names the folder, so it is the same whenever the folder is",
    "trainer.out_dir": "where the folder lies, not what trained in it",
    "trainer.device": "which device of the same kind: the grid puts each rank on its own cuda:N",
    "trainer.compile": "the same arithmetic, compiled or not (differences at rounding level)",
    "trainer.compile_backend": "as trainer.compile",
    "trainer.cudnn_benchmark": "picks among cuDNN kernels of the same arithmetic (rounding level)",
    "trainer.channels_last": "a memory layout of the same arithmetic (rounding level)",
    "optim.impl": "fused, foreach or apex kernels of the same update rule (rounding level)",
    "data.num_workers": "loader processes: the batches are the same, only how fast they come",
    "data.eval_batch_size": "evaluation is per image in eval mode; the batch only sets the pace",
    "tracking": "where metrics are sent, not what they are",
}


def parse_strategy(data: dict, source: str, key: str = "strategy") -> Any:
    """Builds the config dataclass of the strategy named by `data['name']` (default ft)."""
    from strategies import strategy_config_class

    if not isinstance(data, dict):
        raise ValueError(f"{source}: '{key}' must be a mapping, got {type(data).__name__}")
    name = data.get("name", "ft")
    try:
        cls = strategy_config_class(name)
    except KeyError as e:
        raise ValueError(f"{source}: '{key}.name': {e.args[0]}") from None
    return from_dict(cls, data, source, key)


_HOOKS = {(CellConfig, "strategy"): parse_strategy}


def from_dict(cls, data: Any, source: str, prefix: str = ""):
    """Builds dataclass `cls` from a mapping, checking every key and type.

    Raises:
        ValueError: naming the dotted key and `source` for an unknown key or a wrong type.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ValueError(f"{source}: unknown key '{dotted}' (known: {', '.join(sorted(names))})")
        hook = _HOOKS.get((cls, key))
        kwargs[key] = hook(value, source, dotted) if hook else _coerce(hints[key], value, source, dotted)
    return cls(**kwargs)


def _coerce(hint, value, source: str, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{source}: '{key}': {value!r} fits none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: '{key}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ValueError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
        item_hints = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else args
        items = [_coerce(h, v, source, f"{key}[{i}]") for i, (h, v) in enumerate(zip(item_hints, value))]
        return origin(items)
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ValueError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Sets dotted `a.b=value` pairs in a nested mapping; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like key.path=value")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override '{item}': '{part}' is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return data


def load_cell_config(path: str | Path | None = None, overrides: list[str] = ()) -> CellConfig:
    """Loads a cell config from YAML (or the defaults when `path` is None) plus overrides."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if overrides:
        source += " + overrides"
    return from_dict(CellConfig, apply_overrides(data, list(overrides)), source)


def to_dict(cfg) -> dict:
    """The resolved config as plain YAML-ready data (tuples become lists)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
