"""Pretrained weights for a backbone: torchvision's ImageNet weights, or a file from other training code.

Checkpoints written by other training code (medical-domain weights such as RadImageNet or
TorchXRayVision ports are usually distributed that way) wrap the state_dict (`state_dict`,
`model`) and prefix its keys with the wrapper's attribute (`module.` from DataParallel,
`model.`, `backbone.`, `encoder.`). The wrapper keys are unwrapped; the prefix is the one
`model.weights_prefix` names, or else the strip of known prefixes that matches the most keys of the
backbone (a backbone's own module may be called `encoder`, as ViT's is: a strip that matches fewer
keys is not taken). What matched and what did not is logged.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
_WRAPPER_KEYS = ("state_dict", "model")


@dataclass(frozen=True)
class WeightsReport:
    """What loading a weights file did: the prefix stripped and the keys that did or did not load."""

    prefix: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # backbone keys the file does not hold (left at their initial values)
    unexpected: tuple[str, ...]  # file keys the backbone does not have (outside the prefix: in full)
    mismatched: tuple[str, ...]  # keys of both whose shapes differ (left at their initial values)

    def summary(self) -> str:
        def few(keys):
            return f"{len(keys)}{' ' + str(list(keys[:5])) if keys else ''}"
        return (f"stripped prefix '{self.prefix}', {len(self.loaded)} tensors loaded, missing {few(self.missing)}, "
                f"unexpected {few(self.unexpected)}, shape mismatches {few(self.mismatched)}")


def read_state_file(path: Path) -> dict:
    """The state_dict a weights file holds, unwrapped from `state_dict`/`model` entries.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not hold a state_dict.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: no such file: {path} (expected imagenet, none or a path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in _WRAPPER_KEYS):
        state = next(state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict))
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ValueError(f"model.weights: {path} does not hold a state_dict")
    return tensors


def strip_prefix(state: dict, prefix: str) -> dict:
    """The entries under `prefix`, with it removed (the others belong to another part of the wrapper)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def detect_prefix(state: dict, own_keys: set[str], max_depth: int = 3) -> str:
    """The chain of up to `max_depth` wrapper prefixes (`module.backbone.`) whose strip matches the most
    own keys; the shortest such chain, so a strip that matches no more keys is not taken."""
    chains = [""] + ["".join(c) for depth in range(1, max_depth + 1)
                     for c in itertools.product(WRAPPER_PREFIXES, repeat=depth)]
    matches = {chain: len(own_keys & set(strip_prefix(state, chain))) for chain in chains}
    return max(chains, key=lambda chain: (matches[chain], -len(chain)))


def load_weights_(model: nn.Module, state: dict, prefix: str | None, skip_prefix: str, source: str) -> WeightsReport:
    """Loads `state` into `model` where keys and shapes match.

    Args:
        prefix: the key prefix to strip; None finds it (`detect_prefix`).
        skip_prefix: keys not to load (the pretrained head, replaced anyway: a file for another
            class count must not fail on it).
        source: the file, for messages.

    Raises:
        ValueError: no key of the file matches the model, or `prefix` is on no key.
    """
    own = model.state_dict()
    if prefix is None:
        prefix = detect_prefix(state, set(own))
    elif prefix and not any(k.startswith(prefix) for k in state):
        raise ValueError(f"model.weights_prefix: no key of {source} starts with '{prefix}' "
                         f"(its first keys: {list(state)[:3]})")
    outside = [k for k in state if not k.startswith(prefix)]  # another part of the wrapper: not loaded
    state = {k: v for k, v in strip_prefix(state, prefix).items() if not k.startswith(skip_prefix)}
    mismatched = tuple(sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape))
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not loadable:
        raise ValueError(f"model.weights: no key of {source} matches the backbone (after stripping "
                         f"'{prefix}'): the file's first keys are {list(state)[:3] or 'none'}, the backbone's "
                         f"{list(own)[:3]}; set model.weights_prefix to the prefix its keys carry")
    model.load_state_dict(loadable, strict=False)
    missing = tuple(k for k in own if k not in state and not k.startswith(skip_prefix))
    unexpected = tuple(sorted(outside + [k for k in state if k not in own]))
    report = WeightsReport(prefix, tuple(loadable), missing, unexpected, mismatched)
    level = logging.WARNING if report.missing or report.unexpected or report.mismatched else logging.INFO
    log.log(level, "weights %s: %s", source, report.summary())
    return report
