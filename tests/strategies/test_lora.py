"""LoRA through peft: adapters on the right layers, merged weights equal to the adapter model, and a
best.pt that loads into the plain backbone."""
import copy
import json

import pytest
import torch
from torch import nn

from engine.cell_files import BEST_CKPT, LAST_CKPT, METRICS_FILE, cell_dir
from engine.config import load_cell_config
from engine.models import HEAD, backbone_spec, block_modules, create_backbone
from engine.trainer import train_cell
from strategies.lora import LoraAdapter, LoraConfig, lora_targets
from tests.conftest import MODERN_TINY_BACKBONES, TINY_BACKBONES

pytest.importorskip("peft", reason="strategy lora needs peft (extra 'peft', in 'dev')")

# Merging adds B A to W before the product instead of adding two products: float32 rounding
# differs, by about 1e-7 relative on these small layers.
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _adapted(name, seed=0, lora_b_std=0.2, **fields):
    """A tiny backbone with adapters whose B is drawn from N(0, lora_b_std) (0: as initialised)."""
    torch.manual_seed(seed)  # the same backbone and A for the same seed
    model = create_backbone(name, 3, "none")
    adapter = LoraAdapter(LoraConfig(**fields))
    adapter.adapt_(model, block_modules(model, name)[HEAD])
    with torch.no_grad():  # B starts at zero; a trained B is what makes merging matter
        nn.init.normal_(model.get_submodule(backbone_spec(name).head_layer).weight)  # ViT's starts at zero
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, lora_b_std)
    return model.eval(), adapter


@pytest.mark.parametrize("name", TINY_BACKBONES + MODERN_TINY_BACKBONES)
def test_lora_merged_weights_give_the_adapter_model_logits(name):
    model, adapter = _adapted(name, rank=4)
    x = torch.randn(2, 3, 32, 32)
    adapter_logits = model(x)
    before = copy.deepcopy(model.state_dict())
    with adapter.merged(model):
        merged_logits = model(x)
    torch.testing.assert_close(merged_logits, adapter_logits, **TOL)
    without_adapters, _ = _adapted(name, rank=4, lora_b_std=0.0)
    assert not torch.allclose(adapter_logits, without_adapters(x), **TOL)  # the adapters count
    for key, value in model.state_dict().items():  # unmerged exactly: frozen weights stay frozen
        assert torch.equal(value, before[key]), key
    plain = create_backbone(name, 3, "none").eval()
    plain.load_state_dict(adapter.plain_state_dict(model), strict=True)
    torch.testing.assert_close(plain(x), adapter_logits, **TOL)


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_vit"])
def test_lora_plain_state_dict_equals_peft_merge_and_unload(name):
    from peft.tuners.tuners_utils import BaseTunerLayer
    model, adapter = _adapted(name, rank=2, alpha=8.0)
    reference = copy.deepcopy(model)
    for parent in list(reference.modules()):  # peft's own merge of each layer, then the base layer back
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    ours = adapter.plain_state_dict(model)
    assert ours.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_lora_targets_skip_the_head_grouped_convs_and_attention_projections():
    convnext = create_backbone("tiny_convnext", 3, "none")
    targets = lora_targets(convnext, ["classifier"], ("Conv2d", "Linear"))
    assert "features.1.0.block.3" in targets  # a pointwise linear
    assert "features.1.0.block.0" not in targets  # the depthwise conv (groups > 1)
    assert not any(t.startswith("classifier") for t in targets)
    vit = create_backbone("tiny_vit", 3, "none")
    vit_targets = lora_targets(vit, ["encoder.ln", "heads"], ("Linear",))
    assert vit_targets == [f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in (0, 1) for j in (0, 3)]
    swin = lora_targets(create_backbone("tiny_swin", 3, "none"), ["norm", "head"], ("Linear",))
    assert not any(t.endswith(("attn.qkv", "attn.proj")) for t in swin) and any("mlp" in t for t in swin)


@pytest.mark.parametrize("field, value", [("rank", 0), ("alpha", 0), ("dropout", 1.0), ("target_types", [])])
def test_lora_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"strategy.{field}"):
        load_cell_config(None, ["strategy.name=lora", f"strategy.{field}={value}"])


def test_lora_cell_trains_adapters_and_head_and_best_pt_loads_into_the_plain_backbone(cpu_cell_config):
    cfg = cpu_cell_config("strategy.name=lora", "strategy.rank=2", "trainer.epochs=1", "optim.lr=0.01",
                          backbone="tiny_convnext")
    torch.manual_seed(cfg.trainer.seed)  # the cell seeds torch before building its backbone
    initial = create_backbone("tiny_convnext", 3, "none").state_dict()
    result = train_cell(cfg)
    last = torch.load(cell_dir(cfg) / LAST_CKPT, weights_only=False)["model"]
    adapted = {k for k in last if ".lora_" in k}
    for key, value in last.items():  # the backbone's own weights never moved
        plain_key = key.replace(".base_layer", "")
        if ".lora_" not in key and not key.startswith("classifier"):
            assert torch.equal(value, initial[plain_key]), key
    assert adapted and any(last[k].abs().sum() > 0 for k in adapted if ".lora_B." in k)
    rows = [json.loads(line) for line in (cell_dir(cfg) / METRICS_FILE).read_text().splitlines()]
    head = sum(v.numel() for k, v in last.items() if k.startswith("classifier"))
    assert rows[0]["strategy/trainable_params"] == sum(last[k].numel() for k in adapted) + head
    plain = create_backbone("tiny_convnext", 3, "none").eval()
    plain.load_state_dict(torch.load(cell_dir(cfg) / BEST_CKPT, weights_only=True), strict=True)
    model, _ = _adapted("tiny_convnext", rank=2)
    model.load_state_dict(last)  # one epoch: the best weights are the last ones
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x), **TOL)
    assert result["best_epoch"] == 0
