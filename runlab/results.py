"""Plain result objects of an experiment run: what the engine produces and every report writer reads.

They serialise to JSON as they are (msgspec), carry every raw sample, and can
be rebuilt from InfluxDB (the fleet report) or merged across machines.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from runlab import stats
from runlab.wire import FieldValue, Sample

if TYPE_CHECKING:
    from runlab.histogram import Histogram


class Figure(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One repeated measurement of a variant: statistics plus every raw sample."""

    unit: str
    n: int
    median: float
    mean: float
    stdev: float
    cv: float
    min: float
    max: float
    p90: float
    p95: float
    p99: float
    ci_low: float  # 95 % confidence interval of the median
    ci_high: float
    ci_exact: bool
    outliers: list[int]  # indices into samples, flagged by modified z-score (kept, never dropped)
    samples: list[float]  # the measured values, warm-up excluded
    warmup: list[float] = []  # kept, not in the statistics
    failures: int = 0
    failure_reasons: list[str] = []

    @classmethod
    def of(cls, samples: list[float], unit: str, warmup: list[float] | None = None, failures: int = 0,
           failure_reasons: list[str] | None = None) -> Figure | None:
        """Statistics of ``samples``; None when there are none."""
        if not samples:
            return None
        s = stats.summarize(samples, unit=unit)
        return cls(unit=unit, n=s.n, median=s.median, mean=s.mean, stdev=s.stdev, cv=s.cv, min=s.min, max=s.max,
                   p90=s.p90, p95=s.p95, p99=s.p99, ci_low=s.ci_low, ci_high=s.ci_high, ci_exact=s.ci_exact,
                   outliers=list(s.outliers), samples=list(samples), warmup=list(warmup or []),
                   failures=failures, failure_reasons=list(failure_reasons or [])[:10])


class Footprint(msgspec.Struct, kw_only=True):
    """Memory of everything the runtime added, idle after settling, and the peak seen."""

    pss_bytes: int  # headline figure: shared pages divided fairly
    uss_bytes: int
    rss_bytes: int  # double-counts shared pages across processes
    processes: int
    cgroup_bytes: int | None = None  # the workload's own cgroup, where it has one
    cgroup_anon_bytes: int | None = None
    cgroup_file_bytes: int | None = None
    peak_bytes: int | None = None
    peak_source: str = ""  # "cgroup memory.peak", "cgroup max_usage_in_bytes" or "PSS sampled at 50 Hz"
    settle_s: float = 0.0


class Size(msgspec.Struct, kw_only=True):
    bytes: int
    what: str  # e.g. "file /opt/hello/server", "image localhost/hello:1 (uncompressed)"


class LoadFigures(msgspec.Struct, kw_only=True):
    mode: str  # "closed" (N requests, C concurrent) or "open" (constant rate, latency from intended send)
    url: str
    requests: int
    ok: int
    errors: int
    concurrency: int
    target_rps: float
    achieved_rps: float
    duration_s: float
    latency_ms: Figure | None
    p999_ms: float = 0.0
    generator_floor_ms: float = 0.0  # the load generator's own latency floor (calibrated)
    # the whole latency distribution, runlab.histogram's encoding (≤ 1 % relative error, mergeable): what the
    # store keeps where the raw latencies do not travel. Built from latency_ms.samples when not given.
    histogram: str = ""

    def __post_init__(self) -> None:
        if not self.histogram and self.latency_ms is not None and self.latency_ms.samples:
            from runlab.histogram import Histogram

            self.histogram = Histogram.of(self.latency_ms.samples).encode()

    def distribution(self) -> Histogram | None:
        """The latency histogram, or None when there is none (no successful request)."""
        from runlab.histogram import Histogram

        return Histogram.decode(self.histogram) if self.histogram else None


class Redeploy(msgspec.Struct, kw_only=True):
    """v1 → v2 swaps under a steady client: time to v2's first answer, and what the client saw meanwhile."""

    strategy: str  # stop-start | start-stop (through the agent's switching proxy)
    time_to_v2_ms: Figure | None  # swap issued → first answer from v2 seen by the client
    gap_ms: Figure | None  # per swap: longest time between two successful answers (any version)
    errors: list[int] = []  # per swap: failed client requests from the swap to the end of the tail
    requests: list[int] = []  # per swap: client requests in the same window
    client_interval_ms: float = 0.0  # detection resolution of the client


class InterServiceRtt(msgspec.Struct, kw_only=True):
    """TCP ping-pong round trips between two instances of a variant (server and client workload)."""

    rtt_ms: Figure | None
    pairs: int = 0
    peer: str = ""  # how the client reached the server (host part)


class DensityLevel(msgspec.Struct, kw_only=True):
    """The platform and its workloads with ``workloads`` instances running."""

    workloads: int
    platform_pss_bytes: int  # the platform's daemons (processes named in the file), workloads excluded
    platform_rss_bytes: int
    platform_processes: int
    workloads_pss_bytes: int  # every process the runtime added for the workloads
    workloads_processes: int = 0
    cgroup_bytes: int | None = None  # memory.current summed over the platform's cgroups and units
    cpu_percent: float = 0.0  # of one CPU, the platform's daemons over the window
    read_bytes: int = 0  # the daemons' disk reads over the window (/proc/PID/io)
    write_bytes: int = 0
    window_s: float = 0.0

    @property
    def total_bytes(self) -> int:
        return self.platform_pss_bytes + self.workloads_pss_bytes


class Overhead(msgspec.Struct, kw_only=True):
    """Standing cost of the platform at idle and with 1…N workloads; the memory slope per added workload."""

    levels: list[DensityLevel]
    data_bytes: int | None = None  # disk used by the platform's data directories
    data_what: str = ""
    per_workload_bytes: float | None = None  # least-squares slope of (platform + workloads) PSS over the count
    platform_per_workload_bytes: float | None = None  # slope of the platform's own PSS


class Benchmark(msgspec.Struct, kw_only=True):
    """A benchmark command's score, parsed from its output, per run against the variant."""

    score: Figure | None
    unit: str = ""
    higher_is_better: bool = True
    command: str = ""


class VariantResult(msgspec.Struct, kw_only=True):
    name: str
    runtime: str
    node: str = ""
    startup_ms: Figure | None = None
    footprint: Footprint | None = None
    size: Size | None = None
    load: list[LoadFigures] = []
    throttled_samples: int = 0  # cold starts taken while the host was throttled / under-voltage
    max_temp_c: float | None = None
    error: str = ""  # why this variant produced nothing, if it did not
    skipped: str = ""  # the pre-flight's reason and fix when this variant did not run here (agent/preflight.py)
    failed_starts: list[str] = []  # every failed start, "PHASE: reason" (warm-up included)
    redeploy: Redeploy | None = None
    interservice: InterServiceRtt | None = None
    overhead: Overhead | None = None
    benchmark: Benchmark | None = None


class ServiceBoot(msgspec.Struct, kw_only=True):
    name: str
    ready_ms: Figure | None  # stack start issued → this service's first probe success


class StackResult(msgspec.Struct, kw_only=True):
    """Stack boot: every service started together; time until the last one answers, and each one's own."""

    name: str
    kind: str  # "services" (variants of the experiment) or "command" (compose, kubectl…)
    total_ms: Figure | None  # start issued → every probe passed
    services: list[ServiceBoot] = []
    node: str = ""
    error: str = ""


class ComparisonResult(msgspec.Struct, kw_only=True):
    figure: str  # "startup_ms", "latency_ms", "redeploy_ms", "rtt_ms", "benchmark", "stack_ms"
    reference: str
    candidate: str
    ratio: float | None  # None when the reference median is 0
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    p_value: float
    significant: bool
    change_pct: float | None  # -96.5 = 96.5 % lower than the reference
    sentence: str


def compare_figures(figure: str, what: str, unit: str, ref_name: str, cand_name: str, rf: Figure, cf: Figure,
                    lower_is_better: bool = True, words: tuple[str, str] = ("faster", "slower")) -> ComparisonResult:
    """stats.compare of two figures' raw samples, with the field report's sentence (the engine and the report
    rebuilt from InfluxDB both use it, so their sentences are the same)."""
    c = stats.compare(rf.samples, cf.samples, ref_name=ref_name, cand_name=cand_name,
                      lower_is_better=lower_is_better)
    sentence = stats.describe(c, what, unit, stats.summarize(rf.samples), stats.summarize(cf.samples), *words)
    return ComparisonResult(figure=figure, reference=ref_name, candidate=cand_name, ratio=c.ratio,
                            ratio_ci_low=c.ratio_ci_low, ratio_ci_high=c.ratio_ci_high, p_value=c.p_value,
                            significant=c.significant, change_pct=c.change_pct, sentence=sentence)


class _Median(msgspec.Struct):
    median: float


def compare_distributions(figure: str, what: str, unit: str, ref_name: str, cand_name: str, rh: Histogram,
                          ch: Histogram, lower_is_better: bool = True,
                          words: tuple[str, str] = ("faster", "slower"), alpha: float = 0.01,
                          threshold: float = 0.05) -> ComparisonResult:
    """:func:`compare_figures` for two latency histograms (where the raw values did not travel): Mann–Whitney
    on the buckets, the bootstrap CI of the ratio of medians read from them (≤ 1 % from the raw values)."""
    _, p = stats.mann_whitney_counts(list(rh.items()), list(ch.items()))
    c = stats.compare_sorted(rh, ch, p, ref_name=ref_name, cand_name=cand_name, lower_is_better=lower_is_better,
                             alpha=alpha, threshold=threshold, resolution=max(rh.alpha, ch.alpha))
    sentence = stats.describe(c, what, unit, _Median(c.reference_median), _Median(c.candidate_median), *words)
    return ComparisonResult(figure=figure, reference=ref_name, candidate=cand_name, ratio=c.ratio,
                            ratio_ci_low=c.ratio_ci_low, ratio_ci_high=c.ratio_ci_high, p_value=c.p_value,
                            significant=c.significant, change_pct=c.change_pct, sentence=sentence)


class ExperimentResult(msgspec.Struct, kw_only=True):
    experiment: str
    run: str
    file: str
    file_sha256: str
    started: str  # ISO 8601 UTC
    finished: str
    machine: dict[str, object]
    methodology: dict[str, object]
    variants: list[VariantResult]
    comparisons: list[ComparisonResult] = []
    warnings: list[str] = []
    status: str = "finished"  # finished | failed | cancelled
    stacks: list[StackResult] = []
    cooldown_waits_s: list[float] = []  # time spent waiting for the cool-down before each sample that waited


def encode_json(result: ExperimentResult) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=2)


def decode_json(data: bytes) -> ExperimentResult:
    return msgspec.json.decode(data, type=ExperimentResult)


META_LIMIT = 60_000  # characters of JSON per field of the run's own point (machine, methodology, warnings)
_FIGURE_FIELDS = ("n", "median", "mean", "stdev", "cv", "min", "max", "p90", "p95", "p99", "ci_low", "ci_high")


def summary_samples(result: ExperimentResult, ts: int | None = None) -> list[Sample]:
    """The run's summaries as ``run_summary`` samples (one per variant and figure) for the outbox.

    Raw cold starts travel live as ``run_sample`` while they are measured; these
    carry the statistics, footprint, size and load figures, so the fleet report
    reads the same numbers the local table printed.
    """
    ts = ts or time.time_ns()
    out: list[Sample] = []
    for i, v in enumerate(result.variants):
        base = {"run": result.run, "experiment": result.experiment, "variant": v.name, "runtime": v.runtime}

        def add(figure: str, fields: dict[str, FieldValue | None], base: dict[str, str] = base,
                **tags: str) -> None:
            # Distinct timestamps per variant and figure: one point each, none overwriting another.
            out.append(Sample(ts=ts + len(out), name="run_summary", tags={**base, "figure": figure, **tags},
                              fields={k: val for k, val in fields.items() if val is not None}))

        if v.startup_ms is not None:
            f = v.startup_ms
            add("startup_ms", {**{k: float(getattr(f, k)) for k in _FIGURE_FIELDS if k != "n"}, "n": f.n,
                               "failures": f.failures, "outliers": len(f.outliers), "order": i})
        if v.error:  # also a later phase's failure beside good cold starts: the fleet report shows it too
            add("error", {"message": v.error[:500], "order": i})
        if v.skipped:
            add("skipped", {"message": v.skipped[:500], "order": i})
        if v.footprint is not None:
            fp = v.footprint
            add("footprint", {"pss_bytes": fp.pss_bytes, "uss_bytes": fp.uss_bytes, "rss_bytes": fp.rss_bytes,
                              "processes": fp.processes, "cgroup_bytes": fp.cgroup_bytes,
                              "cgroup_anon_bytes": fp.cgroup_anon_bytes, "cgroup_file_bytes": fp.cgroup_file_bytes,
                              "peak_bytes": fp.peak_bytes, "peak_source": fp.peak_source or None,
                              "settle_s": float(fp.settle_s)})
        if v.size is not None:
            add("size", {"bytes": v.size.bytes, "what": v.size.what})
        for lf in v.load:
            fields: dict[str, FieldValue | None] = {"requests": lf.requests, "succeeded": lf.ok, "errors": lf.errors,
                                             "achieved_rps": float(lf.achieved_rps),
                                             "target_rps": float(lf.target_rps), "concurrency": lf.concurrency,
                                             "p999_ms": float(lf.p999_ms),
                                             "generator_floor_ms": float(lf.generator_floor_ms),
                                             "duration_s": float(lf.duration_s), "url": lf.url or None,
                                             "histogram": lf.histogram or None}
            if lf.latency_ms is not None:
                fields.update({k: float(getattr(lf.latency_ms, k)) for k in _FIGURE_FIELDS if k != "n"})
                flagged = msgspec.json.encode(lf.latency_ms.outliers).decode()
                fields["outliers_at"] = flagged if len(flagged) <= META_LIMIT else None
            add("latency_ms", fields, mode=lf.mode)
        _phase_summaries(v, add)
    for st in result.stacks:
        base = {"run": result.run, "experiment": result.experiment, "variant": st.name, "runtime": "stack"}
        if st.total_ms is not None:
            out.append(Sample(ts=ts + len(out), name="run_summary", tags={**base, "figure": "stack_ms"},
                              fields=_figure_fields(st.total_ms)))
        for svc in st.services:
            if svc.ready_ms is not None:
                out.append(Sample(ts=ts + len(out), name="run_summary",
                                  tags={**base, "figure": "stack_service_ms", "service": svc.name},
                                  fields=_figure_fields(svc.ready_ms)))
        if st.error:
            out.append(Sample(ts=ts + len(out), name="run_summary", tags={**base, "figure": "error"},
                              fields={"message": st.error[:500]}))
    run_tags = {"run": result.run, "experiment": result.experiment}
    for i, c in enumerate(result.comparisons):  # the engine's own: latency and RTT cannot be recomputed from the store
        cf: dict[str, FieldValue | None] = {
            "compared": c.figure, "reference": c.reference, "candidate": c.candidate, "order": i, "ratio": c.ratio,
            "ratio_ci_low": c.ratio_ci_low, "ratio_ci_high": c.ratio_ci_high, "p_value": float(c.p_value),
            "significant": c.significant, "change_pct": c.change_pct, "sentence": c.sentence[:2000]}
        out.append(Sample(ts=ts + len(out), name="run_summary",
                          tags={**run_tags, "figure": "comparison"},  # no new tag keys: names are fields
                          fields={k: val for k, val in cf.items() if val is not None}))
    meta: dict[str, FieldValue] = {"file": result.file, "file_sha256": result.file_sha256,
                                   "started": result.started, "finished": result.finished}
    for key, value in (("machine", result.machine), ("methodology", result.methodology),
                       ("warnings", result.warnings)):
        text = msgspec.json.encode(value).decode()
        if len(text) <= META_LIMIT:  # an InfluxDB string field holds 64 KiB
            meta[key] = text
    out.append(Sample(ts=ts + len(out), name="run_summary", tags={**run_tags, "figure": "run"}, fields=meta))
    for w in result.cooldown_waits_s:  # one point per wait: the report sums them as the local one does
        out.append(Sample(ts=ts + len(out), name="run_summary",
                          tags={"run": result.run, "experiment": result.experiment, "figure": "cooldown"},
                          fields={"waited_s": float(w)}))
    return out


def _figure_fields(f: Figure) -> dict[str, FieldValue]:
    return {**{k: float(getattr(f, k)) for k in _FIGURE_FIELDS if k != "n"}, "n": f.n, "failures": f.failures}


def _phase_summaries(v: VariantResult, add: Any) -> None:
    """run_summary points of the redeploy, interservice, overhead and benchmark phases of one variant."""
    if v.redeploy is not None:
        rd = v.redeploy
        fields: dict[str, FieldValue | None] = {"strategy": rd.strategy, "errors": sum(rd.errors),
                                                "requests": sum(rd.requests), "swaps": len(rd.errors),
                                                "client_interval_ms": rd.client_interval_ms}
        if rd.time_to_v2_ms is not None:
            fields.update(_figure_fields(rd.time_to_v2_ms))
        if rd.gap_ms is not None:
            fields.update(gap_median_ms=rd.gap_ms.median, gap_max_ms=rd.gap_ms.max)
        add("redeploy_ms", fields)
    if v.interservice is not None:
        it = v.interservice
        add("rtt_ms", {**(_figure_fields(it.rtt_ms) if it.rtt_ms else {}), "pairs": it.pairs, "peer": it.peer})
    if v.overhead is not None:
        oh = v.overhead
        for lvl in oh.levels:
            add("overhead", {"workloads": lvl.workloads, "platform_pss_bytes": lvl.platform_pss_bytes,
                             "platform_rss_bytes": lvl.platform_rss_bytes,
                             "platform_processes": lvl.platform_processes,
                             "workloads_pss_bytes": lvl.workloads_pss_bytes,
                             "workloads_processes": lvl.workloads_processes, "cgroup_bytes": lvl.cgroup_bytes,
                             "cpu_percent": lvl.cpu_percent, "read_bytes": lvl.read_bytes,
                             "write_bytes": lvl.write_bytes, "window_s": float(lvl.window_s)},
                level=str(lvl.workloads))
        # data_what is always there: a point needs one field even when nothing else was measured
        add("density", {"per_workload_bytes": oh.per_workload_bytes,
                        "platform_per_workload_bytes": oh.platform_per_workload_bytes,
                        "data_bytes": oh.data_bytes, "data_what": oh.data_what[:500]})
    if v.benchmark is not None:
        b = v.benchmark
        add("benchmark", {**(_figure_fields(b.score) if b.score else {}), "unit": b.unit or None,
                          "higher_is_better": b.higher_is_better, "command": b.command[:500]})
