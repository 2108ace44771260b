"""The strategies: importing this package registers every one (strategies/registry.py)."""
from __future__ import annotations

from strategies.protocol import EpochPlan, ModelLayout, Progress, Strategy, TensorNorms
from strategies.registry import create_strategy, list_strategies, register_strategy, strategy_config_class

# Each import registers its strategies, in the order of the spec (then ours).
from strategies import full_ft  # noqa: F401,I001
from strategies import linear_probe  # noqa: F401
from strategies import gradual_unfreeze  # noqa: F401
from strategies import lp_ft  # noqa: F401
from strategies import sp_regularized  # noqa: F401
from strategies import auto_rgn  # noqa: F401
from strategies import layerwise  # noqa: F401
from strategies import bitfit, lora  # noqa: F401

__all__ = ["EpochPlan", "ModelLayout", "Progress", "Strategy", "TensorNorms", "create_strategy",
           "list_strategies", "register_strategy", "strategy_config_class"]
