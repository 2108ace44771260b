import torch

from engine import cli


def test_demo_generates_data_runs_the_grid_and_prints_the_report(tmp_path, capsys):
    threads = torch.get_num_threads()
    overrides = ["backbones=[tiny_resnet]", "strategies=[ft,lp]", "seeds=[684]", "cell.trainer.epochs=2",
                 "cell.trainer.max_steps_per_epoch=2"]
    assert cli.main(["demo", "--out", str(tmp_path), *overrides]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "grid" / "report" / "report.md"
    assert out.strip().endswith(f"report: {report}")
    assert "2 cells; 2 done, 0 failed" in report.read_text()
    assert sorted(p.name for p in (tmp_path / "data" / "shapes").iterdir()) == ["checkers", "circles", "stripes"]
    assert torch.get_num_threads() == threads  # the demo's thread setting does not leak
