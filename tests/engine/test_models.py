import pytest
import torch

from engine.models import (HEAD, backbone_spec, block_modules, create_backbone, features_and_head, model_blocks,
                           model_layout)

SPEC_BLOCKS = {
    "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "densenet121": ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
                    "transition3", "denseblock4", "head"],
    "vgg19": ["block1", "block2", "block3", "block4", "block5", "head"],
}
TINY = {"resnet50": "tiny_resnet", "densenet121": "tiny_densenet", "vgg19": "tiny_vgg"}


@pytest.fixture(scope="module")
def full_models():
    return {name: create_backbone(name, 5, "none") for name in SPEC_BLOCKS}


@pytest.mark.parametrize("name", list(SPEC_BLOCKS))
def test_blocks_follow_the_spec_and_cover_every_parameter_once(full_models, name):
    model = full_models[name]
    blocks = model_blocks(model, name)
    assert list(blocks) == SPEC_BLOCKS[name]
    placed = [p for ps in blocks.values() for p in ps]
    assert len(placed) == len(set(placed)) == len(list(model.parameters()))
    assert list(model_blocks(create_backbone(TINY[name], 5, "none"), TINY[name])) == SPEC_BLOCKS[name]


@pytest.mark.parametrize("name, head_params", [
    ("resnet50", {"fc.weight", "fc.bias"}),
    ("densenet121", {"features.norm5.weight", "features.norm5.bias", "classifier.weight", "classifier.bias"}),
    ("vgg19", {f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")}),
])
def test_head_block_is_the_spec_head_with_the_target_class_count(full_models, name, head_params):
    model = full_models[name]
    assert set(model_blocks(model, name)[HEAD]) == head_params
    head_layer = model.get_submodule(backbone_spec(name).head_layer)
    assert head_layer.out_features == 5


@pytest.mark.parametrize("name", ["densenet121", "vgg19"])
def test_head_scope_last_layer_keeps_only_the_replaced_layer(full_models, name):
    model = full_models[name]
    blocks = model_blocks(model, name, "last_layer")
    layer = backbone_spec(name).head_layer
    assert blocks[HEAD] == [f"{layer}.weight", f"{layer}.bias"]
    assert list(blocks)[-2] == "pre_head"
    assert sorted(p for ps in blocks.values() for p in ps) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name", list(TINY.values()))
@pytest.mark.parametrize("head_scope", ["block", "last_layer"])
def test_features_then_head_equals_the_model(name, head_scope):
    model = create_backbone(name, 3, "none").eval()
    features, head = features_and_head(model, name, head_scope)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(head(features(x)), model(x))  # same ops in the same order
    params = dict(model.named_parameters())
    head_ids = {id(p) for p in head.parameters()}
    assert all(id(params[n]) in head_ids for n in model_blocks(model, name, head_scope)[HEAD])


def test_layout_finds_batchnorm_by_type_including_downsample():
    model = create_backbone("tiny_resnet", 3, "none")
    layout = model_layout(model, model_blocks(model, "tiny_resnet"), "fc")
    assert "layer1.0.downsample.1.weight" in layout.norm_params  # no "bn" in its name
    assert "layer1.0.conv1.weight" not in layout.norm_params
    assert layout.modules["fc"] == ("fc.weight", "fc.bias") and layout.new_params == {"fc.weight", "fc.bias"}
    assert set(layout.bias_params) == {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert list(block_modules(model, "tiny_resnet"))[-1] == HEAD


def test_weights_from_a_local_file_load_and_report_mismatches(tmp_path, caplog):
    source = create_backbone("tiny_resnet", 4, "none")
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    from engine import models
    models.register_backbone("tiny_resnet_1000", models.BackboneSpec(
        lambda num_classes: models._tiny_resnet(num_classes), "fc", models._resnet_blocks, models._resnet_split))
    model = create_backbone("tiny_resnet_1000", 3, str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 3
    assert "unexpected" in caplog.text and "extra.weight" in caplog.text


def test_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        create_backbone("tiny_resnet", 3, str(tmp_path / "nothere.pth"))
    junk = tmp_path / "junk.pth"
    torch.save({"a.b": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match="no key"):
        create_backbone("tiny_resnet", 3, str(junk))
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        create_backbone("resnet51", 3, "none")
    with pytest.raises(ValueError, match="at least 2"):
        create_backbone("tiny_resnet", 1, "none")


def test_imagenet_weights_offline_error_says_how_to_pass_a_file(monkeypatch):
    spec = backbone_spec("resnet50")

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(type(spec.weights), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="model.weights=/path/to/file.pth"):
        create_backbone("resnet50", 3, "imagenet")
