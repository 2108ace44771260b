import torch
import yaml

from engine import cli
from engine.cell_files import CONFIG_FILE
from engine.demo_source import source_weights

TINY = ["backbones=[tiny_resnet]", "strategies=[ft,lp]", "seeds=[684]", "cell.trainer.epochs=2",
        "cell.trainer.max_steps_per_epoch=2"]


def test_demo_pretrains_on_the_source_runs_the_grid_from_it_and_prints_the_report(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert cli.main(["demo", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "grid" / "report" / "report.md"
    assert out.strip().endswith(f"report: {report}")
    text = report.read_text()
    assert "2 cells; 2 done, 0 failed" in text
    assert "pretrained on a generated source task" in text and "squares" in text  # what the source task was
    assert sorted(p.name for p in (tmp_path / "data" / "shapes").iterdir()) == ["checkers", "circles", "stripes"]
    weights = source_weights(tmp_path / "source", "tiny_resnet")
    assert weights.is_file() and not source_weights(tmp_path / "source", "tiny_densenet").exists()
    for cell in (tmp_path / "grid").glob("shapes__*"):
        assert yaml.safe_load((cell / CONFIG_FILE).read_text())["model"]["weights"] == str(weights)
    assert torch.get_num_threads() == threads  # the demo's thread setting does not leak


def test_demo_from_random_weights_skips_the_pretraining(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), *TINY, "strategies=[lp]", "cell.model.weights=none"]) == 0
    assert not (tmp_path / "source").exists()
    assert "source task" not in (tmp_path / "grid" / "report" / "report.md").read_text()
