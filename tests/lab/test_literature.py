"""The literature beside each lesson: the data loads, every claim names arms the lesson runs, and the agree /
disagree verdict follows the measured comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gptlab.document import to_markdown
from gptlab.errors import ConfigError
from gptlab.lab import literature, stats
from gptlab.lab.lessons import get_lesson, lessons


@pytest.mark.parametrize("name", sorted(lessons()))
def test_every_claim_names_a_condition_and_arms_of_the_lessons_full_profile(name):
    citations = literature.load(name)
    assert len(citations) >= 2
    grid = get_lesson(name).profiles()["full"]
    conditions, variants = {c.name for c in grid.conditions}, {v.name for v in grid.variants}
    for cit in citations:
        assert cit.arxiv and cit.year and cit.where and cit.published and cit.setup
        cl = cit.claim
        names = [cl.condition] if isinstance(cl.condition, str) else cl.condition
        assert names[0] in conditions, (cit.key, names)
        assert cl.a in variants and (cl.b is None or cl.b in variants), cit.key
    assert len({c.key for c in citations}) == len(citations)


def test_lessons_without_literature_have_an_empty_list_and_a_malformed_entry_is_one_clear_error():
    assert literature.load("no-such-lesson") == []
    with pytest.raises(ConfigError, match="entry 'x' is malformed"):
        literature._citation({"key": "x", "claim": {"condition": "c", "a": "a", "b": "b", "metric": "m",
                                                    "expect": "sideways"}}, "f.yaml")


def comparison(diff: float, sd: float = 0.01, n: int = 8, margin: float = 0.01) -> stats.Comparison:
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 0.05, n)
    noise = rng.normal(0, sd, n)
    b = a + diff + noise - noise.mean()
    return stats.adjust([stats.compare(a, b, "a", "b", paired=True, margin=margin)])[0]


@pytest.mark.parametrize("diff,expect,verdict", [
    (-0.1, "lower", "agrees"), (0.1, "lower", "disagrees"), (0.1, "higher", "agrees"), (0.0005, "lower", "not shown here"),
    (0.0, "same", "agrees"), (0.1, "same", "disagrees"),
    (-0.1, "not-higher", "agrees"), (0.0, "not-higher", "agrees"), (0.1, "not-higher", "disagrees")])
def test_the_verdict_follows_the_direction_and_equivalence(diff, expect, verdict):
    assert literature.verdict_of(comparison(diff), expect) == verdict


def test_a_same_claim_with_too_few_seeds_for_equivalence_is_not_shown():
    c = comparison(0.0, sd=0.05, n=3)  # no difference, but too noisy to show equivalence within ±0.01
    assert not c.significant() and not c.equivalent()
    assert literature.verdict_of(c, "same") == "not shown here"


@dataclass
class Cell:
    seed: int
    summary: dict


class FakeResults:
    """Just what the literature needs from a lesson's results: conditions and each arm's cells."""

    def __init__(self, arms: dict[tuple[str, str], list[float]]):
        self.arms = {k: [Cell(s, {"loss_4x": v, "loss_1x": v, "loss_2x": v}) for s, v in enumerate(vals)]
                     for k, vals in arms.items()}
        self.conditions = sorted({c for c, _ in arms})

    def arm(self, condition, variant):
        return self.arms.get((condition, variant), [])


def test_the_section_renders_measured_rows_and_says_when_arms_did_not_run():
    rng = np.random.default_rng(1)
    base = 2.0 + rng.normal(0, 0.01, 5)
    results = FakeResults({("ctx16", "rope"): list(base), ("ctx16", "alibi"): list(base - 0.3)})
    md = to_markdown(literature.literature_blocks("positions", results, 0.01))
    assert "## What the literature reports" in md and "arXiv:2108.12409" in md
    row = next(line for line in md.splitlines() if "ctx16: rope → alibi (loss_4x" in line)
    assert "-0.3000" in row and row.rstrip(" |").endswith("agrees")
    assert "not comparable in this run (the arms did not run)" in md  # e.g. the fine-tuned extension arms


def test_two_papers_read_on_the_same_arms_share_one_test():
    rng = np.random.default_rng(2)
    base = 2.0 + rng.normal(0, 0.01, 5)
    results = FakeResults({("ctx64", "rope"): list(base), ("ctx64", "alibi"): list(base - 0.3),
                           ("ctx64", "sinusoidal"): list(base + 0.01 * rng.normal(size=5))})
    cite = dict(authors="x", year=2020, title="t", arxiv="1", where="w", setup="s", published="p")
    claim = dict(condition="ctx64", a="rope", metric="loss_4x")
    citations = [literature._citation({**cite, "key": "k1", "claim": {**claim, "b": "alibi", "expect": "lower"}}, "f"),
                 literature._citation({**cite, "key": "k2", "claim": {**claim, "b": "alibi", "expect": "higher"}}, "f"),
                 literature._citation({**cite, "key": "k3", "claim": {**claim, "b": "sinusoidal", "expect": "same"}}, "f")]
    measured = literature.measure(citations, results, 0.01)
    assert measured["k1"] is measured["k2"]  # one test, read both ways
    single = stats.compare_by_seed(dict(enumerate(base)), dict(enumerate(base - 0.3)), "rope", "alibi", 0.01)
    assert measured["k1"].p_adjusted == pytest.approx(min(1.0, 2 * single.p))  # a family of 2 distinct tests, not 3
    assert literature.verdict_of(measured["k1"], "lower") == "agrees"
    assert literature.verdict_of(measured["k2"], "higher") == "disagrees"
