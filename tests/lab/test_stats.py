import math

import numpy as np
import pytest
from scipy import stats

from gptlab.lab.stats import adjust, bootstrap_diff_ci, compare, hedges_g, holm, summarize, verdict


def test_summary_matches_hand_computation():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) · s / √n
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half))
    assert math.isnan(summarize([1.0]).ci_low) and summarize([]).n == 0


def test_welch_and_paired_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 7), rng.normal(0.8, 2, 9)
    c = compare(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue) and c.diff == pytest.approx(b.mean() - a.mean())
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval()))
    b2 = a + rng.normal(0.3, 0.1, 7)
    cp = compare(a, b2, paired=True)
    assert cp.p == pytest.approx(stats.ttest_rel(b2, a).pvalue) and cp.test == "paired"
    assert cp.p < compare(a, b2).p  # pairing removes the shared seed variance


def test_hedges_g_hand_example():
    # means 2 and 5, both SD 1 (n = 3): d = 3, correction 1 − 3/(4·6 − 9) = 0.8
    assert hedges_g([1, 2, 3], [4, 5, 6]) == pytest.approx(2.4)


def test_holm_hand_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 × 0.5 is capped at 1; monotone after
    assert holm([0.2, 0.3]) == pytest.approx([0.4, 0.4])
    out = holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_bootstrap_ci_covers_the_difference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(1, 1, 30)
    low, high = bootstrap_diff_ci(a, b)
    assert low < b.mean() - a.mean() < high and low > 0


def test_verdicts_say_what_the_data_say():
    rng = np.random.default_rng(2)
    base = rng.normal(1.90, 0.01, 5)
    better = compare(base, base - 0.03 + rng.normal(0, 0.005, 5), "tied", "untied")
    text = verdict(better)
    assert text.startswith("untied lowers val loss by 0.0") and "better" in text and "n = 5 seeds per arm" in text
    same = compare(base, rng.normal(1.90, 0.01, 5), "tied", "untied")
    assert verdict(same).startswith("inconclusive: untied vs tied differ by")  # a large p alone proves nothing
    assert "80 % power" in verdict(same)


def test_equivalence_verdicts_equivalent_not_equivalent_inconclusive():
    from gptlab.lab.stats import outcome, tost

    rng = np.random.default_rng(5)
    base = rng.normal(1.90, 0.002, 10)
    tight = compare(base, base + rng.normal(0.0, 0.001, 10), "a", "b", paired=True, margin=0.01)
    assert tight.p_equivalent < 0.001 and outcome(tight) == "equivalent"
    assert verdict(tight).startswith("b and a are equivalent in val loss within ±0.01")
    shifted = compare(base, base + 0.011 + rng.normal(0.0, 0.004, 10), "a", "b", paired=True, margin=0.01)
    assert not shifted.equivalent()  # at the margin: equivalence cannot be shown
    small = compare(base, base + 0.004 + rng.normal(0.0, 0.0005, 10), "a", "b", paired=True, margin=0.01)
    assert outcome(small) == "higher" and small.equivalent()  # real, and smaller than what matters
    assert "smaller than the ±0.01 margin" in verdict(small)
    noisy = compare(rng.normal(1.9, 0.05, 3), rng.normal(1.9, 0.05, 3), "a", "b", margin=0.01)
    assert outcome(noisy) == "inconclusive" and "not shown" in verdict(noisy)
    real = compare(base, base + 0.05 + rng.normal(0, 0.002, 10), "a", "b", paired=True, margin=0.01)
    assert outcome(real) == "higher" and real.p_equivalent > 0.5
    # TOST by hand: diff 0, se 0.002, df 9, margin 0.01 → p = t.sf(5, 9)
    assert tost(0.0, 0.002, 9, 0.01) == pytest.approx(stats.t.sf(5.0, 9))
    assert math.isnan(tost(0.0, 0.002, 9, math.nan))


def test_tost_keeps_its_false_equivalence_rate_at_alpha():
    """True difference exactly at the margin: 'equivalent' must be said in at most 5 % of experiments."""
    rng = np.random.default_rng(6)
    trials = 2000
    hits = sum(compare(rng.normal(0, 1, 8), rng.normal(0.5, 1, 8), margin=0.5).equivalent() for _ in range(trials))
    assert hits / trials < 0.065


def test_holm_consistent_cis_exclude_zero_exactly_when_holm_rejects():
    rng = np.random.default_rng(7)
    for _ in range(200):
        comps = adjust([compare(rng.normal(0, 1, 5), rng.normal(rng.choice([0, 1.5]), 1, 5))
                        for _ in range(int(rng.integers(2, 7)))])
        for c in comps:
            excludes = c.ci_low > 0 or c.ci_high < 0
            assert excludes == c.significant(), (c.p, c.p_adjusted, c.ci_low, c.ci_high, c.ci_level)
            assert c.ci_level >= 0.95


def test_minimum_detectable_effect_has_the_power_it_claims():
    from gptlab.lab.stats import minimum_detectable_effect

    rng = np.random.default_rng(8)
    sd, n = 1.0, 6
    mde = minimum_detectable_effect(sd / math.sqrt(n), n - 1)
    hits = sum(compare(np.zeros(n), rng.normal(mde, sd, n), paired=True).significant() for _ in range(2000))
    assert 0.75 < hits / 2000 < 0.85  # 80 % power (paired against a constant: a one-sample t-test)


def test_bootstrap_is_left_out_below_ten_runs():
    rng = np.random.default_rng(9)
    assert math.isnan(compare(rng.normal(0, 1, 5), rng.normal(0, 1, 5)).boot_low)
    assert not math.isnan(compare(rng.normal(0, 1, 10), rng.normal(0, 1, 10)).boot_low)


def test_pairing_is_by_seed_id_with_a_missing_seed():
    from gptlab.lab.stats import compare_by_seed

    offsets = {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}  # large seed effects shared by both arms
    a = {s: 1.0 + o for s, o in offsets.items()}
    b = {s: 1.1 + o + 0.001 * s for s, o in offsets.items() if s != 2}  # seed 2 missing in b
    c = compare_by_seed(a, b)
    assert c.test == "paired" and c.n_a == c.n_b == 4 and c.dropped == 1
    assert c.diff == pytest.approx(np.mean([0.1 + 0.001 * s for s in (0, 1, 3, 4)]))
    assert c.p < 1e-4  # paired by position (0,1,2,3 vs 0,1,3,4) would mismatch offsets and lose it
    by_position = compare(list(a.values())[:4], list(b.values()), paired=True)
    assert by_position.p > 0.1


def test_false_positive_rate_under_the_null_stays_near_five_percent():
    rng = np.random.default_rng(3)
    trials = 2000
    hits = sum(compare(rng.normal(0, 1, 5), rng.normal(0, 1, 5)).significant() for _ in range(trials))
    rate = hits / trials
    assert 0.03 < rate < 0.07, rate  # binomial SD at 5 % and 2000 trials is 0.5 %


def test_holm_controls_the_family_wise_rate():
    rng = np.random.default_rng(4)
    families = 500
    any_hit = sum(any(c.significant() for c in adjust([compare(rng.normal(0, 1, 5), rng.normal(0, 1, 5))
                                                       for _ in range(4)])) for _ in range(families))
    assert any_hit / families < 0.08  # ≤ 5 % in expectation; uncorrected it would be ~19 %


def test_trend_matches_scipy_and_hand_example():
    from gptlab.lab.stats import trend

    t = trend([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])  # exact line: slope 2, no residual
    assert t.slope == pytest.approx(2.0) and t.ci_low == pytest.approx(2.0) and t.p < 1e-6
    rng = np.random.default_rng(3)
    x = np.repeat(np.arange(5.0), 4)
    y = 0.1 * x + rng.normal(0, 0.2, len(x))
    t, ref = trend(x, y), stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * ref.stderr
    assert (t.slope, t.ci_low, t.ci_high, t.p) == pytest.approx((ref.slope, ref.slope - half, ref.slope + half,
                                                                ref.pvalue))
    assert math.isnan(trend([1, 1, 1], [1, 2, 3]).slope)


def test_trend_with_seed_intercepts_matches_least_squares_with_dummies():
    from gptlab.lab.stats import trend

    rng = np.random.default_rng(4)
    seeds = np.repeat(np.arange(5), 6)
    x = np.tile(np.arange(6.0), 5)
    y = -0.02 * x + rng.normal(0, 0.3, 5)[seeds] + rng.normal(0, 0.01, len(x))  # big seed offsets, small noise
    t = trend(x, y, groups=seeds)
    design = np.column_stack([x] + [(seeds == s).astype(float) for s in range(5)])
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(y) - design.shape[1]
    se = math.sqrt(residual[0] / df * np.linalg.inv(design.T @ design)[0, 0])
    half = stats.t.ppf(0.975, df) * se
    assert (t.slope, t.ci_low, t.ci_high) == pytest.approx((coef[0], coef[0] - half, coef[0] + half))
    assert t.p == pytest.approx(2 * stats.t.sf(abs(coef[0] / se), df))
    loose = trend(x, y)  # ignoring the seeds, the offsets swamp the trend
    assert t.p < 0.001 < loose.p
