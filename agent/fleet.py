"""Fleet control on the agent: signed experiment orders in, one run at a time, lifecycle events out.

An order is acted on only when its signature verifies against ``trust.keys``,
it names the topic it arrived on, it has not expired, its run id was never
seen here (the ``Ledger``, a fsynced SQLite table beside the outbox, survives
restarts), its YAML validates and the local policy allows what it would
execute and the agent's privileges let it (agent/privileges.py). Anything else
is ``rejected`` with the reason, at most once per order and agent process (a
retained order comes back on every reconnect). A pushed file is stored as data
(``store_pushed``); a run restored from the ledger after a restart is checked
again, expiry included. A cancel order acts only when it names this node and
its control topic and has not expired.

Accepted runs wait in a queue and run one at a time through the same engine as
``runlab-agent run``; its samples and every event go through the durable
outbox. The queue is in the ledger too: runs still waiting when the agent
stops run after it starts again, and a run the agent died in is reported
``failed``. PyNaCl and the engine are imported on the first order and the
first run, not at start: the idle agent stays small.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.aio import within
from agent.config import PUSHED_FILE, AgentConfig
from runlab import control, topics
from runlab.config import ConfigError, parse_yaml_text
from runlab.control import CancelOrder, ControlError, ExperimentOrder, RunEvent
from runlab.wire import Sample

if TYPE_CHECKING:
    from nacl.signing import VerifyKey

    from runlab.experiment import Experiment

log = logging.getLogger("runlab.agent.fleet")

PROGRESS_INTERVAL = 0.25  # at most 4 progress events per second
SHUTDOWN_SECONDS = 4.0  # a run interrupted by SIGTERM gets this long to stop its workloads


class Host(Protocol):
    """What the fleet needs from the agent process (agent/service.py)."""

    def emit(self, sample: Sample) -> None: ...
    def publish_event(self, ev: RunEvent) -> None: ...
    def set_run(self, run: str) -> None: ...


class Refusal(Exception):
    """An order that must not run; str(e) is the reason published with ``rejected``."""

    def __init__(self, run: str, reason: str, experiment: str = "", record: bool = False) -> None:
        super().__init__(reason)
        self.run, self.experiment, self.record = run, experiment, record


def store_pushed(here: Path, text: str) -> Path:
    """Write a pushed file as data: the agent's own name, mode 0600 (never executable), never through a link."""
    here.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = here / PUSHED_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a run retried after a crash writes it afresh
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """Every run id this node has acted on, with its last status; survives restarts and power cuts.

    Answers come from memory (the table is read once, at start); every change is written by a thread of its
    own (``runlab-ledger``, started with the first change), in order, each commit fsynced. The fleet runs on
    the thread that times workloads, and an order or a cancel may arrive mid-measurement: an fsync there took
    as long as the disk made it (100 ms in tests/test_delivery_agent.py). What must be on disk before the
    agent acts on it is awaited with ``durable()``, which waits without blocking the loop: a run is
    ``running`` on disk before its first workload starts (so a power cut mid-run reports it failed, never
    runs it again), and its end is on disk before the next run starts.
    """

    ACTIVE = ("accepted", "running")

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / "runs.sqlite"
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # every change fsynced: a replay must never run twice
            self._db.execute("CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, status TEXT NOT NULL, "
                             "topic TEXT NOT NULL, experiment TEXT NOT NULL, payload BLOB, "
                             "updated_ns INTEGER NOT NULL)")
            self._runs = {str(r[0]): (str(r[1]), int(r[2]))
                          for r in self._db.execute("SELECT run, status, updated_ns FROM runs")}
        except sqlite3.Error as e:
            # Never moved aside and started afresh (as the outbox is): that would let old orders run again.
            raise OSError(errno.EIO, f"cannot open the run ledger ({e}); move it away only if no retained "
                                     f"order may run again", str(self.path)) from None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._last: concurrent.futures.Future[None] | None = None
        self.failed: str | None = None  # the first write that failed (disk full, I/O error), for the run's reason

    def get(self, run: str) -> tuple[str, int] | None:
        return self._runs.get(run)

    def add(self, run: str, status: str, topic: str, experiment: str, payload: bytes | None = None) -> None:
        ns = time.time_ns()
        self._runs[run] = (status, ns)
        self._write(run, "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                    (run, status, topic, experiment, payload, ns))

    def set(self, run: str, status: str) -> None:
        ns = time.time_ns()
        if run in self._runs:
            self._runs[run] = (status, ns)
        keep = status in self.ACTIVE  # a finished run's order is not needed any more
        self._write(run, f"UPDATE runs SET status = ?, updated_ns = ?{'' if keep else ', payload = NULL'} "
                         "WHERE run = ?", (status, ns, run))

    def _write(self, run: str, sql: str, args: tuple[Any, ...]) -> None:
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runlab-ledger")
        self._last = self._writer.submit(self._execute, run, sql, args)

    def _execute(self, run: str, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as e:
            if self.failed is None:
                self.failed = f"{self.path}: {e}"
            log.error("run ledger %s: could not record run %s: %s", self.path, run, e)
            raise

    async def durable(self) -> None:
        """Return once every change made so far is on disk (OSError if one could not be written)."""
        last = self._last
        if last is not None:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.wrap_future(last)
        if self.failed is not None:
            raise OSError(errno.EIO, f"the run ledger cannot be written: {self.failed}")

    def active(self) -> list[tuple[str, str, str, str, bytes]]:
        """(run, status, topic, experiment, payload) of runs accepted or running, oldest first (at start)."""
        if self._last is not None:
            self._last.exception()  # what was queued is in the table first
        rows = self._db.execute("SELECT run, status, topic, experiment, payload FROM runs WHERE status IN "
                                "('accepted', 'running') ORDER BY updated_ns").fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4] or b"")) for r in rows]

    def close(self) -> None:
        """Write what is queued, then close."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self._db.close()


@dataclass
class Item:
    """One accepted run."""

    order: ExperimentOrder
    exp: Experiment
    topic: str
    here: str
    task: asyncio.Task[Any] | None = None
    cancelled: bool = False


class EventProgress:
    """The engine's Progress as ``phase`` and ``progress`` events.

    Progress events go out at most every PROGRESS_INTERVAL; one held back carries the latest count and is
    sent when its time comes, or at once when the phase ends, so a phase's last event always says n of n.
    """

    def __init__(self, fleet: Fleet, run: str, experiment: str) -> None:
        self.fleet, self.run, self.experiment = fleet, run, experiment
        self.name, self.i, self.n = "", 0, 0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def phase(self, name: str, total: int) -> None:
        self.close()
        self.name, self.i, self.n = name, 0, total
        self.fleet.event(self.run, "phase", self.experiment, phase=name, n=total)

    def advance(self, note: str = "") -> None:
        self.i += 1
        if self._timer is not None:
            return  # the pending one will carry the latest count
        wait = self._last + PROGRESS_INTERVAL - time.monotonic()
        if wait <= 0:
            self._send()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._send)

    def message(self, text: str) -> None:
        log.info("run %s: %s", self.run, text)

    def _send(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        self.fleet.event(self.run, "progress", self.experiment, phase=self.name, i=self.i, n=self.n)

    def close(self, flush: bool = True) -> None:
        """End of a phase or of the run: the count held back by the rate limit goes out now (bars reach n/n)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if flush:
                self._send()


class Fleet:
    """Orders from the experiments and control topics; the run queue and its single worker."""

    def __init__(self, cfg: AgentConfig, host: Host) -> None:
        self.cfg, self.host, self.node = cfg, host, cfg.node
        self.ledger = Ledger(cfg.spool.path)
        self.queue: list[Item] = []
        self.current: Item | None = None
        self._trusted: dict[str, VerifyKey] | None = None
        self._refused: set[bytes] = set()  # digests of orders already rejected by this process
        self._wake = asyncio.Event()
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[None]] = set()

    # -- topics ---------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        """Its node's experiments and control, and the experiments of its groups and of ``all``."""
        groups = dict.fromkeys([*self.cfg.groups, "all"])
        return [topics.node_experiment(self.node, "+"), *(topics.group_experiment(g, "+") for g in groups),
                topics.control(self.node)]

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from a subscription (called by the link loop, in its task)."""
        if topic == topics.control(self.node):
            self._on_control(payload)
        elif "/experiments/" in topic:
            self._on_experiment(topic, payload)

    def event(self, run: str, status: str, experiment: str = "", **fields: Any) -> None:
        ev = RunEvent(node=self.node, run=run, experiment=experiment, status=status,  # type: ignore[arg-type]
                      ts=time.time_ns(), **fields)
        self.host.publish_event(ev)

    # -- orders ---------------------------------------------------------------------------------
    def _trust(self) -> dict[str, VerifyKey]:
        if self._trusted is None:
            self._trusted = control.load_trusted(self.cfg.trust.keys)  # imports PyNaCl: first order only
        return self._trusted

    def _on_experiment(self, topic: str, payload: bytes) -> None:
        label = topic.rsplit("/", 1)[-1]
        label = label if topics.valid_name(label) else "-"
        if not payload:
            self._withdraw(label)
            return
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).digest()
        if digest in self._refused:
            log.debug("order on %s already rejected by this agent process; ignored", topic)
            return
        try:
            item = self._admit(topic, payload)
        except Refusal as r:
            self._refused.add(digest)
            if r.record:
                self.ledger.add(r.run, "rejected", topic, r.experiment)
            log.warning("rejected run %s from %s: %s", r.run, topic, r)
            self.event(r.run, "rejected", r.experiment, reason=str(r))
            return
        self.ledger.add(item.order.run, "accepted", topic, item.exp.name, payload)
        self._enqueue(item, announce=True)

    def _verify(self, label: str, payload: bytes) -> control.Order:
        try:
            return control.verify(payload, self._trust())
        except ControlError as e:
            raise Refusal(label, str(e)) from None

    def _admit(self, topic: str, payload: bytes, restoring: bool = False) -> Item:
        """The order as a runnable item, or Refusal with the reason."""
        label = topic.rsplit("/", 1)[-1] if topics.valid_name(topic.rsplit("/", 1)[-1]) else "-"
        order = self._verify(label, payload)
        if not isinstance(order, ExperimentOrder):
            raise Refusal(label, "a cancel order on an experiments topic (expected an experiment order)")
        run = order.run
        if order.target != topic:
            # Not recorded: the genuine order may still arrive on the topic it was signed for.
            raise Refusal(run, f"re-targeted: signed for {order.target}, arrived on {topic}")
        if not restoring:
            seen = self.ledger.get(run)
            if seen is not None:
                raise Refusal(run, f"replay: run {run} was already {seen[0]} here ({_iso(seen[1])})")
        if order.expires and time.time_ns() > order.expires:  # a run restored after a restart too
            raise Refusal(run, f"expired at {_iso(order.expires)} (issued {_iso(order.issued)})", record=True)
        # The schema and the policy load with the first order: an idle agent does not pay for them (PSS goal).
        from agent.policy import PolicyError, check
        from runlab.experiment import parse

        name = os.path.basename(order.file_name) or "experiment.yaml"
        try:
            exp = parse(parse_yaml_text(order.yaml, name), name)
        except ConfigError as e:
            raise Refusal(run, f"invalid experiment: {e}", record=True) from None
        from runlab.experiment import with_workloads, workloads_dir

        exp = with_workloads(exp, workloads_dir(self.cfg.experiments.workloads))  # before the policy sees paths
        here = self.cfg.experiments.here or str(Path(self.cfg.spool.path).resolve() / "runs" / run)
        pushed = None if self.cfg.experiments.here else os.path.join(os.path.abspath(here), PUSHED_FILE)
        try:
            check(exp, self.cfg.policy, os.path.abspath(here), pushed)
        except PolicyError as e:
            raise Refusal(run, f"policy: {e}", exp.name, record=True) from None
        from agent.privileges import problems  # what this agent's user cannot do: refused now, not halfway

        if missing := problems(exp, os.path.abspath(here)):
            raise Refusal(run, "privileges: " + "; ".join(missing), exp.name, record=True)
        if not restoring and len(self.queue) >= self.cfg.experiments.queue_max:
            raise Refusal(run, f"queue full: {len(self.queue)} runs waiting (experiments.queue_max)", exp.name,
                          record=True)
        return Item(order=order, exp=exp, topic=topic, here=os.path.abspath(here))

    def _enqueue(self, item: Item, announce: bool) -> None:
        self.queue.append(item)
        run, name = item.order.run, item.exp.name
        if announce:
            log.info("accepted run %s (%s from %s)", run, name, item.topic)
            self.event(run, "accepted", name)
        if not announce or self.current is not None or len(self.queue) > 1:
            self.event(run, "queued", name, queue=len(self.queue))
        self._wake.set()

    def _unqueue(self, item: Item) -> None:
        """Take a waiting run out of the queue; the runs behind it move up and say their new place."""
        i = self.queue.index(item)
        del self.queue[i]
        for place, later in enumerate(self.queue[i:], start=i + 1):
            self.event(later.order.run, "queued", later.exp.name, queue=place)

    def _withdraw(self, run: str) -> None:
        item = next((i for i in self.queue if i.order.run == run), None)
        if item is None:
            log.debug("empty retained message for run %s: nothing queued under that id, ignored", run)
            return
        self._unqueue(item)
        self.ledger.set(run, "withdrawn")
        log.info("run %s withdrawn before it started", run)
        self.event(run, "withdrawn", item.exp.name)

    def _on_control(self, payload: bytes) -> None:
        try:
            order = control.verify(payload, self._trust())
        except ControlError as e:
            log.warning("ignored a control message: %s", e)
            return
        if not isinstance(order, CancelOrder):
            log.warning("ignored a control message: an experiment order on the control topic")
            return
        if order.node != self.node or order.target != topics.control(self.node):
            log.warning("ignored a cancel order for node %s, signed for %s (this is %s)", order.node, order.target,
                        self.node)
            return
        if time.time_ns() > order.expires:
            log.warning("ignored a cancel order for run %s: expired at %s", order.run, _iso(order.expires))
            return
        self.cancel(order.run)

    def cancel(self, run: str) -> None:
        cur = self.current
        if cur is not None and cur.order.run == run and cur.task is not None:
            log.info("cancelling run %s", run)
            cur.cancelled = True
            self._insist(cur.task)
            return
        item = next((i for i in self.queue if i.order.run == run), None)
        if item is not None:
            self._unqueue(item)
            self.ledger.set(run, "cancelled")
            log.info("run %s cancelled before it started", run)
            self.event(run, "cancelled", item.exp.name, reason="cancelled before it started")
            return
        log.info("cancel for run %s: not running or waiting here, nothing to do", run)

    # -- the worker -----------------------------------------------------------------------------
    def start(self) -> None:
        """Pick up what the last agent process left (waiting runs, a run it died in); start the worker."""
        for run, status, topic, experiment, payload in self.ledger.active():
            if status == "running":
                self.ledger.set(run, "failed")
                log.warning("run %s was running when the agent stopped last time: failed", run)
                self.event(run, "failed", experiment, reason="the agent stopped during the run")
                continue
            try:
                item = self._admit(topic, payload, restoring=True)
            except Refusal as r:
                self.ledger.set(run, "rejected")
                log.warning("rejected waiting run %s: %s", run, r)
                self.event(run, "rejected", experiment, reason=str(r))
                continue
            self._refused.add(hashlib.sha256(topic.encode() + b"\0" + payload).digest())
            log.info("run %s (%s) still waiting from before the restart", run, experiment)
            self._enqueue(item, announce=False)
        self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while not self._stopping:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            if self._stopping:  # waiting runs stay in the ledger for the next start
                return
            item = self.queue[0]
            self._unqueue(item)
            self.current = item
            try:
                await self._execute(item)
            except Exception:
                log.exception("run %s: unexpected error in the agent", item.order.run)
            finally:
                self.current = None
                self.host.set_run("")

    async def _execute(self, item: Item) -> None:
        from agent.engine import ExperimentError, Runner
        from runlab.results import summary_samples

        run, name, order = item.order.run, item.exp.name, item.order
        self.ledger.set(run, "running")
        try:
            await self.ledger.durable()  # on disk before the first workload starts (and the last run's end)
        except OSError as e:
            log.error("run %s not started: %s", run, e)
            self.event(run, "failed", name, reason=f"not started: {e}")
            return
        self.host.set_run(run)
        self.event(run, "running", name, queue=len(self.queue))
        # The order's file name is for display only; the agent names the stored file itself.
        file_name = os.path.basename(order.file_name) or PUSHED_FILE
        if self.cfg.experiments.here is None:  # {here} is a directory of its own holding the pushed file
            store_pushed(Path(item.here), order.yaml)
            file_name = PUSHED_FILE
        progress = EventProgress(self, run, name)
        runner = Runner(item.exp, file=os.path.join(item.here, file_name),
                        file_hash=hashlib.sha256(order.yaml.encode()).hexdigest(), run_id=run, node=self.node,
                        progress=progress, emit=self.host.emit)
        item.task = asyncio.create_task(runner.run())
        status, reason = "finished", ""
        try:
            await asyncio.wait([item.task])
        finally:
            progress.close()
            task = item.task
            if not task.done():  # the worker itself is being torn down
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if task.cancelled():
                status, reason = ("failed", "agent stopped") if self._stopping else ("cancelled", "cancelled")
            elif (exc := task.exception()) is not None:
                status = "failed"
                reason = str(exc) if isinstance(exc, ExperimentError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, ExperimentError):
                    log.error("run %s failed", run, exc_info=exc)
            else:
                result = task.result()
                for s in summary_samples(result):
                    self.host.emit(s)
                errors = [f"variant {v.name}: {v.error}" for v in result.variants if v.error]
                skipped = [f"skipped variant {v.name}: {v.skipped}" for v in result.variants if v.skipped]
                if errors:
                    status, reason = "failed", "; ".join(errors + skipped)[:500]
                elif skipped:  # the pre-flight's verdict: the run finished with the variants that can run here
                    status = "failed" if result.status == "skipped" else status  # … or none could
                    reason = "; ".join(skipped)[:500]
            if status != "finished":
                await self._cleanup(item)
            self.ledger.set(run, status)
            log.info("run %s %s%s", run, status, f": {reason}" if reason else "")
            self.event(run, status, name, reason=reason)

    async def _cleanup(self, item: Item) -> None:
        """Nothing of an interrupted run may be left running: live instances, containers named for it."""
        from agent.runtimes import make_runtime
        from agent.runtimes.base import LIVE, kill_all_now
        from runlab.experiment import ContainerVariant

        left = list(LIVE)
        if left:
            log.warning("run %s: killing %d workloads its stop left behind", item.order.run, len(left))
            await asyncio.to_thread(kill_all_now)
            for inst in left:
                proc = getattr(inst, "proc", None)
                if proc is not None:
                    with contextlib.suppress(Exception):
                        await within(proc.wait(), 5)
                LIVE.discard(inst)
        for v in item.exp.variants:
            if isinstance(v, ContainerVariant):  # a start cancelled between `run -d` and its bookkeeping
                with contextlib.suppress(Exception):
                    await make_runtime(v, item.exp, item.here).remove_leftovers()  # type: ignore[attr-defined]

    def _insist(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` until it ends: a cancellation can be lost inside asyncio.wait_for on Python 3.11."""
        async def repeat() -> None:
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)  # a stop in progress gets a second
        t = asyncio.create_task(repeat())
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Agent stop: the running run stops its workloads and is ``failed`` "agent stopped"; waiting runs stay."""
        self._stopping = True
        worker = self._worker
        if worker is None:
            return
        cur = self.current
        if cur is not None and cur.task is not None:
            self._insist(cur.task)
            await asyncio.wait([worker], timeout=timeout)  # the worker ends once the run has been recorded
        worker.cancel()
        await asyncio.wait([worker], timeout=1.0)
        if worker.done():
            self.ledger.close()
