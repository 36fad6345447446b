import re

from gptlab.quickstart import quickstart


def test_quickstart_trains_samples_and_writes_a_report(tmp_path, capsys):
    small = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
             "train.eval_every=5", "train.eval_batches=2", "train.checkpoint_every=5"]
    report = quickstart(tmp_path / "qs", small, max_steps=10)
    out = capsys.readouterr().out
    assert "1/3 preparing" in out and "3/3 sampling" in out and out.count("HAMLET.") >= 1
    assert re.search(r"wall time \d+ s \(prepare [\d.]+ s, train [\d.]+ s, sample [\d.]+ s\)", out)
    text = report.read_text()
    assert "best val loss" in text and "![loss curve](loss_curve.png)" in text and text.count("### Sample") == 3
    png = (tmp_path / "qs" / "run" / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # run again: the finished run is resumed (nothing to do), not refused
    quickstart(tmp_path / "qs", small, max_steps=10)


def test_quickstart_states_the_expected_band_up_front_and_its_verdict_at_the_end(tmp_path, capsys, monkeypatch):
    import dataclasses

    import gptlab.bands
    from gptlab.bands import build_band
    from gptlab.config import RunConfig, from_dict, load_yaml
    from gptlab.train.loop import train

    small = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
             "train.eval_every=5", "train.eval_batches=2", "train.checkpoint_every=5"]
    quickstart(tmp_path / "first", small, max_steps=10)
    assert "no reference band for 10 steps" in capsys.readouterr().out
    cfg = from_dict(RunConfig, load_yaml(tmp_path / "first" / "run" / "config.yaml"))
    seeds = []
    for seed in range(5):  # the band of the quickstart's config, from seeds of its own
        train(tmp_path / "first" / "data", tmp_path / f"seed{seed}",
              dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)))
        seeds.append(tmp_path / f"seed{seed}")
    band = build_band("qs", "the quickstart", seeds, "cmd", "cpu")
    monkeypatch.setattr(gptlab.bands, "packaged_bands", lambda: [band])
    quickstart(tmp_path / "second", small, max_steps=10)
    out = capsys.readouterr().out
    assert f"expected val loss at step 10: {band.mean[-1]:.3f}" in out
    assert "against the reference band: " in out and "band 'qs'" in out
    assert "band 'qs'" in (tmp_path / "second" / "run" / "report.md").read_text()
