"""A whole latency distribution in a few hundred bytes: log-bucketed, mergeable, ≤ 1 % relative error.

HdrHistogram's idea in the form DDSketch (Masson, Rim, Lee, VLDB 2019) states most simply: bucket ``i`` holds
the values in (γ^(i−1), γ^i] with γ = (1 + α) / (1 − α), and is reported as 2γ^i / (γ + 1), which is within a
relative ``α`` of every value in it. With α = 0.01 one decade takes 116 buckets, so a load phase whose
latencies span 50 µs to 5 s needs at most ~580 of them, however many requests it sent. Two histograms with the
same α merge by adding counts: the distribution of two runs, or two nodes, is exact up to the bucketing.

Pure Python (``math``, ``bisect``): it runs on the agent, after the load phase, from the raw latencies — never
on the generator's timing path.

Encoding (:meth:`Histogram.encode`), one line of ASCII that fits an InfluxDB string field (limit 64 KiB; a
realistic load phase takes 0.3–1.5 KB)::

    h1;a=0.01;n=12000;z=0;lo=0.0412;hi=48.7;o=-160;5,1k,2s,_3,9,...

``n`` the count, ``z`` values ≤ 0 (kept apart: they have no logarithm), ``lo``/``hi`` the exact smallest and
largest value, ``o`` the index of the first bucket, then one base-36 count per bucket from there on, where
``_K`` (K in base 36) stands for K empty buckets.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator

ALPHA = 0.01  # relative error of every reported value
VERSION = "h1"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, d = divmod(n, 36)
        out.append(_DIGITS[d])
    return "".join(reversed(out))


class Histogram:
    """Counts per logarithmic bucket, plus the exact min and max; merge with ``+`` or :meth:`merge`."""

    __slots__ = ("_cum", "_keys", "alpha", "buckets", "count", "gamma", "hi", "lo", "zeros")

    def __init__(self, alpha: float = ALPHA) -> None:
        if not 0 < alpha < 0.5:
            raise ValueError(f"histogram: alpha: expected a number in (0, 0.5), got {alpha}")
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.zeros = 0  # values <= 0
        self.lo = math.inf
        self.hi = -math.inf
        self._keys: list[int] | None = None  # sorted bucket indices and cumulative counts, built on first read
        self._cum: list[int] = []

    @classmethod
    def of(cls, values: Iterable[float], alpha: float = ALPHA) -> Histogram:
        h = cls(alpha)
        h.add_all(values)
        return h

    # ------------------------------------------------------------------ recording

    def index(self, x: float) -> int:
        """The bucket of a positive value: ceil(log_γ x)."""
        return math.ceil(math.log(x) / math.log(self.gamma))

    def value(self, i: int) -> float:
        """What bucket ``i`` reports: within ``alpha`` (relative) of every value in it."""
        return 2 * self.gamma**i / (self.gamma + 1)

    def add(self, x: float, n: int = 1) -> None:
        if not math.isfinite(x):
            raise ValueError(f"histogram: expected a finite value, got {x}")
        if x <= 0:
            self.zeros += n
        else:
            i = self.index(x)
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.count += n
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)
        self._keys = None

    def add_all(self, values: Iterable[float]) -> None:
        log_g = math.log(self.gamma)
        b = self.buckets
        ceil, log, finite = math.ceil, math.log, math.isfinite
        lo, hi, n, zeros = self.lo, self.hi, 0, 0
        for x in values:
            if not finite(x):
                raise ValueError(f"histogram: expected finite values, got {x}")
            n += 1
            if x <= 0:
                zeros += 1
            else:
                i = ceil(log(x) / log_g)
                b[i] = b.get(i, 0) + 1
            if x < lo:
                lo = x
            if x > hi:
                hi = x
        self.count += n
        self.zeros += zeros
        self.lo, self.hi = lo, hi
        self._keys = None

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram holding both (same alpha required)."""
        if not math.isclose(self.alpha, other.alpha):
            raise ValueError(f"histogram: cannot merge alpha {self.alpha} with alpha {other.alpha}")
        out = Histogram(self.alpha)
        for h in (self, other):
            for i, c in h.buckets.items():
                out.buckets[i] = out.buckets.get(i, 0) + c
        out.count = self.count + other.count
        out.zeros = self.zeros + other.zeros
        out.lo, out.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        return out

    __add__ = merge

    # ------------------------------------------------------------------ reading

    def _index(self) -> tuple[list[int], list[int]]:
        if self._keys is None:
            self._keys = sorted(self.buckets)
            total = self.zeros
            self._cum = []
            for k in self._keys:
                total += self.buckets[k]
                self._cum.append(total)
        return self._keys, self._cum

    def at_rank(self, r: int) -> float:
        """The r-th smallest value (0-based) as its bucket reports it, clamped to the exact min and max."""
        if not 0 <= r < self.count:
            raise IndexError(f"histogram: rank {r} outside 0..{self.count - 1}")
        if r == 0 or r == self.count - 1:
            return self.lo if r == 0 else self.hi  # the exact extremes are kept
        if r < self.zeros:
            return self.lo  # values <= 0 have no bucket: reported as the smallest of them
        keys, cum = self._index()
        j = bisect_left(cum, r + 1)
        return min(self.hi, max(self.lo, self.value(keys[j])))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, r: int) -> float:
        """A sorted sequence view of the values (as their buckets report them): ``h[0]`` … ``h[len(h) - 1]``."""
        return self.at_rank(r)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1), type 7 like :func:`runlab.stats.percentile`, read from the buckets."""
        if self.count == 0:
            raise ValueError("histogram: no values")
        if not 0 <= q <= 1:
            raise ValueError(f"histogram: expected q in 0..1, got {q}")
        h = (self.count - 1) * q
        lo = math.floor(h)
        a = self.at_rank(lo)
        b = self.at_rank(min(lo + 1, self.count - 1))
        return a + (h - lo) * (b - a)

    def items(self) -> Iterator[tuple[float, int]]:
        """(reported value, count) per non-empty bucket, ascending; values ≤ 0 first as one entry."""
        if self.zeros:
            yield self.lo, self.zeros
        keys, _ = self._index()
        for k in keys:
            yield min(self.hi, max(self.lo, self.value(k))), self.buckets[k]

    def cdf(self) -> list[tuple[float, float]]:
        """(upper edge of each non-empty bucket, fraction of values ≤ it): a step CDF for a plot."""
        out: list[tuple[float, float]] = []
        if self.count == 0:
            return out
        if self.zeros:
            out.append((0.0, self.zeros / self.count))
        keys, cum = self._index()
        for k, c in zip(keys, cum, strict=True):
            out.append((min(self.hi, self.gamma**k), c / self.count))
        return out

    # ------------------------------------------------------------------ encoding

    def encode(self) -> str:
        """One ASCII line: see the module docstring."""
        keys, _ = self._index()
        head = [VERSION, f"a={self.alpha:g}", f"n={self.count}", f"z={self.zeros}"]
        if self.count:
            head += [f"lo={self.lo!r}", f"hi={self.hi!r}"]
        if not keys:
            return ";".join(head)
        parts: list[str] = []
        prev = keys[0] - 1
        for k in keys:
            if k - prev > 1:
                parts.append("_" + _b36(k - prev - 1))
            parts.append(_b36(self.buckets[k]))
            prev = k
        return ";".join([*head, f"o={keys[0]}", ",".join(parts)])

    @classmethod
    def decode(cls, text: str) -> Histogram:
        """The histogram :meth:`encode` wrote; ValueError saying what is wrong otherwise."""
        fields = text.strip().split(";")
        if not fields or fields[0] != VERSION:
            raise ValueError(f"histogram: expected an encoding starting with {VERSION!r}, got {text[:20]!r}")
        opts: dict[str, str] = {}
        body = ""
        for f in fields[1:]:
            key, eq, val = f.partition("=")
            if eq:
                opts[key] = val
            else:
                body = f
        try:
            h = cls(float(opts.get("a", ALPHA)))
            count, zeros = int(opts["n"]), int(opts.get("z", "0"))
            if count:
                h.lo, h.hi = float(opts["lo"]), float(opts["hi"])
            i = int(opts["o"]) if body else 0
            for part in body.split(",") if body else []:
                if part.startswith("_"):
                    i += int(part[1:], 36)
                    continue
                c = int(part, 36)
                if c:
                    h.buckets[i] = c
                i += 1
        except (KeyError, ValueError) as e:
            raise ValueError(f"histogram: malformed encoding ({e}): {text[:40]!r}") from None
        h.count, h.zeros = count, zeros
        if sum(h.buckets.values()) + zeros != count:
            raise ValueError(f"histogram: bucket counts add up to {sum(h.buckets.values()) + zeros}, "
                             f"not n={count}")
        return h
