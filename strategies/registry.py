"""The strategy registry: `@register_strategy` beside each strategy, `create_strategy` for the loop.

It lives apart from strategies/__init__.py, which imports every strategy module: the modules
import the registry from here, so no file imports one that imports it back.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from strategies.protocol import ModelLayout, Strategy


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
