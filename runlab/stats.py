"""Statistics every runlab figure is reported with: summaries, the median's CI, outliers and A/B comparisons.

Pure Python (stdlib ``math``, ``random``, ``statistics``) so it runs inside the agent on a Raspberry Pi.
Choices, stated once here and relied on by the report writers:

* Percentiles use linear interpolation between order statistics (Hyndman–Fan type 7, numpy's default
  ``"linear"``, R's default, Excel's ``PERCENTILE.INC``).
* ``stdev`` is the sample standard deviation (n − 1 denominator); 0 for a single sample.
* The 95 % CI of the median is the distribution-free order-statistic interval from Binomial(n, ½): the ranks
  (k, n − k + 1) with the largest k whose coverage is still ≥ 95 % (n = 50 → ranks 18 and 33). Below n = 6 no
  such interval exists; min/max is reported instead with ``ci_exact`` False.
* Outliers are flagged, never dropped: modified z-score (Iglewicz–Hoaglin) |0.6745 (x − median) / MAD| > 3.5.
  When MAD is 0 (more than half the samples identical, common with coarse timer resolution) the
  mean-absolute-deviation variant |x − median| / (1.253314 · MeanAD) is used, MeanAD taken around the median,
  so a stray value among identical ones is still flagged; if MeanAD is 0 too, every sample is equal and
  none is flagged.
* Mann–Whitney U: exact null distribution (counted by polynomial dynamic programming) when both samples have
  at most 30 values and there are no ties; otherwise the normal approximation with tie and continuity
  corrections. p values are two-sided.
* Comparisons: ratio = candidate median / reference median, with a 95 % percentile-bootstrap CI (seeded,
  reproducible). A difference is called significant only when p < alpha AND |ratio − 1| ≥ threshold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache
from statistics import NormalDist
from typing import Literal, Protocol

import msgspec

EXACT_MAX_N = 30  # Mann–Whitney: largest sample size for which the exact distribution is used
OUTLIER_Z = 3.5  # Iglewicz–Hoaglin cut-off for the modified z-score
CI_LEVEL = 0.95

Verdict = Literal["better", "worse", "negligible", "inconclusive"]


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Descriptive statistics of one series of samples; every sample counted, none dropped."""

    n: int
    median: float
    mean: float
    stdev: float  # sample standard deviation (n - 1)
    cv: float  # stdev / |mean|; 0 when mean == 0
    min: float
    max: float
    p90: float  # percentiles: linear interpolation, Hyndman-Fan type 7
    p95: float
    p99: float
    ci_low: float  # 95 % CI of the median (order statistics)
    ci_high: float
    ci_exact: bool  # False when n < 6: no 95 % order-statistic interval exists, ci is min..max
    outliers: list[int]  # indices into the input, modified z-score > 3.5
    unit: str = ""


class SortedValues(Protocol):
    """What the median and its bootstrap read: a length and the i-th smallest value (a sorted list, a histogram)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> float: ...


class HasMedian(Protocol):
    """What :func:`describe` reads of a summary (a Summary, a Figure, or a histogram's digest)."""

    @property
    def median(self) -> float: ...


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate measured against a reference: effect size, its uncertainty, significance and verdict.

    ``ratio``, ``ratio_ci_low``, ``ratio_ci_high`` and ``change_pct`` are None where they are unbounded or
    undefined, which happens only when a reference median is 0 (JSON has no infinity).
    """

    reference: str
    candidate: str
    reference_median: float
    candidate_median: float
    ratio: float | None  # candidate median / reference median
    ratio_ci_low: float | None  # 95 % percentile-bootstrap CI of the ratio of medians
    ratio_ci_high: float | None
    p_value: float  # two-sided Mann-Whitney U
    significant: bool  # p < alpha and |ratio - 1| >= threshold
    change_pct: float | None  # (ratio - 1) * 100: -96.5 means 96.5 % lower
    verdict: Verdict  # better / worse (significant), negligible (p < alpha, effect < threshold), inconclusive
    alpha: float
    threshold: float
    lower_is_better: bool
    resamples: int
    seed: int


# ---------------------------------------------------------------- validation and percentiles


def _as_floats(samples: Sequence[float], what: str) -> list[float]:
    values = [float(x) for x in samples]
    if not values:
        raise ValueError(f"{what}: expected at least one sample, got none")
    for i, x in enumerate(values):
        if not math.isfinite(x):
            raise ValueError(f"{what}: sample {i} is {x}; expected a finite number")
    return values


def _quantile_sorted(xs: Sequence[float], q: float) -> float:
    """Type-7 quantile of already sorted values; tolerates infinities without producing NaN."""
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    frac = h - lo
    a, b = xs[lo], xs[hi]
    if frac == 0 or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return b if math.isinf(b) else a  # interpolating towards an infinity gives that infinity
    return a + frac * (b - a)


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation (Hyndman–Fan type 7, numpy "linear")."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile: expected p in 0..100, got {p}")
    return _quantile_sorted(sorted(_as_floats(samples, "percentile")), p / 100)


# ---------------------------------------------------------------- median CI


def _binomial_half_cdf(n: int, k: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed downwards from k in log space (n may be huge)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if 2 * k > n:
        return 1.0 - _binomial_half_cdf(n, n - k - 1)  # symmetry keeps the summation on the short tail
    log_half_n = n * math.log(2.0)
    term = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - log_half_n)
    total = 0.0
    i = k
    while i >= 0 and term > 0.0:
        total += term
        if term < total * 1e-17:
            break  # remaining tail terms shrink geometrically and cannot change the sum
        term *= i / (n - i + 1)  # pmf(i-1) / pmf(i)
        i -= 1
    return total


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int] | None:
    """1-based ranks (k, n - k + 1) of the distribution-free CI of the median, or None if n is too small.

    k is the largest rank with P(Binomial(n, 1/2) <= k - 1) <= (1 - level) / 2, so the interval
    [x_(k), x_(n-k+1)] covers the population median with probability >= ``level`` for any continuous
    distribution. For level 0.95: n = 6 → (1, 6), n = 50 → (18, 33); n < 6 → None.
    """
    if n < 1:
        raise ValueError(f"median_ci_ranks: expected n >= 1, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"median_ci_ranks: expected level in (0, 1), got {level}")
    tail = (1 - level) / 2
    if _binomial_half_cdf(n, 0) > tail:
        return None

    def ok(k: int) -> bool:
        return _binomial_half_cdf(n, k - 1) <= tail

    z = NormalDist().inv_cdf(1 - tail)
    k = max(1, min(n // 2, math.floor(n / 2 - z * math.sqrt(n) / 2)))  # normal-approximation start
    while k > 1 and not ok(k):
        k -= 1
    while k + 1 <= (n + 1) // 2 and ok(k + 1):
        k += 1
    return k, n - k + 1


# ---------------------------------------------------------------- outliers


def outlier_indices(samples: Sequence[float]) -> list[int]:
    """Indices of samples whose modified z-score exceeds 3.5 (Iglewicz–Hoaglin), in input order.

    Uses MAD; when MAD is 0 falls back to the mean-absolute-deviation variant (|x - median| / (1.253314 ·
    MeanAD)); when that is 0 too, all samples are equal and none is flagged.
    """
    xs = _as_floats(samples, "outlier_indices")
    med = _median_sorted(sorted(xs))
    dev = [abs(x - med) for x in xs]
    mad = _median_sorted(sorted(dev))
    if mad > 0:
        scale = mad / 0.6745
    else:
        mean_ad = math.fsum(dev) / len(dev)
        if mean_ad == 0:
            return []
        scale = 1.253314 * mean_ad
    return [i for i, d in enumerate(dev) if d / scale > OUTLIER_Z]


def _median_sorted(xs: SortedValues) -> float:
    n = len(xs)
    mid = n // 2
    return xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2


# ---------------------------------------------------------------- summary


def summarize(samples: Sequence[float], unit: str = "") -> Summary:
    """Summarise a series: n, median, mean, stdev, CV, min, max, p90/p95/p99, 95 % CI of the median, outliers.

    Raises ValueError on an empty series or a non-finite sample. No sample is ever dropped; outliers are
    only flagged (by index).
    """
    xs = _as_floats(samples, "summarize")
    n = len(xs)
    s = sorted(xs)
    mean = math.fsum(xs) / n
    # two-pass with fsum: accurate without the exact-fraction cost of statistics.stdev on large series
    stdev = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    ranks = median_ci_ranks(n)
    ci_low, ci_high = (s[ranks[0] - 1], s[ranks[1] - 1]) if ranks else (s[0], s[-1])
    return Summary(
        n=n,
        median=_median_sorted(s),
        mean=mean,
        stdev=stdev,
        cv=stdev / abs(mean) if mean != 0 else 0.0,
        min=s[0],
        max=s[-1],
        p90=_quantile_sorted(s, 0.90),
        p95=_quantile_sorted(s, 0.95),
        p99=_quantile_sorted(s, 0.99),
        ci_low=ci_low,
        ci_high=ci_high,
        ci_exact=ranks is not None,
        outliers=outlier_indices(xs),
        unit=unit,
    )


# ---------------------------------------------------------------- Mann–Whitney U


@lru_cache(maxsize=256)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of orderings of m + n distinct values giving U = 0..m*n (the Gaussian binomial [m+n, m]_q)."""
    size = m * n + m + 1  # room for the intermediate product before each division
    c = [0] * size
    c[0] = 1
    for i in range(1, m + 1):
        k = n + i
        for j in range(size - 1, k - 1, -1):  # multiply by (1 - q^(n+i))
            c[j] -= c[j - k]
        for j in range(i, size):  # divide by (1 - q^i): exact, the quotient is a polynomial
            c[j] += c[j - i]
    return tuple(c[: m * n + 1])


def _midranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks (1-based, ties get their average rank) and the sizes of tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1
        for t in range(i, j + 1):
            ranks[order[t]] = rank
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mann–Whitney U test: (U of ``a``, two-sided p value).

    U of a counts pairs with a_i > b_j, ties counting ½. Exact null distribution when both samples have at
    most 30 values and no value is tied; otherwise the normal approximation with tie correction and
    continuity correction. Raises ValueError on an empty or non-finite sample.
    """
    xa = _as_floats(a, "mann_whitney_u: a")
    xb = _as_floats(b, "mann_whitney_u: b")
    m, n = len(xa), len(xb)
    ranks, ties = _midranks(xa + xb)
    u = math.fsum(ranks[:m]) - m * (m + 1) / 2
    if not ties and m <= EXACT_MAX_N and n <= EXACT_MAX_N:
        counts = _u_counts(m, n)
        total = sum(counts)
        ui = round(u)  # integral without ties
        below = sum(counts[: ui + 1])
        above = sum(counts[ui:])
        return u, min(1.0, 2 * min(below, above) / total)
    big_n = m + n
    tie_term = sum(t**3 - t for t in ties) / (big_n * (big_n - 1))
    var = m * n / 12 * ((big_n + 1) - tie_term)
    if var <= 0:
        return u, 1.0  # every value tied: no evidence of any difference
    z = max(0.0, abs(u - m * n / 2) - 0.5) / math.sqrt(var)
    return u, min(1.0, math.erfc(z / math.sqrt(2)))


# ---------------------------------------------------------------- comparison


def _bootstrap_median(xs: SortedValues, rng: random.Random) -> float:
    """Median of one bootstrap resample of sorted ``xs``, drawn in O(1).

    Resampling with replacement picks indices floor(n·U) for n uniforms U; the k-th smallest index is
    floor(n·U_(k)) with U_(k) ~ Beta(k, n - k + 1), so the resample's median order statistics can be drawn
    directly: same distribution as sorting a full resample, but cheap enough for 10^5 samples on a Pi.
    """
    n = len(xs)

    def at(u: float) -> float:
        return xs[min(n - 1, int(u * n))]

    if n % 2:
        k = (n + 1) // 2
        return at(rng.betavariate(k, k))
    k = n // 2
    u1 = rng.betavariate(k, k + 1)
    u2 = u1 + (1 - u1) * rng.betavariate(1, k)  # smallest of the k uniforms above u1
    return (at(u1) + at(u2)) / 2


def _ratio(cand: float, ref: float) -> float:
    if ref == 0:
        return 1.0 if cand == 0 else math.copysign(math.inf, cand)
    return cand / ref


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _check_compare_args(alpha: float, threshold: float, resamples: int) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"compare: alpha: expected a number in (0, 1), got {alpha}")
    if threshold < 0:
        raise ValueError(f"compare: threshold: expected a number >= 0, got {threshold}")
    if resamples < 1:
        raise ValueError(f"compare: resamples: expected at least 1, got {resamples}")


def compare(
    reference: Sequence[float],
    candidate: Sequence[float],
    *,
    ref_name: str,
    cand_name: str,
    alpha: float = 0.01,
    threshold: float = 0.05,
    lower_is_better: bool = True,
    seed: int = 0,
    resamples: int = 2000,
) -> Comparison:
    """Compare a candidate series against a reference series.

    ratio = candidate median / reference median with a 95 % percentile-bootstrap CI (``resamples`` resamples,
    ``random.Random(seed)``, so the same inputs always give the same interval); p from a two-sided
    Mann–Whitney U test. The difference is significant only when p < ``alpha`` and |ratio - 1| >=
    ``threshold``. Verdict: "better"/"worse" when significant (direction per ``lower_is_better``),
    "negligible" when p < alpha but the effect is below the threshold, else "inconclusive".
    """
    _check_compare_args(alpha, threshold, resamples)
    ref = sorted(_as_floats(reference, f"compare: {ref_name}"))
    cand = sorted(_as_floats(candidate, f"compare: {cand_name}"))
    _, p = mann_whitney_u(ref, cand)
    return _decide(ref, cand, p, ref_name=ref_name, cand_name=cand_name, alpha=alpha, threshold=threshold,
                   lower_is_better=lower_is_better, seed=seed, resamples=resamples)


def mann_whitney_counts(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]]) -> tuple[float, float]:
    """Mann–Whitney U of two distributions given as (value, count) pairs (histogram buckets): (U of a, p).

    Every value of a bucket is tied with the others in it, so this is the test on the bucketed values: the
    normal approximation with tie and continuity corrections, as :func:`mann_whitney_u` uses past 30 samples.
    O(number of distinct values), whatever the counts.
    """
    merged: dict[float, list[int]] = {}
    for side, pairs in ((0, a), (1, b)):
        for v, c in pairs:
            if c < 0 or not math.isfinite(v):
                raise ValueError(f"mann_whitney_counts: bad bucket ({v}, {c})")
            merged.setdefault(v, [0, 0])[side] += c
    m = sum(c for _, c in a)
    n = sum(c for _, c in b)
    if m == 0 or n == 0:
        raise ValueError("mann_whitney_counts: expected at least one value on each side")
    rank_sum_a = 0.0
    seen = 0
    tie_sum = 0
    for v in sorted(merged):
        ca, cb = merged[v]
        t = ca + cb
        rank_sum_a += ca * (seen + (t + 1) / 2)
        tie_sum += t**3 - t
        seen += t
    u = rank_sum_a - m * (m + 1) / 2
    big_n = m + n
    var = m * n / 12 * ((big_n + 1) - tie_sum / (big_n * (big_n - 1)))
    if var <= 0:
        return u, 1.0
    z = max(0.0, abs(u - m * n / 2) - 0.5) / math.sqrt(var)
    return u, min(1.0, math.erfc(z / math.sqrt(2)))


def compare_sorted(
    reference: SortedValues,
    candidate: SortedValues,
    p_value: float,
    *,
    ref_name: str,
    cand_name: str,
    alpha: float = 0.01,
    threshold: float = 0.05,
    lower_is_better: bool = True,
    seed: int = 0,
    resamples: int = 2000,
    resolution: float = 0.0,
) -> Comparison:
    """:func:`compare` for two already sorted sequences (e.g. histogram views, whose ``h[i]`` is the i-th
    smallest value) and a p value computed elsewhere (e.g. :func:`mann_whitney_counts`).

    ``resolution``: the relative error of each value (a histogram's alpha). The bootstrap cannot see inside a
    bucket, so the ratio's CI is widened by it on both sides: it never claims more precision than the buckets.
    """
    _check_compare_args(alpha, threshold, resamples)
    if not len(reference) or not len(candidate):
        raise ValueError(f"compare: {ref_name if not len(reference) else cand_name}: expected at least one sample")
    c = _decide(reference, candidate, p_value, ref_name=ref_name, cand_name=cand_name, alpha=alpha,
                threshold=threshold, lower_is_better=lower_is_better, seed=seed, resamples=resamples)
    if resolution > 0:
        widen = ((1 + resolution) / (1 - resolution)) ** 2 if resolution < 1 else math.inf
        low = c.ratio_ci_low / widen if c.ratio_ci_low is not None else None
        high = _finite_or_none(c.ratio_ci_high * widen) if c.ratio_ci_high is not None else None
        c = msgspec.structs.replace(c, ratio_ci_low=low, ratio_ci_high=high)
    return c


def _decide(ref: SortedValues, cand: SortedValues, p: float, *, ref_name: str, cand_name: str, alpha: float,
            threshold: float, lower_is_better: bool, seed: int, resamples: int) -> Comparison:
    ref_med, cand_med = _median_sorted(ref), _median_sorted(cand)
    ratio = _ratio(cand_med, ref_med)

    rng = random.Random(seed)
    boot = sorted(_ratio(_bootstrap_median(cand, rng), _bootstrap_median(ref, rng)) for _ in range(resamples))
    tail = (1 - CI_LEVEL) / 2
    ci_low, ci_high = _quantile_sorted(boot, tail), _quantile_sorted(boot, 1 - tail)

    effect = abs(ratio - 1)
    significant = p < alpha and effect >= threshold
    verdict: Verdict
    if significant:
        verdict = "better" if (ratio < 1) == lower_is_better else "worse"
    else:
        verdict = "negligible" if p < alpha else "inconclusive"
    return Comparison(
        reference=ref_name,
        candidate=cand_name,
        reference_median=ref_med,
        candidate_median=cand_med,
        ratio=_finite_or_none(ratio),
        ratio_ci_low=_finite_or_none(ci_low),
        ratio_ci_high=_finite_or_none(ci_high),
        p_value=p,
        significant=significant,
        change_pct=_finite_or_none((ratio - 1) * 100),
        verdict=verdict,
        alpha=alpha,
        threshold=threshold,
        lower_is_better=lower_is_better,
        resamples=resamples,
        seed=seed,
    )


# ---------------------------------------------------------------- wording


def format_number(x: float) -> str:
    """About 3 significant digits, thousands separators, no trailing zeros: 1,340 · 47 · 0.0353 · 2.5."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if abs(x) >= 100:
        return f"{round(x):,}"  # integer digits are never hidden: 1,337 stays 1,337
    if x == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def format_ratio_with_ci(ratio: float, low: float | None, high: float | None) -> tuple[str, str, str]:
    """Ratio to ~3 significant digits and its bounds to the same decimals, so 0.574–0.600 never reads 0.574–0.6.

    Trailing zeros are dropped only where all three numbers share them: 0.0350 (0.0330–0.0370) → 0.035
    (0.033–0.037).
    """
    decimals = 0 if ratio == 0 or abs(ratio) >= 100 else max(0, 2 - math.floor(math.log10(abs(ratio))))
    values = [ratio, low, high]
    while decimals > 0 and all(v is None or f"{v:.{decimals}f}".endswith("0") for v in values):
        decimals -= 1
    ends = ("-∞", "∞")
    texts = [ends[i - 1] if v is None else f"{v:,.{decimals}f}" for i, v in enumerate(values)]
    return texts[0], texts[1], texts[2]


def _pct(r: float | None, sign: int) -> float | None:
    return None if r is None else sign * (r - 1) * 100


def change_words(
    ratio: float | None,
    low: float | None,
    high: float | None,
    lower_is_better: bool = True,
    better_word: str = "faster",
    worse_word: str = "slower",
) -> str:
    """A change the way the field report words it, with its 95 % CI beside it.

    Growth of at least 2× as a multiple: "37.8× slower (95 % CI 33.5–42.4)"; anything else as a percentage of
    the reference, the seed's way: "96.5 % faster (95 % CI 96.3–96.7 %)", "25 % slower (95 % CI 20–31 %)",
    "81.8 % less memory". The word follows the direction (``lower_is_better``: smaller is ``better_word``).
    """
    if ratio is None:
        return f"{better_word if not lower_is_better else worse_word} from a zero reference"
    word = better_word if (ratio < 1) == lower_is_better else worse_word
    if ratio == 1:
        return "no change"
    if ratio >= 2:
        r, lo, hi = format_ratio_with_ci(ratio, low, high)
        return f"{r}× {word} (95 % CI {lo}–{hi})"
    if ratio > 1:
        pct, a, b = (ratio - 1) * 100, _pct(low, 1), _pct(high, 1)
    else:
        pct, a, b = (1 - ratio) * 100, _pct(high, -1), _pct(low, -1)
    p, lo, hi = format_ratio_with_ci(pct, a, b)
    return f"{p} % {word} (95 % CI {lo}–{hi} %)"


def describe(
    c: Comparison,
    what: str,
    unit: str,
    ref: HasMedian,
    cand: HasMedian,
    better_word: str = "faster",
    worse_word: str = "slower",
) -> str:
    """One line in the field report's style, with the interval and p beside the claim.

    "WASM module startup: 47 ms vs 1,340 ms container — 96.5 % faster (95 % CI 96.3–96.7 %, p < 0.001)";
    "container startup: 124 ms vs 3.27 ms native — 37.8× slower (95 % CI 33.5–42.4, p < 0.001)";
    "… — no significant difference (ratio 0.99, 95 % CI 0.95–1.04, p = 0.41)" when it is not significant.
    """
    u = f" {unit}" if unit else ""
    head = f"{what}: {format_number(cand.median)}{u} vs {format_number(ref.median)}{u} {c.reference}"
    if c.ratio is None:
        ratio_text = "ratio undefined (reference median 0)"
    else:
        r, lo, hi = format_ratio_with_ci(c.ratio, c.ratio_ci_low, c.ratio_ci_high)
        ratio_text = f"ratio {r}, 95 % CI {lo}–{hi}"
    details = f"{ratio_text}, {_format_p(c.p_value)}"
    if c.significant:
        change = change_words(c.ratio, c.ratio_ci_low, c.ratio_ci_high, c.lower_is_better, better_word, worse_word)
        return f"{head} — {change[:-1]}, {_format_p(c.p_value)})"
    if c.verdict == "negligible":
        improved = c.ratio is not None and (c.ratio < 1) == c.lower_is_better
        word = better_word if improved else worse_word
        change = f"{format_number(abs(c.change_pct))} % {word}" if c.change_pct is not None else word
        limit = format_number(c.threshold * 100)
        return f"{head} — no significant difference ({change} is below the {limit} % threshold; {details})"
    return f"{head} — no significant difference ({details})"
