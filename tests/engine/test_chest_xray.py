"""End to end on the real chest X-ray set in ../shared/datasets (skipped where it is absent)."""
import pytest

from engine.cli import main
from engine.config import load_cell_config
from engine.trainer import train_cell
from tests.engine.conftest import CHEST_XRAY

pytestmark = pytest.mark.skipif(not CHEST_XRAY.is_dir(), reason=f"real dataset not present at {CHEST_XRAY}")


def test_cli_data_check_reports_counts_and_cross_split_duplicates(capsys):
    code = main(["data", "check", str(CHEST_XRAY)])
    report = capsys.readouterr().out
    assert code == 1  # duplicates that leak across splits are a problem worth a non-zero exit
    assert "317" in report and "Viral Pneumonia" in report
    assert "duplicate" in report.lower()


def test_one_epoch_ft_cell_at_64px_completes_on_real_data(tmp_path):
    cfg = load_cell_config(None, [f"data.path={CHEST_XRAY}", "data.resize=72", "data.crop=64", "data.num_workers=2",
                                  "data.train_batch_size=32", "model.backbone=resnet50", "model.weights=none",
                                  "trainer.epochs=1", "trainer.device=cpu", f"trainer.out_dir={tmp_path}"])
    result = train_cell(cfg)
    assert result["classes"] == ["Covid", "Normal", "Viral Pneumonia"]
    # The set has train and val only: test is carved out of train (stratified), val kept as given.
    assert result["test"]["samples"] + 66 + result["train_images"] == 317
    assert result["skipped_images"] == 0
