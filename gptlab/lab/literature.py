"""What the literature reports, beside each lesson's verdicts: the citations are data (LESSON_literature.yaml next
to the lesson), and the agree / disagree line is computed from the lesson's own runs, never written by hand.

Each entry names a paper (authors, year, arXiv id, the table or figure), its setup, what it reports, and the
comparison in this lesson that answers the same question: arms `a` and `b` under `condition`, compared on `metric`
(paired by seed id), and the direction the paper found for b against a (`lower`, `higher` or `same`). Entries with
no comparable arm say why (`not_comparable`). The comparisons of one report form one Holm family; the verdict is

- agrees: significant in the paper's direction (or, for `same`, equivalent within the lesson's margin by TOST);
- disagrees: significant in the other direction (or, for `same`, a significant difference either way);
- not shown here: neither, with the minimum detectable effect so "too few seeds" is visible.

Agreement is about the direction of an effect: sizes differ with model, data and budget, and the table shows both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from gptlab.document import Block, fmt, fmt_p
from gptlab.errors import ConfigError
from gptlab.lab import stats

DIRECTIONS = ("lower", "higher", "same", "not-higher")


@dataclass(frozen=True)
class Claim:
    condition: str | list  # or candidates, the first the run has (full, quick and scale profiles name theirs apart;
    # a scale profile is read at its largest size and budget)
    a: str
    b: str | None  # None: a's metric against zero (e.g. a loss increase)
    metric: str
    expect: str  # b against a (or a against 0): "lower" | "higher" | "same" | "not-higher" (at least as low)

    def where(self, results) -> str:
        names = [self.condition] if isinstance(self.condition, str) else list(self.condition)
        return next((c for c in names if c in results.conditions), names[0])

    def describe(self, results) -> str:
        return f"{self.where(results)}: " + (f"{self.a} → {self.b}" if self.b else f"{self.a} against 0")


@dataclass(frozen=True)
class Citation:
    key: str
    authors: str
    year: int
    title: str
    arxiv: str
    where: str  # table / figure / section
    setup: str
    published: str  # what the paper reports, with its numbers
    claim: Claim | None
    not_comparable: str = ""  # why no arm of this lesson answers it
    if_disagrees: str = ""  # the likely reason, shown only when the verdict is "disagrees"

    @property
    def reference(self) -> str:
        return f"{self.authors} ({self.year}), “{self.title}”, arXiv:{self.arxiv}, {self.where}"


def _citation(entry: dict[str, Any], source: str) -> Citation:
    try:
        claim = entry.get("claim")
        if claim is not None:
            claim = Claim(**claim)
            if claim.expect not in DIRECTIONS:
                raise ValueError(f"expect must be one of {DIRECTIONS}, got {claim.expect!r}")
        elif not entry.get("not_comparable"):
            raise ValueError("an entry without a claim must say why (not_comparable)")
        return Citation(**{**entry, "claim": claim})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: entry {entry.get('key', '?')!r} is malformed ({e})") from None


def load(lesson: str) -> list[Citation]:
    """The citations stored beside a lesson (empty when it has none)."""
    path = resources.files("gptlab.lab.lessons") / f"{lesson.replace('-', '_')}_literature.yaml"
    if not path.is_file():
        return []
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [_citation(e, path.name) for e in entries]


def _by_seed(results, condition: str, variant: str, metric: str) -> dict[int, float]:
    return {c.seed: float(c.summary[metric]) for c in results.arm(condition, variant)
            if isinstance(c.summary.get(metric), (int, float)) and math.isfinite(c.summary[metric])}


def verdict_of(c: stats.Comparison, expect: str) -> str:
    if expect == "not-higher":  # "at least as low": shown by a significant decrease or by equivalence
        if c.significant():
            return "agrees" if c.diff < 0 else "disagrees"
        return "agrees" if c.equivalent() else "not shown here"
    if expect == "same":
        if c.significant():
            return "disagrees"
        return "agrees" if c.equivalent() else "not shown here"
    if not c.significant():
        return "not shown here"
    return "agrees" if (c.diff < 0) == (expect == "lower") else "disagrees"


def measure(citations: list[Citation], results, margin: float) -> dict[str, stats.Comparison]:
    """key -> the Holm-adjusted comparison of each citation whose arms this run has. One family of the distinct
    comparisons: two papers read on the same arms (one finding a help, one a harm) share one test."""
    tested: dict[tuple, stats.Comparison] = {}
    keys: dict[str, tuple] = {}
    for cit in citations:
        cl = cit.claim
        if cl is None:
            continue
        where = cl.where(results)
        identity = (where, cl.a, cl.b, cl.metric)
        if identity not in tested:
            a = _by_seed(results, where, cl.a, cl.metric)
            if cl.b is None:  # a's values against zero: the paired difference of a from 0 per seed
                a, b, names = {s: 0.0 for s in a}, a, ("0", cl.a)
            else:
                b, names = _by_seed(results, where, cl.b, cl.metric), (cl.a, cl.b)
            if len(a) < 2 or len(b) < 2:
                continue
            tested[identity] = stats.compare_by_seed(a, b, *names, margin)
        keys[cit.key] = identity
    adjusted = dict(zip(tested, stats.adjust(list(tested.values()))))
    return {key: adjusted[identity] for key, identity in keys.items()}


def literature_blocks(lesson: str, results, margin: float) -> list[Block]:
    citations = load(lesson)
    if not citations:
        return []
    measured = measure(citations, results, margin)
    rows = [["paper", "their setup", "what they report", "gptlab's comparison", "gptlab's number", "verdict"]]
    notes = []
    for cit in citations:
        cl, c = cit.claim, measured.get(cit.key)
        if cl is None:
            ours, number, verdict = "—", "—", f"not comparable: {cit.not_comparable}"
        elif c is None:
            ours = f"{cl.describe(results)} ({cl.metric})"
            number, verdict = "not in this run", "not comparable in this run (the arms did not run)"
        else:
            ours = f"{cl.describe(results)} ({cl.metric}; paper: {cl.expect})"
            digits = 4 if abs(c.diff) < 100 else 0  # losses to 4 places; tokens/s whole
            number = (f"{c.diff:+.{digits}f} ({fmt(c.ci_low, digits)} to {fmt(c.ci_high, digits)}, "
                      f"Holm p {fmt_p(c.p_adjusted)}"
                      + (f", TOST ±{margin:g} p {fmt_p(c.p_equivalent_adjusted)}" if cl.expect in ("same", "not-higher") else "")
                      + (f"; MDE {fmt(c.mde, digits)}" if not c.significant() else "") + ")")
            verdict = verdict_of(c, cl.expect)
            if verdict == "disagrees" and cit.if_disagrees:
                notes.append(f"{cit.key}: {cit.if_disagrees}")
        rows.append([cit.reference, cit.setup, cit.published, ours, number, verdict])
    blocks = [Block("h2", "What the literature reports"),
              Block("p", "Each paper's finding beside the comparison in this lesson that asks the same question. The "
                         "verdict is computed from these runs: agrees / disagrees when the difference is significant "
                         "(Holm, one family of the rows below) in the paper's direction or against it; for a paper "
                         f"that found no difference, agrees only when TOST shows equivalence within ±{margin:g}. "
                         "Papers read on the same arms share one test. Agreement is about direction: effect sizes "
                         "depend on model size, data and budget, and these models are far smaller than the papers'."),
              Block("table", items=rows)]
    if notes:
        blocks.append(Block("p", "Why the disagreements may arise: " + " ".join(notes)))
    return blocks
