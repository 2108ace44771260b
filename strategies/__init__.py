"""The strategy registry: `@register_strategy` beside each strategy, `create_strategy` for the loop."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from strategies.protocol import EpochPlan, ModelLayout, Progress, Strategy, TensorNorms


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Strategy]
    config_cls: type
    summary: str


_REGISTRY: dict[str, _Entry] = {}


def register_strategy(name: str, config_cls: type, summary: str):
    """Registers a strategy factory `factory(cfg, layout, initial_params, epochs) -> Strategy`."""
    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"strategy '{name}' is registered twice")
        _REGISTRY[name] = _Entry(factory, config_cls, summary)
        return factory
    return decorate


def strategy_config_class(name: str) -> type:
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name].config_cls


def list_strategies() -> list[tuple[str, str]]:
    return [(name, entry.summary) for name, entry in _REGISTRY.items()]


def create_strategy(cfg, layout: ModelLayout, initial_params: Mapping[str, Tensor], epochs: int) -> Strategy:
    """Builds the strategy that `cfg.name` names.

    Args:
        cfg: the strategy's config dataclass.
        layout: blocks and parameter kinds of the model.
        initial_params: parameter name -> pretrained value (the live tensors: clone what you keep).
        epochs: the epoch budget E of the run.

    Raises:
        ValueError: for a config the strategy cannot run (named field), before training starts.
    """
    return _REGISTRY[cfg.name].factory(cfg, layout, initial_params, epochs)


# Each import registers its strategies, in the order of the spec (then ours).
from strategies import full_ft  # noqa: E402,F401,I001
from strategies import linear_probe  # noqa: E402,F401
from strategies import gradual_unfreeze  # noqa: E402,F401
from strategies import lp_ft  # noqa: E402,F401
from strategies import sp_regularized  # noqa: E402,F401
from strategies import auto_rgn  # noqa: E402,F401
from strategies import layerwise  # noqa: E402,F401
from strategies import bitfit, lora  # noqa: E402,F401

__all__ = ["EpochPlan", "ModelLayout", "Progress", "Strategy", "TensorNorms", "create_strategy",
           "list_strategies", "register_strategy", "strategy_config_class"]
