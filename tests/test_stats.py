"""Tests of runlab.stats against hand-computed values, textbook cases and independent brute-force references."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter
from functools import cache

import msgspec
import pytest

from runlab.stats import (
    Comparison,
    Summary,
    _bootstrap_median,
    _u_counts,
    change_words,
    compare,
    describe,
    format_number,
    mann_whitney_u,
    median_ci_ranks,
    outlier_indices,
    percentile,
    summarize,
)

# ---------------------------------------------------------------- summary: hand-computed values


def test_summary_of_small_even_dataset_matches_hand_computation() -> None:
    data = [2, 4, 4, 4, 5, 5, 7, 9]  # mean 5, squared deviations sum to 32
    s = summarize(data, unit="ms")
    assert s.n == 8
    assert s.median == 4.5
    assert s.mean == 5.0
    assert s.stdev == pytest.approx(math.sqrt(32 / 7))
    assert s.cv == pytest.approx(math.sqrt(32 / 7) / 5)
    assert (s.min, s.max) == (2.0, 9.0)
    # type 7: h = (n - 1) p; p90: h = 6.3 → 7 + 0.3·(9 − 7)
    assert s.p90 == pytest.approx(7.6)
    assert s.p95 == pytest.approx(8.3)
    assert s.p99 == pytest.approx(8.86)
    # n = 8: P(B <= 0) = 1/256 <= 0.025 < P(B <= 1) = 9/256 → ranks 1 and 8
    assert (s.ci_low, s.ci_high, s.ci_exact) == (2.0, 9.0, True)
    # median 4.5, MAD 0.5: z(9) = 0.6745·4.5/0.5 = 6.07 flagged, z(2) = z(7) = 3.37 not
    assert s.outliers == [7]
    assert s.unit == "ms"


def test_summary_of_small_odd_dataset_keeps_input_order_for_outlier_indices() -> None:
    s = summarize([30.0, 10.0, 20.0])
    assert s.median == 20.0
    assert s.mean == 20.0
    assert s.stdev == pytest.approx(10.0)
    assert s.p90 == pytest.approx(28.0)  # h = 1.8 → 20 + 0.8·10
    assert s.outliers == []
    assert (s.ci_low, s.ci_high, s.ci_exact) == (10.0, 30.0, False)


def test_stdev_agrees_with_statistics_module_on_awkward_values() -> None:
    rng = random.Random(5)
    data = [1e9 + rng.random() for _ in range(1000)]  # large offset: naive one-pass variance fails here
    s = summarize(data)
    assert s.stdev == pytest.approx(statistics.stdev(data), rel=1e-9)
    assert s.mean == pytest.approx(statistics.fmean(data), rel=1e-15)


def test_single_sample_and_constant_series() -> None:
    one = summarize([42.0])
    assert (one.n, one.median, one.stdev, one.cv, one.p99) == (1, 42.0, 0.0, 0.0, 42.0)
    assert (one.ci_low, one.ci_high, one.ci_exact) == (42.0, 42.0, False)
    zeros = summarize([0.0] * 10)
    assert zeros.cv == 0.0  # mean 0: CV defined as 0, not a ZeroDivisionError
    assert zeros.outliers == []


def test_percentile_type7_endpoints_and_interpolation() -> None:
    data = [15, 20, 35, 40, 50]
    assert percentile(data, 0) == 15
    assert percentile(data, 100) == 50
    assert percentile(data, 40) == pytest.approx(29.0)  # h = 1.6 → 20 + 0.6·15
    assert percentile(data, 50) == 35
    with pytest.raises(ValueError):
        percentile(data, 101)


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_summarize_refuses_empty_or_non_finite_input(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


def test_summary_round_trips_through_json_and_msgpack() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0], unit="ms")
    assert msgspec.json.decode(msgspec.json.encode(s), type=Summary) == s
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=Summary) == s


# ---------------------------------------------------------------- CI of the median


def _exact_ranks(n: int) -> tuple[int, int] | None:
    """Reference with exact integers: largest k with 2·Σ_{i<k} C(n, i) <= 0.05·2^n."""
    best = None
    cum = 0
    for k in range(1, (n + 1) // 2 + 1):
        cum += math.comb(n, k - 1)  # Σ_{i <= k-1}
        if 40 * cum <= 2**n:
            best = k
        else:
            break
    return None if best is None else (best, n - best + 1)


def test_order_statistic_ranks_for_n50_match_the_binomial_table() -> None:
    assert median_ci_ranks(50) == (18, 33)
    assert median_ci_ranks(100) == (40, 61)
    assert median_ci_ranks(6) == (1, 6)
    assert median_ci_ranks(5) is None


def test_order_statistic_ranks_match_exact_integer_computation() -> None:
    for n in range(1, 401):
        assert median_ci_ranks(n) == _exact_ranks(n), n


def test_order_statistic_ranks_for_huge_n_are_close_to_normal_approximation() -> None:
    n = 1_000_000
    ranks = median_ci_ranks(n)
    assert ranks is not None
    assert abs(ranks[0] - (n / 2 - 1.96 * math.sqrt(n) / 2)) <= 2
    assert ranks[1] == n - ranks[0] + 1


def test_median_ci_covers_true_median_about_95_percent_of_the_time() -> None:
    rng = random.Random(2024)
    mu, sigma = math.log(120.0), 0.4  # lognormal cold starts; true median exp(mu)
    true_median = math.exp(mu)
    trials = 500
    covered = 0
    for _ in range(trials):
        s = summarize([rng.lognormvariate(mu, sigma) for _ in range(50)])
        assert s.ci_exact
        covered += s.ci_low <= true_median <= s.ci_high
    # exact coverage of ranks 18..33 at n = 50 is 96.7 %; too-wide intervals (min..max) would give ~100 %
    assert 0.93 <= covered / trials <= 0.99


# ---------------------------------------------------------------- outliers


def test_one_planted_outlier_is_flagged_and_nothing_is_dropped() -> None:
    rng = random.Random(7)
    data = [rng.gauss(100.0, 5.0) for _ in range(49)]
    data.insert(17, 250.0)
    s = summarize(data)
    assert s.outliers == [17]
    assert s.n == 50
    assert s.max == 250.0  # flagged, still counted


def test_outliers_when_mad_is_zero_use_mean_absolute_deviation() -> None:
    # more than half identical → MAD 0; MeanAD = 95/10, M = 95 / (1.253314 · 9.5) = 7.98 > 3.5
    assert outlier_indices([5.0] * 9 + [100.0]) == [9]
    # balanced spread with MAD 0: M = 1 / (1.253314 · 0.4) = 2.0 → nothing flagged
    assert outlier_indices([5.0] * 6 + [6.0] * 4) == []
    assert outlier_indices([3.0] * 20) == []


# ---------------------------------------------------------------- Mann–Whitney U: exact


def _brute_force_p(a: list[float], b: list[float]) -> float:
    """Two-sided p by enumerating every split of the pooled values (no ties)."""
    pooled = a + b
    m = len(a)

    def u_of(group: tuple[float, ...], other: list[float]) -> int:
        return sum(x > y for x in group for y in other)

    u_obs = u_of(tuple(a), b)
    below = above = total = 0
    for idx in itertools.combinations(range(len(pooled)), m):
        chosen = set(idx)
        group = tuple(pooled[i] for i in idx)
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        u = u_of(group, rest)
        total += 1
        below += u <= u_obs
        above += u >= u_obs
    return min(1.0, 2 * min(below, above) / total)


@pytest.mark.parametrize(
    ("a", "b", "u", "p"),
    [
        ([1, 2, 3], [4, 5, 6], 0.0, 0.1),  # 2 · 1/C(6,3)
        ([4, 5, 6], [1, 2, 3], 9.0, 0.1),
        ([1, 2, 3, 4], [5, 6, 7, 8], 0.0, 2 / 70),
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 0.0, 2 / 252),
        ([19, 22, 16, 29, 24], [20, 11, 17, 12], 17.0, 1 / 9),  # scipy.stats.mannwhitneyu docs, exact
        ([1, 3, 5], [2, 4, 6], 3.0, 0.7),  # P(U <= 3) = 7/20
    ],
)
def test_mann_whitney_exact_textbook_cases(a: list[float], b: list[float], u: float, p: float) -> None:
    got_u, got_p = mann_whitney_u(a, b)
    assert got_u == u
    assert got_p == pytest.approx(p, abs=1e-12)


def test_mann_whitney_exact_matches_brute_force_enumeration() -> None:
    rng = random.Random(11)
    for m, n in [(3, 4), (5, 5), (6, 7), (2, 9), (8, 6)]:
        pool = rng.sample(range(1000), m + n)
        a, b = [float(x) for x in pool[:m]], [float(x + 150) for x in pool[m:]]
        if len(set(a + b)) < m + n:
            continue
        assert mann_whitney_u(a, b)[1] == pytest.approx(_brute_force_p(a, b), abs=1e-12), (m, n)


def test_u_counts_are_a_distribution_over_all_orderings() -> None:
    for m, n in [(1, 1), (3, 5), (10, 7), (30, 30)]:
        counts = _u_counts(m, n)
        assert len(counts) == m * n + 1
        assert sum(counts) == math.comb(m + n, m)
        assert counts == counts[::-1]
        assert min(counts) >= 1


# ---------------------------------------------------------------- Mann–Whitney U: normal approximation


@cache
def _orderings(m: int, n: int, u: int) -> int:
    """Independent recursion for the number of orderings with U = u (Mann & Whitney 1947)."""
    if u < 0:
        return 0
    if m == 0 or n == 0:
        return 1 if u == 0 else 0
    return _orderings(m - 1, n, u - n) + _orderings(m, n - 1, u)


def _exact_p_with_ties(a: list[int], b: list[int]) -> float:
    """Exact permutation p of U with ties: subset-sum DP over tie groups of doubled midranks."""
    pooled = sorted(a + b)
    groups = Counter(pooled)
    m = len(a)
    doubled: dict[int, int] = {}
    start = 0
    for value in sorted(groups):
        t = groups[value]
        doubled[value] = 2 * start + t + 1  # 2 · midrank of ranks start+1 .. start+t
        start += t
    states: dict[tuple[int, int], int] = {(0, 0): 1}
    for value in sorted(groups):
        t, r = groups[value], doubled[value]
        nxt: dict[tuple[int, int], int] = {}
        for (count, total), ways in states.items():
            for j in range(0, min(t, m - count) + 1):
                key = (count + j, total + j * r)
                nxt[key] = nxt.get(key, 0) + ways * math.comb(t, j)
        states = nxt
    observed = sum(doubled[x] for x in a)
    centre = m * (len(pooled) + 1)  # 2 · expected rank sum
    dist = abs(observed - centre)
    extreme = sum(w for (count, total), w in states.items() if count == m and abs(total - centre) >= dist)
    return extreme / math.comb(len(pooled), m)


def test_mann_whitney_normal_approximation_with_ties_is_close_to_exact_permutation_p() -> None:
    rng = random.Random(3)
    checked = 0
    for shift in (0, 1, 2, 3):
        for _ in range(3):
            a = [rng.randint(0, 9) for _ in range(25)]
            b = [rng.randint(0, 9) + shift for _ in range(20)]
            _, p = mann_whitney_u(a, b)
            exact = _exact_p_with_ties(a, b)
            assert p == pytest.approx(exact, abs=0.01), (shift, p, exact)
            checked += 1
    assert checked == 12


def test_mann_whitney_normal_approximation_without_ties_beyond_30_is_close_to_exact() -> None:
    rng = random.Random(17)
    for m, n in [(35, 35), (40, 31), (31, 60)]:
        pool = rng.sample(range(100_000), m + n)
        a = [x / 100 for x in pool[:m]]
        b = [x / 100 + 150.0 + 0.001 for x in pool[m:]]  # offset keeps all values distinct
        u, p = mann_whitney_u(a, b)
        assert u == int(u)
        total = math.comb(m + n, m)
        below = sum(_orderings(m, n, k) for k in range(int(u) + 1))
        above = total - below + _orderings(m, n, int(u))
        exact = min(1.0, 2 * min(below, above) / total)
        assert p == pytest.approx(exact, abs=0.003), (m, n, p, exact)


def test_mann_whitney_normal_approximation_hand_computed_with_tie_and_continuity_corrections() -> None:
    # pooled 1,2,2,2,3,3 → midranks 1; 3,3,3; 5.5,5.5. R_a = 1 + 3 + 3 = 7, U_a = 7 - 3·4/2 = 1, mean 4.5.
    # ties t = 3, 2: Σ(t³ - t) / (N(N - 1)) = 30 / 30 = 1 → var = 3·3/12 · (7 - 1) = 4.5
    # z = (|1 - 4.5| - 0.5) / √4.5 = √2 → p = erfc(√2 / √2) = erfc(1)
    # (no continuity correction would give 0.099, no tie correction 0.190)
    u, p = mann_whitney_u([1, 2, 2], [2, 3, 3])
    assert u == 1.0
    assert p == pytest.approx(math.erfc(1.0), abs=1e-12)


def test_mann_whitney_all_tied_and_invalid_input() -> None:
    assert mann_whitney_u([1.0, 1.0, 1.0], [1.0, 1.0]) == (3.0, 1.0)
    with pytest.raises(ValueError):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError):
        mann_whitney_u([1.0], [math.nan])


def test_mann_whitney_p_values_are_calibrated_under_the_null() -> None:
    rng = random.Random(99)
    ps = [mann_whitney_u([rng.gauss(0, 1) for _ in range(20)], [rng.gauss(0, 1) for _ in range(20)])[1]
          for _ in range(1000)]
    # exact test: P(p < alpha) <= alpha, and not far below it
    assert 0.03 <= sum(p < 0.05 for p in ps) / len(ps) <= 0.065
    assert sum(p < 0.01 for p in ps) / len(ps) <= 0.02


# ---------------------------------------------------------------- bootstrap


def test_fast_bootstrap_median_has_the_exact_resampling_distribution() -> None:
    # n = 5, sorted values 0..4: the resample median is x_j when at least 3 of 5 draws are <= j,
    # i.e. P(median <= x_j) = P(Binomial(5, (j+1)/5) >= 3)
    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    rng = random.Random(1)
    draws = 40_000
    freq = Counter(_bootstrap_median(xs, rng) for _ in range(draws))

    def cdf(j: int) -> float:
        q = (j + 1) / 5
        return sum(math.comb(5, i) * q**i * (1 - q) ** (5 - i) for i in range(3, 6))

    for j in range(5):
        expected = cdf(j) - (cdf(j - 1) if j else 0.0)
        assert freq[float(j)] / draws == pytest.approx(expected, abs=0.01), j


def test_fast_bootstrap_median_matches_naive_resampling_for_even_n() -> None:
    rng = random.Random(4)
    xs = sorted(rng.lognormvariate(0, 1) for _ in range(40))
    fast_rng, naive_rng = random.Random(1), random.Random(2)
    fast = sorted(_bootstrap_median(xs, fast_rng) for _ in range(6000))
    naive = sorted(statistics.median(naive_rng.choices(xs, k=len(xs))) for _ in range(6000))
    for q in (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975):
        i = int(q * 6000)
        assert fast[i] == pytest.approx(naive[i], rel=0.06), q


# ---------------------------------------------------------------- compare


def _lognormal(rng: random.Random, median: float, sigma: float, n: int) -> list[float]:
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def test_compare_refuses_to_call_noise_a_difference() -> None:
    rng = random.Random(12345)
    trials = 400
    false_positives = 0
    for seed in range(trials):
        ref = _lognormal(rng, 100.0, 0.3, 50)
        cand = _lognormal(rng, 100.0, 0.3, 50)
        c = compare(ref, cand, ref_name="a", cand_name="b", seed=seed, resamples=200)
        false_positives += c.significant
        assert c.verdict in ("inconclusive", "negligible") or c.significant
    assert false_positives / trials <= 0.02


def test_compare_calls_a_real_20_percent_shift_at_n50() -> None:
    rng = random.Random(777)
    covered = 0
    for seed in range(20):
        ref = _lognormal(rng, 100.0, 0.1, 50)
        cand = _lognormal(rng, 120.0, 0.1, 50)
        c = compare(ref, cand, ref_name="container", cand_name="vm", seed=seed, resamples=500)
        assert c.significant
        assert c.verdict == "worse"  # lower is better, candidate is slower
        assert c.p_value < 1e-6
        assert c.change_pct is not None and 8 < c.change_pct < 33  # ±4 sd of the ratio of medians
        assert c.ratio_ci_low is not None and c.ratio_ci_high is not None
        assert c.ratio_ci_low < c.ratio_ci_high
        covered += c.ratio_ci_low <= 1.2 <= c.ratio_ci_high
    assert covered >= 17  # the bootstrap interval usually contains the true ratio


def test_compare_higher_is_better_flips_the_verdict() -> None:
    rng = random.Random(8)
    ref = _lognormal(rng, 100.0, 0.1, 50)
    cand = _lognormal(rng, 130.0, 0.1, 50)
    assert compare(ref, cand, ref_name="r", cand_name="c", lower_is_better=False).verdict == "better"
    assert compare(ref, cand, ref_name="r", cand_name="c").verdict == "worse"


def test_tiny_effect_with_huge_n_is_significant_by_p_but_not_by_threshold() -> None:
    rng = random.Random(31)
    ref = _lognormal(rng, 100.0, 0.1, 5000)
    cand = _lognormal(rng, 102.0, 0.1, 5000)
    c = compare(ref, cand, ref_name="a", cand_name="b")
    assert c.p_value < 1e-6
    assert c.ratio is not None and 1.0 < c.ratio < 1.05
    assert not c.significant
    assert c.verdict == "negligible"
    # the same data with a 1 % threshold is a real difference
    assert compare(ref, cand, ref_name="a", cand_name="b", threshold=0.01).significant


def test_compare_is_reproducible_per_seed() -> None:
    rng = random.Random(2)
    ref, cand = _lognormal(rng, 10.0, 0.2, 30), _lognormal(rng, 9.0, 0.2, 30)
    one = compare(ref, cand, ref_name="a", cand_name="b", seed=5)
    assert one == compare(ref, cand, ref_name="a", cand_name="b", seed=5)
    assert one.ratio_ci_low != compare(ref, cand, ref_name="a", cand_name="b", seed=6).ratio_ci_low


def test_compare_with_zero_reference_median_stays_finite_and_serialisable() -> None:
    c = compare([0.0] * 10, [5.0] * 10, ref_name="idle", cand_name="busy")
    assert c.ratio is None and c.change_pct is None and c.ratio_ci_high is None
    assert c.significant  # p < alpha, and an infinite ratio exceeds any threshold
    assert msgspec.json.decode(msgspec.json.encode(c), type=Comparison) == c
    both_zero = compare([0.0] * 10, [0.0] * 10, ref_name="a", cand_name="b")
    assert (both_zero.ratio, both_zero.significant, both_zero.verdict) == (1.0, False, "inconclusive")


def test_compare_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="alpha"):
        compare([1.0], [2.0], ref_name="a", cand_name="b", alpha=1.5)
    with pytest.raises(ValueError, match="b"):
        compare([1.0], [], ref_name="a", cand_name="b")


# ---------------------------------------------------------------- describe


def _comparison(**overrides: object) -> Comparison:
    fields: dict[str, object] = {
        "reference": "container", "candidate": "wasm", "reference_median": 1340.0, "candidate_median": 47.0,
        "ratio": 0.035, "ratio_ci_low": 0.033, "ratio_ci_high": 0.037, "p_value": 1e-12, "significant": True,
        "change_pct": -96.5, "verdict": "better", "alpha": 0.01, "threshold": 0.05, "lower_is_better": True,
        "resamples": 2000, "seed": 0,
    }
    fields.update(overrides)
    return msgspec.convert(fields, Comparison)


def test_describe_prints_the_field_report_sentence_with_its_interval() -> None:
    text = describe(_comparison(), "WASM module startup", "ms", summarize([1340.0]), summarize([47.0]))
    assert text == ("WASM module startup: 47 ms vs 1,340 ms container — 96.5 % faster "
                    "(95 % CI 96.3–96.7 %, p < 0.001)")
    slower = _comparison(reference="native", reference_median=3.27, candidate_median=124.0, ratio=37.8,
                         ratio_ci_low=33.5, ratio_ci_high=42.4, change_pct=3680.0, verdict="worse")
    assert describe(slower, "container startup", "ms", summarize([3.27]), summarize([124.0])) == (
        "container startup: 124 ms vs 3.27 ms native — 37.8× slower (95 % CI 33.5–42.4, p < 0.001)")


def test_describe_not_significant_and_negligible() -> None:
    ref, cand = summarize([101.0]), summarize([100.0])
    inconclusive = _comparison(ratio=0.99, ratio_ci_low=0.95, ratio_ci_high=1.04, p_value=0.41,
                               significant=False, change_pct=-1.0, verdict="inconclusive")
    assert describe(inconclusive, "Go binary startup", "ms", ref, cand) == (
        "Go binary startup: 100 ms vs 101 ms container — no significant difference "
        "(ratio 0.99, 95 % CI 0.95–1.04, p = 0.41)")
    negligible = _comparison(ratio=0.98, ratio_ci_low=0.978, ratio_ci_high=0.983, p_value=1e-9,
                             significant=False, change_pct=-2.0, verdict="negligible")
    assert describe(negligible, "Go binary startup", "ms", ref, cand) == (
        "Go binary startup: 100 ms vs 101 ms container — no significant difference "
        "(2 % faster is below the 5 % threshold; ratio 0.980, 95 % CI 0.978–0.983, p < 0.001)")


def test_describe_worse_and_custom_words_from_real_comparison() -> None:
    rng = random.Random(3)
    ref_samples = _lognormal(rng, 52_000.0, 0.05, 50)
    cand_samples = _lognormal(rng, 31_000.0, 0.05, 50)
    c = compare(ref_samples, cand_samples, ref_name="container", cand_name="static binary")
    text = describe(c, "Idle memory (PSS)", "KiB", summarize(ref_samples), summarize(cand_samples),
                    better_word="less", worse_word="more")
    # medians 30,563 and 52,595: ratio 0.5811, 41.9 % less; the upper bound 0.59996 keeps the ratio's decimals
    assert text == ("Idle memory (PSS): 30,563 KiB vs 52,595 KiB container — 41.9 % less "
                    "(95 % CI 40.0–42.6 %, p < 0.001)")
    worse = describe(_comparison(ratio=1.25, ratio_ci_low=1.2, ratio_ci_high=1.31, change_pct=25.0,
                                 verdict="worse", p_value=0.004),
                     "Cold start", "", summarize([100.0]), summarize([125.0]))
    assert worse == "Cold start: 125 vs 100 container — 25 % slower (95 % CI 20–31 %, p = 0.004)"


@pytest.mark.parametrize(
    ("ratio", "low", "high", "lower_is_better", "words", "text"),
    [(0.035, 0.033, 0.037, True, ("faster", "slower"), "96.5 % faster (95 % CI 96.3–96.7 %)"),
     (37.8, 33.5, 42.4, True, ("faster", "slower"), "37.8× slower (95 % CI 33.5–42.4)"),
     (1.25, 1.2, 1.31, True, ("faster", "slower"), "25 % slower (95 % CI 20–31 %)"),
     (0.182, 0.17, 0.19, True, ("less memory", "more memory"), "81.8 % less memory (95 % CI 81.0–83.0 %)"),
     (2.5, 2.1, 3.0, False, ("better", "worse"), "2.5× better (95 % CI 2.1–3.0)"),
     (0.6, 0.5, 0.7, False, ("better", "worse"), "40 % worse (95 % CI 30–50 %)"),
     (None, None, None, True, ("faster", "slower"), "slower from a zero reference")],
)
def test_change_words_multiples_for_growth_percentages_otherwise(
        ratio: float | None, low: float | None, high: float | None, lower_is_better: bool,
        words: tuple[str, str], text: str) -> None:
    assert change_words(ratio, low, high, lower_is_better, *words) == text


@pytest.mark.parametrize(
    ("x", "text"),
    [(1340.0, "1,340"), (1337.4, "1,337"), (47.0, "47"), (46.13, "46.1"), (0.0353, "0.0353"), (0.035, "0.035"),
     (2.5, "2.5"), (0.0, "0"), (99.96, "100"), (-3.14159, "-3.14"), (1_234_567.8, "1,234,568")],
)
def test_format_number(x: float, text: str) -> None:
    assert format_number(x) == text
