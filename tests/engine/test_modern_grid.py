"""configs/modern.yaml: the study's strategies plus BitFit and LoRA over the modern backbones."""
from configs import preset_path
from engine.grid.config import cell_keys, expand_cells, load_grid_config


def test_modern_grid_is_ten_strategies_over_three_backbones_and_the_six_slots(tmp_path):
    paper = load_grid_config(preset_path("paper.yaml"), [f"data_root={tmp_path}"])
    grid = load_grid_config(preset_path("modern.yaml"), [f"data_root={tmp_path}"])
    assert grid.backbones == ["resnet50", "convnext_tiny", "vit_b_16"]
    assert grid.strategies == [*paper.strategies, "bitfit", "lora"]
    assert [d.name for d in grid.datasets] == [d.name for d in paper.datasets] and grid.seeds == paper.seeds
    for entry in grid.datasets:
        (tmp_path / entry.path).mkdir()
    cells = expand_cells(grid)
    assert len(cells) == len(cell_keys(grid)) == 6 * 3 * 10 * 3
    assert {c.strategy.name for c in cells} >= {"bitfit", "lora"} and cells[0].data.crop == 224
