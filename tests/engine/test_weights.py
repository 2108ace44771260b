"""Weights files from other training code: wrapper prefixes, what loaded, and clear errors."""
import logging

import pytest
import torch

from engine import models
from engine.config import load_cell_config
from engine.models import create_backbone
from engine.weights import detect_prefix


@pytest.fixture(scope="module", autouse=True)
def tiny_resnet_1000():
    # A tiny backbone whose pretrained head has 1000 classes, as torchvision's do.
    models.register_backbone("tiny_resnet_1000", models.BackboneSpec(
        lambda num_classes: models._tiny_resnet(num_classes), "fc", models._resnet_blocks, models._resnet_split))


def _save(tmp_path, state, wrap=None):
    path = tmp_path / "w.pth"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return str(path)


def _backbone_tensors(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("prefix", ["module.", "model.", "backbone.", "encoder.", "module.backbone."])
def test_prefixed_checkpoint_loads_every_backbone_tensor(tmp_path, caplog, prefix):
    source = create_backbone("tiny_resnet", 4, "none")
    path = _save(tmp_path, {prefix + k: v for k, v in source.state_dict().items()}, wrap="state_dict")
    with caplog.at_level(logging.INFO, logger="engine.weights"):
        model = create_backbone("tiny_resnet_1000", 3, path)
    for key, value in _backbone_tensors(source).items():
        assert torch.equal(model.state_dict()[key], value), key
    assert f"stripped prefix '{prefix}'" in caplog.text and "missing 0" in caplog.text


def test_checkpoint_with_other_parts_reports_what_did_not_load(tmp_path, caplog):
    source = create_backbone("tiny_resnet", 4, "none")
    state = {"module." + k: v for k, v in source.state_dict().items() if k != "layer1.0.conv1.weight"}
    state["projector.0.weight"] = torch.zeros(2, 2)  # a self-supervised projection head, not the backbone's
    state["module.layer2.0.conv1.weight"] = torch.zeros(1)  # another shape
    model = create_backbone("tiny_resnet_1000", 3, _save(tmp_path, state))
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert "missing 1 ['layer1.0.conv1.weight']" in caplog.text
    assert "unexpected 1 ['projector.0.weight']" in caplog.text
    assert "shape mismatches 1 ['layer2.0.conv1.weight']" in caplog.text


def test_explicit_weights_prefix_is_used_and_must_be_on_some_key(tmp_path):
    source = create_backbone("tiny_resnet", 4, "none")
    path = _save(tmp_path, {"net.trunk." + k: v for k, v in source.state_dict().items()})
    model = create_backbone("tiny_resnet_1000", 3, path, weights_prefix="net.trunk.")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="no key of .* starts with 'module.'"):
        create_backbone("tiny_resnet_1000", 3, path, weights_prefix="module.")
    with pytest.raises(ValueError, match="model.weights_prefix"):  # not found by itself: says what to set
        create_backbone("tiny_resnet_1000", 3, path)


def test_checkpoint_with_no_matching_key_is_a_clear_error(tmp_path):
    path = _save(tmp_path, {"module.encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"no key of .* matches the backbone .*'module.encoder.weight'"):
        create_backbone("tiny_resnet", 3, path)


def test_detect_prefix_keeps_a_backbone_module_named_encoder():
    own = {"encoder.layers.0.weight", "encoder.ln.weight", "heads.head.weight"}
    state = {k: torch.zeros(1) for k in own}
    assert detect_prefix(state, own) == ""  # stripping 'encoder.' would match fewer keys
    assert detect_prefix({"module." + k: v for k, v in state.items()}, own) == "module."


def test_weights_prefix_without_a_weights_file_is_an_error():
    with pytest.raises(ValueError, match="model.weights_prefix applies to a weights file"):
        load_cell_config(None, ["model.weights=imagenet", "model.weights_prefix=module."])
