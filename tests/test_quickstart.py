from gptlab.quickstart import quickstart

from tests.conftest import tiny_config  # noqa: F401  (same tiny shapes as the other tests)


def test_quickstart_trains_samples_and_writes_a_report(tmp_path, capsys):
    small = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
             "train.eval_every=5", "train.eval_batches=2", "train.checkpoint_every=5"]
    report = quickstart(tmp_path / "qs", small, max_steps=10)
    out = capsys.readouterr().out
    assert "1/3 preparing" in out and "3/3 sampling" in out and out.count("HAMLET.") >= 1
    text = report.read_text()
    assert "best val loss" in text and "![loss curve](loss_curve.png)" in text and text.count("### Sample") == 3
    png = (tmp_path / "qs" / "run" / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # run again: the finished run is resumed (nothing to do), not refused
    quickstart(tmp_path / "qs", small, max_steps=10)
