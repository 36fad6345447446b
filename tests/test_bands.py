"""Reference loss bands: the band's statistics, where a curve falls in it, which runs may make one, and the
report that draws a run over its band."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gptlab.bands import (MIN_SEEDS, Band, build_band, curve_identity, find_band, fingerprint, judge, load_band,
                          packaged_bands, run_identity, save_band)
from gptlab.cli import main
from gptlab.config import RunConfig, apply_overrides, save_yaml
from gptlab.errors import ConfigError

STEPS = (50, 100, 150, 200)


def band(mean=(3.0, 2.6, 2.4, 2.3), half=0.05) -> Band:
    return Band("b", "a test band", "cmd", "cpu", "f", tuple(range(5)), STEPS, tuple(mean),
                tuple(m - half for m in mean), tuple(m + half for m in mean))


def fake_run(path, seed: int, losses, overrides=()) -> None:
    """A run directory as `gptlab train` leaves it, without training: config, data identity, metrics."""
    path.mkdir(parents=True)
    save_yaml(apply_overrides(RunConfig(), [f"train.seed={seed}", f"train.max_steps={STEPS[-1]}", *overrides]),
              path / "config.yaml")
    (path / "run.json").write_text(json.dumps({"tokenizer": "char", "tokens_sha256": {"train": "a", "val": "b"}}))
    records = [{"step": s, "loss": v + 0.1, "tokens_per_s": 1000.0} for s, v in zip(STEPS, losses)]
    records += [{"step": s, "val_loss": v} for s, v in zip(STEPS, losses)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_curve_at_the_mean_is_inside_and_one_that_stays_below_is_better_from_where_it_left():
    b = band()
    assert judge(b, list(zip(STEPS, b.mean))).kind == "inside"
    below = [(s, m - (0.2 if s >= 150 else 0.0)) for s, m in zip(STEPS, b.mean)]
    v = judge(b, below)
    assert (v.kind, v.since) == ("better", 150) and "from step 150" in v.text
    above = [(s, m + 0.2) for s, m in zip(STEPS, b.mean)]
    assert (judge(b, above).kind, judge(b, above).since) == ("worse", 50)


def test_a_run_that_strays_and_comes_back_ends_inside_and_the_stray_is_named():
    b = band()
    curve = [(s, m + (0.2 if s == 100 else 0.0)) for s, m in zip(STEPS, b.mean)]
    v = judge(b, curve)
    assert v.kind == "inside" and "outside at step 100 (above)" in v.text


def test_evaluations_outside_the_bands_steps_are_not_judged():
    b = band()
    assert judge(b, [(10, 9.0), (20, 9.0)]).kind == "unjudged"
    v = judge(b, [(s, m) for s, m in zip(STEPS, b.mean)] + [(400, 9.0)])
    assert v.kind == "inside" and "band ends at step 200" in v.text
    assert b.at(75) == pytest.approx((2.8, 2.75, 2.85))  # linear between evaluations


@given(st.lists(st.tuples(st.sampled_from(STEPS), st.floats(0.0, 6.0)), min_size=1, max_size=12, unique_by=lambda p: p[0]))
@settings(max_examples=200, deadline=None)
def test_better_and_worse_always_mean_outside_the_band_from_that_step_to_the_last(points):
    b = band()
    curve = sorted(points)
    v = judge(b, curve)
    if v.kind in ("better", "worse"):
        tail = [(s, loss) for s, loss in curve if s >= v.since]
        assert all((loss < b.at(s)[1]) if v.kind == "better" else (loss > b.at(s)[2]) for s, loss in tail)
    else:
        s, loss = curve[-1]
        assert b.at(s)[1] <= loss <= b.at(s)[2]


def test_the_band_is_the_t_prediction_interval_over_seeds_and_covers_a_new_seed_95_percent_of_the_time(tmp_path):
    rng = np.random.default_rng(0)
    losses = rng.normal(2.0, 0.05, size=(6, len(STEPS)))
    runs = []
    for seed, row in enumerate(losses):
        fake_run(tmp_path / f"seed{seed}", seed, row)
        runs.append(tmp_path / f"seed{seed}")
    b = build_band("x", "x", runs, "cmd", "cpu")
    half = stats.t.ppf(0.975, 5) * losses.std(axis=0, ddof=1) * math.sqrt(1 + 1 / 6)
    assert np.allclose(b.mean, losses.mean(axis=0)) and np.allclose(np.array(b.hi) - b.mean, half)
    assert b.seeds == tuple(range(6)) and b.steps == STEPS
    # the interval's promise, by simulation: a new seed falls inside 95 % of the time (not ~88 %, as ±1.96·sd would)
    n, trials = 5, 20_000
    draws = rng.normal(size=(trials, n + 1))
    past, new = draws[:, :n], draws[:, n]
    half = stats.t.ppf(0.975, n - 1) * past.std(axis=1, ddof=1) * math.sqrt(1 + 1 / n)
    assert abs(np.mean(np.abs(new - past.mean(axis=1)) <= half) - 0.95) < 0.006


def test_a_band_needs_five_distinct_seeds_of_one_config(tmp_path):
    for seed in range(MIN_SEEDS):
        fake_run(tmp_path / f"s{seed}", seed, [2.0] * 4)
    runs = [tmp_path / f"s{seed}" for seed in range(MIN_SEEDS)]
    with pytest.raises(ConfigError, match="at least 5"):
        build_band("x", "x", runs[:4], "cmd", "cpu")
    fake_run(tmp_path / "other", 9, [2.0] * 4, ["train.lr=0.01"])
    with pytest.raises(ConfigError, match="train.lr"):
        build_band("x", "x", runs[:4] + [tmp_path / "other"], "cmd", "cpu")
    fake_run(tmp_path / "again", 0, [2.0] * 4)
    with pytest.raises(ConfigError, match="repeat a seed"):
        build_band("x", "x", runs[:4] + [tmp_path / "again"], "cmd", "cpu")


def test_a_band_is_made_of_finished_runs_only(tmp_path):
    """A run still training has evaluated only its first steps: a band with it would end there, silently."""
    for seed in range(MIN_SEEDS):
        fake_run(tmp_path / f"s{seed}", seed, [2.0] * 4)
    fake_run(tmp_path / "training", 7, [2.0] * 2)
    runs = [tmp_path / f"s{seed}" for seed in range(1, MIN_SEEDS)] + [tmp_path / "training"]
    with pytest.raises(ConfigError, match="training has not finished: its last evaluation is at step 100 of 200"):
        build_band("x", "x", runs, "cmd", "cpu")
    assert build_band("x", "x", [tmp_path / f"s{seed}" for seed in range(MIN_SEEDS)], "cmd", "cpu").steps == STEPS


def test_the_fingerprint_ignores_the_seed_threads_and_logging_and_nothing_that_changes_the_curve():
    base = RunConfig()
    same = apply_overrides(base, ["train.seed=7", "train.threads=1", "train.eval_every=13", "train.log_every=3"])
    ident = curve_identity(base, "char", {"val": "x"})
    assert fingerprint(curve_identity(same, "char", {"val": "x"})) == fingerprint(ident)
    for change in ("train.lr=0.01", "train.max_steps=7", "model.n_layer=2", "train.eval_batches=3"):
        assert fingerprint(curve_identity(apply_overrides(base, [change]), "char", {"val": "x"})) != fingerprint(ident)
    assert fingerprint(curve_identity(base, "char", {"val": "other data"})) != fingerprint(ident)


def test_every_shipped_band_loads_has_five_seeds_and_names_the_command_that_made_it():
    bands = packaged_bands()
    assert {"stability-baseline", "tying-baseline", "positions-baseline"} <= {b.name for b in bands}
    for b in bands:
        assert len(b.seeds) >= MIN_SEEDS and "gptlab bands make" in b.command and b.machine
        assert all(lo <= m <= hi for lo, m, hi in zip(b.lo, b.mean, b.hi))
        assert fingerprint(b.identity) == b.fingerprint


def test_report_draws_the_run_over_its_band_and_says_where_it_falls(tmp_path, capsys):
    for seed in range(5):
        fake_run(tmp_path / f"seed{seed}", seed, [3.0 + 0.01 * seed, 2.6, 2.4, 2.3 + 0.01 * seed])
    assert main(["bands", "make", "mine", *(str(tmp_path / f"seed{s}") for s in range(5)), "--title", "mine",
                 "--out", str(tmp_path / "bands")]) == 0
    fake_run(tmp_path / "user", 42, [3.0, 2.6, 2.2, 2.0])
    assert main(["report", "--run", str(tmp_path / "user"), "--band", str(tmp_path / "bands" / "mine.json")]) == 0
    out = capsys.readouterr().out
    assert "better than the reference band from step 150 on" in out
    text = (tmp_path / "user" / "report.md").read_text()
    assert "better than the reference band" in text and "best 2.0000 at step 200" in text
    assert (tmp_path / "user" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # a config with no band is told so, and still gets its report
    fake_run(tmp_path / "lonely", 1, [3.0] * 4, ["model.n_layer=2"])
    assert main(["report", "--run", str(tmp_path / "lonely")]) == 0
    assert "no reference band for this config" in capsys.readouterr().out
    assert find_band(run_identity(tmp_path / "lonely")) is None
    # a band chosen by hand judges any run, and the verdict says which setting differs
    assert main(["report", "--run", str(tmp_path / "lonely"), "--band", str(tmp_path / "bands" / "mine.json")]) == 0
    assert "config is not the band's: model.n_layer is 2, the band's 12" in capsys.readouterr().out


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2
    assert "is not a gptlab run" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable loss band"):
        load_band(tmp_path / "broken.json")
    b = band()
    save_band(b, tmp_path / "ok.json")
    assert load_band(tmp_path / "ok.json") == b
