import pytest

from strategies import create_strategy
from strategies.layerwise import LlrdConfig, SurgicalConfig, llrd_scales
from strategies.protocol import Progress
from tests.helpers import tiny_layout


@pytest.mark.parametrize("block, expected", [("first", "stem"), ("last", "layer4"), ("layer2", "layer2")])
def test_surgical_trains_one_named_block_and_the_head(block, expected):
    _, layout = tiny_layout()
    plan = create_strategy(SurgicalConfig(block=block), layout, {}, 3).plan(Progress(0, 3))
    assert plan.trainable == {expected, "head"} and plan.backbone_eval


def test_surgical_unknown_block_is_an_error_listing_the_blocks():
    _, layout = tiny_layout("tiny_vgg")
    with pytest.raises(ValueError, match="strategy.block: 'layer1'.*block1"):
        create_strategy(SurgicalConfig(block="layer1"), layout, {}, 3)


def test_llrd_scales_decay_from_the_head():
    assert llrd_scales(["a", "b", "c"], 0.5) == {"a": 0.25, "b": 0.5, "c": 1.0}
    _, layout = tiny_layout()
    plan = create_strategy(LlrdConfig(decay=0.8), layout, {}, 3).plan(Progress(0, 3))
    assert plan.lr_scales["head"] == 1.0 and plan.lr_scales["stem"] == pytest.approx(0.8 ** 5)
    with pytest.raises(ValueError, match="strategy.decay"):
        create_strategy(LlrdConfig(decay=0.0), layout, {}, 3)
