"""`gptlab ab` and its sequential test: the false-positive rate stays at alpha despite looking after every seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from gptlab.cli import main
from gptlab.lab.sequential import boundary, look, run_sequence

SIMULATIONS = 2000


def rates(true_difference: float, sd: float = 0.02, margin: float = 0.01, n_min: int = 3, n_max: int = 10,
          seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ends = [run_sequence(lambda k: rng.normal(true_difference, sd), n_min, n_max, margin)[-1].status
            for _ in range(SIMULATIONS)]
    return {s: ends.count(s) / SIMULATIONS for s in ("different", "equivalent", "inconclusive")}


def test_looking_after_every_seed_keeps_the_false_positive_rate_at_alpha():
    slack = 3 * np.sqrt(0.05 * 0.95 / SIMULATIONS)  # three standard errors of a simulated rate
    assert rates(0.0)["different"] <= 0.05 + slack
    assert rates(0.0, n_min=5, n_max=15, seed=1)["different"] <= 0.05 + slack
    # the same looks with the fixed-sample t test at each one would cross far more often: the boundary is needed
    rng = np.random.default_rng(2)
    naive = np.mean([any(sps.ttest_1samp(d[:n], 0).pvalue < 0.05 for n in range(3, 11))
                     for d in rng.normal(0, 0.02, (SIMULATIONS, 10))])
    assert naive > 0.1


def test_a_real_difference_is_found_and_equivalence_is_rarely_claimed_at_the_margin():
    assert rates(0.05)["different"] > 0.95
    assert rates(0.01)["equivalent"] <= 0.05  # true difference = margin: "equivalent" would be wrong
    assert rates(0.0, sd=0.002)["equivalent"] > 0.9  # tight seeds, no difference: equivalence is shown


def test_the_boundary_is_the_fixed_sample_t_quantile_with_one_look():
    assert boundary(6, 6) == pytest.approx(sps.t.ppf(0.975, 5), rel=0.02)
    assert boundary(3, 10) > boundary(10, 10)  # more looks, a stricter bar
    lk = look([0.1, 0.12, 0.11], boundary(3, 3), 0.01)
    assert lk.status == "different" and lk.low > 0


TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=4",
        "train.max_steps=12", "train.eval_every=12", "train.eval_batches=2", "train.threads=1",
        "train.checkpoint_every=12"]


def ab(char_data, out, *change, seeds=("3", "4")):
    return main(["ab", "--data", str(char_data), "--out", str(out), *[a for t in TINY for a in ("--set", t)],
                 *change, "--min-seeds", seeds[0], "--max-seeds", seeds[1]])


@pytest.mark.slow
def test_ab_detects_a_real_change_and_calls_a_null_change_equivalent(char_data, tmp_path, capsys):
    assert ab(char_data, tmp_path / "lr", "--b", "train.lr=3e-2") == 0
    state = json.loads((tmp_path / "lr" / "ab.json").read_text())
    assert state["looks"][-1]["status"] == "different" and state["looks"][-1]["mean"] < 0
    assert "## Sequential verdict" in (tmp_path / "lr" / "report.md").read_text()
    # a change that changes nothing the model sees: identical runs, equivalence at the first look
    assert ab(char_data, tmp_path / "null", "--b", "train.log_every=3") == 0
    state = json.loads((tmp_path / "null" / "ab.json").read_text())
    assert [lk["status"] for lk in state["looks"]] == ["equivalent"] and state["looks"][0]["n"] == 3
    # rerunning continues from the finished cells: nothing is trained again, the same verdict
    capsys.readouterr()
    assert ab(char_data, tmp_path / "null", "--b", "train.log_every=3") == 0
    assert "Equivalent within ±0.01" in capsys.readouterr().out


def test_ab_refuses_bad_input_in_one_line(char_data, tmp_path, capsys):
    assert ab(char_data, tmp_path / "x", "--b", "train.no_such_key=1") == 2
    assert ab(char_data, tmp_path / "x", "--b", "train.lr=1e-3", "--a", "train.lr=1e-3") == 2
    assert ab(char_data, tmp_path / "x", "--b", "train.lr=1e-2", seeds=("5", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no_such_key" in err[0] and "same settings" in err[1] and "--min-seeds" in err[2]


def test_ab_on_ray_opens_one_ray_session_and_runs_every_look_on_it(char_data, tmp_path, monkeypatch):
    """--executor/--address/--shared-fs reach every look's runner, inside one Ray session (the runner's Ray path
    itself is tested end to end in test_ray_executor). The looks here run locally, so the numbers are the local
    executor's."""
    import contextlib

    import gptlab.lab.ab as ab_module
    import gptlab.lab.ray_executor as ray_executor

    calls, sessions = [], []
    real = ab_module.run_lesson

    def spy(*args, **kwargs):
        calls.append((kwargs["executor"], kwargs["address"], kwargs["shared_fs"]))
        return real(*args, **{**kwargs, "executor": "local"})

    @contextlib.contextmanager
    def session(address):
        sessions.append(address)
        yield

    monkeypatch.setattr(ab_module, "run_lesson", spy)
    monkeypatch.setattr(ray_executor, "ray_session", session)
    assert ab(char_data, tmp_path / "ray", "--b", "train.lr=3e-2", "--executor", "ray", "--address", "10.0.0.1:6379",
              "--shared-fs", seeds=("2", "3")) == 0
    assert sessions == ["10.0.0.1:6379"] and calls and set(calls) == {("ray", "10.0.0.1:6379", True)}
