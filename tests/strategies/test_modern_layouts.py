"""What the study's strategies do on LayerNorm networks and a ViT (decisions documented in README)."""
import pytest
from torch import nn

from engine.optim import trainable_param_names
from strategies import create_strategy
from strategies.auto_rgn import AutoRgnConfig
from strategies.linear_probe import LpConfig
from strategies.protocol import Progress
from tests.helpers import tiny_layout


@pytest.mark.parametrize("backbone", ["tiny_convnext", "tiny_vit", "tiny_swin"])
def test_auto_rgn_excludes_every_layernorm_on_a_layernorm_network(backbone):
    model, layout = tiny_layout(backbone)
    layer_norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                   for p, _ in mod.named_parameters(recurse=False)}
    plan = create_strategy(AutoRgnConfig(), layout, dict(model.named_parameters()), 2).plan(Progress(0, 2))
    trained = set(trainable_param_names(plan, layout))
    assert trained == {n for n, _ in model.named_parameters()} - layer_norms
    included = create_strategy(AutoRgnConfig(exclude_bn=False), layout, dict(model.named_parameters()), 2)
    assert layer_norms <= set(trainable_param_names(included.plan(Progress(0, 2)), layout))


def test_lp_on_a_vit_trains_the_final_norm_and_the_classifier():
    model, layout = tiny_layout("tiny_vit")
    plan = create_strategy(LpConfig(), layout, dict(model.named_parameters()), 2).plan(Progress(0, 2))
    assert set(trainable_param_names(plan, layout)) == {"encoder.ln.weight", "encoder.ln.bias",
                                                         "heads.head.weight", "heads.head.bias"}
