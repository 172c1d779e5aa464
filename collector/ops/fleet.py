"""Fleet views and control: ``runlab nodes``, ``runs``, ``watch`` and ``cancel``.

``nodes`` reads the nodes' retained statuses from the broker (what they said last, online or not);
``runs`` reads the ``run_event`` history from InfluxDB; ``watch`` follows the live events and cold starts;
``cancel`` sends a signed CancelOrder to every node that has the run.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from collector.ops.config import OperatorConfig, signing_key_path
from collector.ops.influxql import InfluxQL
from collector.ops.link import Link, OpsError
from collector.ops.push import retained_statuses
from runlab import control, topics, wire
from runlab.report.store import iso, literal

_LIVE = ("queued", "accepted", "running", "phase", "progress")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "—"


# -- nodes -------------------------------------------------------------------------------------
def cmd_nodes(cfg: OperatorConfig, fmt: str) -> int:
    with Link(cfg) as link:
        statuses = sorted(retained_statuses(link), key=lambda s: s.node)
    if fmt == "json":
        print(json.dumps([msgspec.to_builtins(s) for s in statuses], indent=2))
        return 0
    if not statuses:
        print(f"no node has published a status on {cfg.mqtt.url} yet")
        return 0
    rows = [[s.node, "online" if s.online else "offline", s.version or "—", s.arch or "—",
             (s.cpu_model or "—")[:32], str(s.cores or "—"), _gib(s.memory_bytes),
             ", ".join(sorted(s.runtimes)) or "—", ", ".join(s.groups) or "—", s.run or "—"] for s in statuses]
    print(_table(["node", "state", "version", "arch", "cpu", "cores", "memory", "runtimes", "groups", "run"], rows))
    return 0


# -- runs --------------------------------------------------------------------------------------
def run_rows(ql: InfluxQL, limit: int, run: str | None = None) -> list[dict[str, Any]]:
    """Latest lifecycle status per (run, node), newest runs first."""
    cond = f'"run" = {literal(run)}' if run else "\"status\" != 'progress' AND \"status\" != 'phase'"
    rows = ql.query(f'SELECT * FROM "run_event" WHERE {cond} ORDER BY time DESC LIMIT 20000')
    per: dict[tuple[str, str], dict[str, Any]] = {}
    for r in reversed(rows):  # oldest first
        key = (str(r.get("run")), str(r.get("node")))
        st = str(r.get("status"))
        e = per.setdefault(key, {"run": key[0], "node": key[1], "experiment": "", "status": "", "reason": "",
                                 "started": None, "finished": None, "last": 0, "queue": 0})
        if r.get("experiment") not in (None, "", "-"):
            e["experiment"] = r["experiment"]
        t = int(r.get("time") or 0)
        e["last"] = t
        if st in ("phase", "progress"):
            continue
        if e["status"] in control.FINAL:  # a late duplicate never reopens an ended run
            continue
        e["status"] = st
        if st in ("accepted", "running") and e["started"] is None:
            e["started"] = t
        if st in control.FINAL:
            e["finished"] = t
        if r.get("reason"):
            e["reason"] = r["reason"]
        e["queue"] = r.get("queue") or 0
    runs = sorted({k[0] for k in per}, key=lambda rid: max(e["last"] for k, e in per.items() if k[0] == rid),
                  reverse=True)[:limit]
    return [per[k] for rid in runs for k in sorted(per) if k[0] == rid]


def cmd_runs(cfg: OperatorConfig, fmt: str, limit: int) -> int:
    ql = InfluxQL(cfg.influx, cfg.source)
    rows = run_rows(ql, limit)
    if fmt == "json":
        print(json.dumps([{**{k: v for k, v in r.items() if k != "last"}, "started": iso(r["started"]) or None,
                           "finished": iso(r["finished"]) or None} for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no run_event rows in {ql.where} (no run was pushed yet, or the collector writes elsewhere)")
        return 0

    def short(ns: int | None) -> str:
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") if ns else "—"

    table = [[r["run"], r["node"], r["experiment"] or "—",
              r["status"] + (f" (place {r['queue']})" if r["status"] == "queued" and r["queue"] else ""),
              short(r["started"]), short(r["finished"]), (r["reason"] or "")[:60]] for r in rows]
    print(_table(["run", "node", "experiment", "status", "started (UTC)", "finished (UTC)", "reason"], table))
    return 0


# -- watch -------------------------------------------------------------------------------------
def _event_line(ev: control.RunEvent) -> str:
    extra = {"phase": f" {ev.phase} ({ev.n})", "progress": f" {ev.phase} {ev.i}/{ev.n}",
             "queued": f" (place {ev.queue} in the queue)" if ev.queue else ""}.get(ev.status, "")
    reason = f": {ev.reason}" if ev.reason else ""
    return f"{ev.node:<16} {ev.run}  {ev.status}{extra}{reason}"


def _sample_lines(node: str, batch: wire.SampleBatch, run: str | None) -> list[str]:
    out = []
    for s in batch.samples:
        if s.name != "run_sample" or (run and s.tags.get("run") != run):
            continue
        fig = s.tags.get("figure")
        if fig == "startup_ms":
            what = (f"{float(s.fields['value']):.1f} ms" if s.fields.get("ok") is not False and "value" in s.fields
                    else f"failed: {s.fields.get('error', '')}")
            warm = " (warm-up)" if s.tags.get("warmup") == "true" else ""
            out.append(f"{node:<16} {s.tags.get('run')}  {s.tags.get('variant')}: cold start {what}{warm}")
        elif fig == "footprint" and "pss_bytes" in s.fields:
            out.append(f"{node:<16} {s.tags.get('run')}  {s.tags.get('variant')}: idle PSS "
                       f"{int(s.fields['pss_bytes']) / 2**20:.1f} MiB")
        elif fig == "load":
            p50 = s.fields.get("p50_ms")
            out.append(f"{node:<16} {s.tags.get('run')}  {s.tags.get('variant')}: load {s.tags.get('mode')} "
                       f"{float(s.fields.get('achieved_rps', 0)):.0f} rps"
                       + (f", p50 {float(p50):.2f} ms" if isinstance(p50, int | float) else ""))
    return out


def _watch_history(cfg: OperatorConfig, run: str, seen: dict[str, str], told: set[tuple[str, str]]) -> None:
    """Fold the store's lifecycle rows of ``run`` into ``seen``, printing each status once."""
    try:
        history = run_rows(InfluxQL(cfg.influx, cfg.source), 1000, run)
    except OpsError as e:
        if not told:
            told.add(("", ""))
            print(f"(no history from the store: {e})", file=sys.stderr)
        return
    for r in history:
        status = r["status"]
        if not status or seen.get(r["node"]) in control.FINAL:
            continue
        seen[r["node"]] = status if status in control.FINAL else seen.get(r["node"], "live")
        if (r["node"], status) not in told:
            told.add((r["node"], status))
            reason = f": {r['reason']}" if r["reason"] else ""
            print(f"{r['node']:<16} {run}  {status}{reason} (from the store)", flush=True)


def cmd_watch(cfg: OperatorConfig, run: str | None, timeout_s: float = 0.0) -> int:
    """Print events and key samples until Ctrl-C or, with a run, until every node that has it ended it."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with Link(cfg) as link:
        link.subscribe(topics.all_nodes("events"), topics.all_nodes("samples"))
        print(f"watching {'run ' + run if run else 'every run'} on {cfg.mqtt.url} (Ctrl-C to stop)", flush=True)
        # Events are not retained: what happened before we subscribed comes from the store, so a run that
        # already ended (or a cancel that beat us) is told at once. Read again every few seconds until the
        # run ends: an event published just before the subscription may reach the store only later.
        told: set[tuple[str, str]] = set()
        next_read = 0.0
        try:
            while True:
                if run and seen and all(s in control.FINAL for s in seen.values()):
                    return 0 if all(s == "finished" for s in seen.values()) else 1
                if deadline is not None and time.monotonic() > deadline:
                    return 1
                if run and time.monotonic() >= next_read:
                    next_read = time.monotonic() + 3.0
                    _watch_history(cfg, run, seen, told)
                    continue
                try:
                    topic, payload, _ = link.messages.get(timeout=0.5)
                except queue.Empty:
                    continue
                parsed = topics.parse_node_topic(topic)
                if parsed is None or not payload:
                    continue
                node, kind = parsed
                try:
                    if kind == "events":
                        ev = control.decode_event(payload)
                        if run and ev.run != run:
                            continue
                        if ev.status not in ("phase", "progress") or ev.node not in seen:
                            seen[ev.node] = ev.status if ev.status in control.FINAL else "live"
                        print(_event_line(ev), flush=True)
                    elif kind == "samples":
                        for line in _sample_lines(node, wire.decode_batch(payload), run):
                            print(line, flush=True)
                except (control.ControlError, wire.DecodeError):
                    continue
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0


# -- cancel ------------------------------------------------------------------------------------
def cancel_targets(cfg: OperatorConfig, link: Link, run: str) -> list[str]:
    """Nodes that have ``run`` and have not ended it: from run_event history and the nodes' statuses."""
    nodes = {s.node for s in retained_statuses(link) if s.run == run}
    try:
        rows = run_rows(InfluxQL(cfg.influx, cfg.source), 1000, run)
    except OpsError as e:
        if not nodes:
            raise OpsError(f"cannot find which nodes run {run}: {e}; name them with --node") from None
        rows = []
    nodes |= {r["node"] for r in rows if r["status"] not in control.FINAL}
    return sorted(nodes)


def cmd_cancel(cfg: OperatorConfig, run: str, nodes: Sequence[str]) -> int:
    if not topics.valid_name(run):
        raise OpsError(f"{run!r} is not a run id (e.g. 20261126T182757-3fa9c1)")
    key = control.load_signing_key(signing_key_path(cfg))
    with Link(cfg) as link:
        targets = list(nodes) or cancel_targets(cfg, link, run)
        if not targets:
            raise OpsError(f"no node is running or queueing run {run} (see `runlab runs`); name one with --node")
        for node in targets:
            order = control.cancel_order(run, node)
            link.publish(topics.control(node), control.sign(order, key))
            # the retained order on the node's topic must not linger (the agent's ledger refuses it anyway)
            link.publish(topics.node_experiment(node, run), b"", retain=True)
    print(f"cancel of run {run} sent to {', '.join(targets)}; follow it: runlab watch {run}")
    return 0
