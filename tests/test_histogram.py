"""runlab.histogram: ≤ 1 % relative error at every quantile, exact merges, a compact encoding that round-trips;
and the comparison of two histograms agreeing with the comparison of their raw values."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from runlab import stats
from runlab.histogram import Histogram


def _latencies(rng: random.Random, n: int, median: float = 1.0, sigma: float = 0.8) -> list[float]:
    return [median * math.exp(rng.gauss(0, sigma)) for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_quantile_is_within_one_percent_of_the_exact_one(seed: int) -> None:
    rng = random.Random(seed)
    xs = [*_latencies(rng, 20_000, median=0.4, sigma=1.5), 1e-4, 3000.0]  # 7 decades
    h = Histogram.of(xs)
    exact = sorted(xs)
    for q in [i / 200 for i in range(201)] + [0.999, 0.9999]:
        want = stats._quantile_sorted(exact, q)
        assert abs(h.quantile(q) - want) <= 0.01 * want, q
    assert h.quantile(0) == min(xs) and h.quantile(1) == max(xs)  # the extremes are exact
    for r in range(0, len(exact), 997):  # every rank, not only the interpolated quantiles
        assert abs(h[r] - exact[r]) <= 0.01 * exact[r]


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a, b = _latencies(rng, 3000), _latencies(rng, 5000, median=3.0)
    merged = Histogram.of(a) + Histogram.of(b)
    whole = Histogram.of(a + b)
    assert merged.buckets == whole.buckets and merged.count == 8000
    assert (merged.lo, merged.hi) == (whole.lo, whole.hi)
    assert merged.encode() == whole.encode()
    with pytest.raises(ValueError, match=r"cannot merge alpha 0\.01 with alpha 0\.05"):
        Histogram.of(a).merge(Histogram.of(b, alpha=0.05))


def test_encoding_round_trips_and_stays_small() -> None:
    rng = random.Random(11)
    xs = [*_latencies(rng, 100000, median=0.25, sigma=1.0), 0.0, 0.0]
    h = Histogram.of(xs)
    text = h.encode()
    assert text.isascii() and "\n" not in text and '"' not in text and "\\" not in text
    assert len(text) < 2000, len(text)  # 100,000 latencies over ~4 decades
    back = Histogram.decode(text)
    assert back.buckets == h.buckets and back.count == h.count == 100_002 and back.zeros == 2
    assert (back.lo, back.hi) == (0.0, max(xs))
    assert back.encode() == text
    assert [back.quantile(q) for q in (0.1, 0.5, 0.99)] == [h.quantile(q) for q in (0.1, 0.5, 0.99)]
    empty = Histogram()
    assert Histogram.decode(empty.encode()).count == 0 and empty.cdf() == []


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected an encoding starting with 'h1'"),
    ("h2;a=0.01;n=1", "expected an encoding starting with 'h1'"),
    ("h1;a=0.01;n=x", "malformed encoding"),
    ("h1;a=0.01;n=3;z=0;lo=1.0;hi=2.0;o=0;1,1", "add up to 2, not n=3"),
    ("h1;a=0.01;n=2;z=0;lo=1.0;hi=2.0;o=0;1,!", "malformed encoding"),
    ("h1;a=0.9;n=0;z=0", "alpha: expected a number in"),
])
def test_decode_refuses_what_encode_never_writes(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram.decode(text)


def test_cdf_is_monotone_and_ends_at_one() -> None:
    h = Histogram.of(_latencies(random.Random(5), 5000))
    cdf = h.cdf()
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(cdf))
    assert cdf[-1] == (h.hi, 1.0)
    assert abs(next(x for x, f in cdf if f >= 0.5) - h.quantile(0.5)) <= 0.03 * h.quantile(0.5)


def test_comparing_histograms_agrees_with_comparing_the_raw_values() -> None:
    rng = random.Random(9)
    ref, slow, same = _latencies(rng, 4000, 1.0, 0.3), _latencies(rng, 4000, 1.3, 0.3), _latencies(rng, 4000, 1.0, 0.3)
    for cand, verdict in ((slow, "worse"), (same, "inconclusive")):
        raw = stats.compare(ref, cand, ref_name="a", cand_name="b")
        hr, hc = Histogram.of(ref), Histogram.of(cand)
        _, p = stats.mann_whitney_counts(list(hr.items()), list(hc.items()))
        binned = stats.compare_sorted(hr, hc, p, ref_name="a", cand_name="b")
        assert raw.verdict == binned.verdict == verdict
        assert raw.ratio is not None and binned.ratio is not None and abs(binned.ratio / raw.ratio - 1) < 0.02
        assert binned.ratio_ci_low is not None and binned.ratio_ci_high is not None
        assert binned.ratio_ci_low <= binned.ratio <= binned.ratio_ci_high
        if verdict == "worse":
            assert raw.p_value < 1e-10 and p < 1e-10
        else:
            assert abs(math.log10(p) - math.log10(raw.p_value)) < 0.5  # p itself moves a little with the bucketing


def test_weighted_mann_whitney_equals_the_plain_test_on_the_expanded_values() -> None:
    a = [(1.0, 3), (2.0, 1), (5.0, 2)]
    b = [(2.0, 2), (3.0, 4), (5.0, 1)]
    expand = [v for v, c in a for _ in range(c)], [v for v, c in b for _ in range(c)]
    assert stats.mann_whitney_counts(a, b) == pytest.approx(stats.mann_whitney_u(*expand))
    with pytest.raises(ValueError, match="at least one value on each side"):
        stats.mann_whitney_counts(a, [])
