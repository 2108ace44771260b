"""The loop's use of a strategy's ModelAdapter (strategies/model_adapter.py), with a toy adapter.

The toy adds a scale after the first block's first convolution (so its parameter lies in that
block) and reports its merged weights as the plain backbone's: conv weight x scale.
"""
import contextlib
import json

import pytest
import torch
from torch import nn

from engine.cell_files import BEST_CKPT, METRICS_FILE, cell_dir
from engine.models import create_backbone
from engine.trainer import train_cell
from strategies import model_adapter as adapters

TARGET = "layer1.0.conv1"


class ScaledConv(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.scale = conv, nn.Parameter(torch.full((), 2.0))
        self.merged = False

    def forward(self, x):
        return self.conv(x) if self.merged else self.conv(x) * self.scale


class ToyAdapter:
    def __init__(self):
        self.head_modules, self.merged_forwards, self.adapter_forwards, self.loaded = None, 0, 0, []

    def adapt_(self, model, head_modules):
        self.head_modules = list(head_modules)
        parent, _, leaf = TARGET.rpartition(".")
        setattr(model.get_submodule(parent), leaf, ScaledConv(model.get_submodule(TARGET)))
        model.get_submodule(TARGET).register_forward_pre_hook(self._count)

    def _count(self, module, args):
        if module.merged:
            self.merged_forwards += 1
        else:
            self.adapter_forwards += 1

    @contextlib.contextmanager
    def merged(self, model):
        layer = model.get_submodule(TARGET)
        original = layer.conv.weight.detach().clone()
        with torch.no_grad():
            layer.conv.weight.mul_(layer.scale)
        layer.merged = True
        try:
            yield
        finally:
            layer.merged = False
            with torch.no_grad():
                layer.conv.weight.copy_(original)

    def plain_state_dict(self, model):
        state = dict(model.state_dict())
        layer = model.get_submodule(TARGET)
        state[f"{TARGET}.weight"] = (state.pop(f"{TARGET}.conv.weight") * layer.scale).detach()
        del state[f"{TARGET}.scale"]
        return state

    def load_plain_state_dict_(self, model, state):
        state = dict(state)
        self.loaded.append(sorted(state))
        state[f"{TARGET}.conv.weight"] = state.pop(f"{TARGET}.weight")
        state[f"{TARGET}.scale"] = torch.ones(())
        model.load_state_dict(state)


@pytest.fixture
def toy(monkeypatch):
    adapter = ToyAdapter()
    monkeypatch.setitem(adapters._ADAPTERS, "ft", lambda cfg: adapter)
    return adapter


def test_loop_trains_the_adapter_evaluates_merged_and_saves_plain_best_weights(cpu_cell_config, toy):
    cfg = cpu_cell_config("strategy.name=ft", "trainer.max_steps_per_epoch=2")
    result = train_cell(cfg)
    assert toy.head_modules == ["fc"]
    rows = [json.loads(line) for line in (cell_dir(cfg) / METRICS_FILE).read_text().splitlines()]
    plain = create_backbone("tiny_resnet", 3, "none")
    plain_count = sum(p.numel() for p in plain.parameters())
    assert all(r["strategy/trainable_params"] == plain_count + 1 for r in rows)  # the scale trains too
    # Training batches went through the adapter, every evaluation batch through merged weights.
    assert toy.adapter_forwards == 2 * 2 and toy.merged_forwards > 0
    best = torch.load(cell_dir(cfg) / BEST_CKPT, weights_only=True)
    plain.load_state_dict(best, strict=True)  # the plain backbone's keys, nothing more
    assert toy.loaded == [sorted(best)]  # the test weights came back through the adapter
    assert result["status"] == "done"


def test_strategies_without_an_adapter_get_one_that_changes_nothing():
    cfg = type("Cfg", (), {"name": "lp"})()
    adapter = adapters.model_adapter(cfg)
    model = create_backbone("tiny_resnet", 3, "none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter.adapt_(model, ["fc"])
    with adapter.merged(model):
        pass
    assert isinstance(adapter, adapters.NoAdapter) and adapter.plain_state_dict(model).keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
