"""What the loop asks a strategy that adds modules to the backbone (LoRA's adapters).

Most strategies choose among the backbone's own parameters. One that adds modules also provides a
`ModelAdapter`, registered under its strategy's name with `@register_model_adapter`; the loop asks it
four things, and every other strategy gets `NoAdapter`, which changes nothing:

- `adapt_(model, head_modules)`: add the modules, right after the backbone is built and before its
  blocks and layout are derived, so that the new parameters fall in their blocks and the strategy's
  plan can name them (the head modules stay as they are: the head trains in full);
- `merged(model)`: a context in which the model computes with plain weights (validation and test);
- `plain_state_dict(model)`: the weights as the plain backbone's state_dict, what `best.pt` holds;
- `load_plain_state_dict_(model, state)`: loads such weights back into the adapted model (the test
  of the best weights), so that it computes what the plain backbone with them computes.

The adapter changes the model; the strategy still only answers with plans (strategies/protocol.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from torch import Tensor, nn


class ModelAdapter(Protocol):
    def adapt_(self, model: nn.Module, head_modules: list[str]) -> None: ...

    def merged(self, model: nn.Module) -> contextlib.AbstractContextManager: ...

    def plain_state_dict(self, model: nn.Module) -> dict[str, Tensor]: ...

    def load_plain_state_dict_(self, model: nn.Module, state: dict[str, Tensor]) -> None: ...


class NoAdapter:
    """The adapter of every strategy that trains the backbone's own parameters."""

    def adapt_(self, model: nn.Module, head_modules: list[str]) -> None:
        pass

    @contextlib.contextmanager
    def merged(self, model: nn.Module) -> Iterator[None]:
        yield

    def plain_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        return model.state_dict()

    def load_plain_state_dict_(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        model.load_state_dict(state)


_ADAPTERS: dict[str, Callable[[Any], ModelAdapter]] = {}


def register_model_adapter(strategy_name: str):
    """Registers `factory(strategy_cfg) -> ModelAdapter` for the strategy `strategy_name`."""
    def decorate(factory):
        if strategy_name in _ADAPTERS:
            raise ValueError(f"a model adapter for strategy '{strategy_name}' is registered twice")
        _ADAPTERS[strategy_name] = factory
        return factory
    return decorate


def model_adapter(strategy_cfg) -> ModelAdapter:
    """The adapter of the strategy `strategy_cfg.name` configures (NoAdapter for most)."""
    factory = _ADAPTERS.get(strategy_cfg.name)
    return factory(strategy_cfg) if factory else NoAdapter()
