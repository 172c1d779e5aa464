"""``runlab push``: validate, sign and publish an experiment; with ``--wait``, follow it live to the report.

One order per target topic (a node's or a group's), each naming its own topic in ``target`` so a copy
published elsewhere is refused. The order is retained (an offline agent gets it when it comes back) and
cleared again for node targets once the run ended there. Waiting subscribes to the events before
publishing, so no event is missed.
"""

from __future__ import annotations

import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector.ops.config import OperatorConfig, signing_key_path
from collector.ops.link import Link, OpsError
from runlab import control, topics, wire
from runlab.experiment import load_file

PLAIN_EVERY = 10.0  # seconds between progress lines when the output is not a terminal


@dataclass
class NodeRun:
    """What one node said about the run so far."""

    status: str = "waiting"
    phase: str = ""
    i: int = 0
    n: int = 0
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.status in control.FINAL


@dataclass
class Targets:
    nodes: list[str] = field(default_factory=list)
    group: str = ""

    def topics(self, run: str) -> list[str]:
        if self.group:
            return [topics.group_experiment(self.group, run)]
        return [topics.node_experiment(n, run) for n in self.nodes]

    def describe(self) -> str:
        return f"group {self.group}" if self.group else ", ".join(self.nodes)


def check_targets(nodes: list[str], group: str) -> Targets:
    for name in [*nodes, group] if group else nodes:
        if not topics.valid_name(name):
            raise OpsError(f"{name!r} is not a valid node or group name (letters, digits, '.', '_', '-')")
    return Targets(nodes=list(dict.fromkeys(nodes)), group=group)


def members(statuses: list[wire.NodeStatus], group: str) -> list[str]:
    """Online nodes whose status lists ``group`` (every node is in ``all``)."""
    return sorted(s.node for s in statuses if s.online and (group == "all" or group in s.groups))


def retained_statuses(link: Link) -> list[wire.NodeStatus]:
    """Every node's retained status (subscribe, then the barrier marks the end of the retained ones)."""
    link.subscribe(topics.all_nodes("status"))
    out: dict[str, wire.NodeStatus] = {}
    for topic, payload, _ in link.barrier():
        if topics.parse_node_topic(topic) and payload:
            try:
                st = wire.decode_status(payload)
            except wire.DecodeError:
                continue
            out[st.node] = st
    return list(out.values())


def publish_orders(link: Link, cfg: OperatorConfig, file: Path, text: str, targets: Targets, run: str,
                   expires_s: float) -> list[str]:
    """Sign and publish one retained order per target topic; the topics."""
    key = control.load_signing_key(signing_key_path(cfg))
    now = control.now_ns()
    out = []
    for topic in targets.topics(run):
        order = control.ExperimentOrder(run=run, target=topic, file_name=file.name, yaml=text, issued=now,
                                        expires=now + int(expires_s * 1e9) if expires_s else 0)
        link.publish(topic, control.sign(order, key), retain=True)
        out.append(topic)
    return out


def validate(file: str) -> tuple[Path, str, str]:
    """(path, its text, experiment name); ConfigError exactly as the agent reports it."""
    exp, _sha = load_file(file)
    return Path(file), Path(file).read_text(encoding="utf-8"), exp.name


class Waiter:
    """Follows a run's events until every expected node ended it (or the deadline)."""

    def __init__(self, link: Link, run: str, expected: list[str], open_ended: bool) -> None:
        self.link, self.run = link, run
        self.nodes: dict[str, NodeRun] = {n: NodeRun() for n in expected}
        self.open_ended = open_ended  # a group: any node sending an event for this run joins
        self.started = time.monotonic()

    def handle(self, topic: str, payload: bytes) -> str | None:
        """Apply one message; the node it changed, if any."""
        parsed = topics.parse_node_topic(topic)
        if parsed is None or parsed[1] != "events" or not payload:
            return None
        try:
            ev = control.decode_event(payload)
        except control.ControlError:
            return None
        if ev.run != self.run or ev.node != parsed[0]:
            return None
        if ev.node not in self.nodes:
            if not self.open_ended:
                return None
            self.nodes[ev.node] = NodeRun()
        nr = self.nodes[ev.node]
        if nr.done:
            return None
        if ev.status == "phase":
            nr.phase, nr.i, nr.n = ev.phase, 0, ev.n
        elif ev.status == "progress":
            nr.phase = ev.phase or nr.phase
            nr.i, nr.n = ev.i, ev.n or nr.n
        if ev.status not in ("phase", "progress"):
            nr.status = ev.status
        elif nr.status in ("waiting", "queued", "accepted"):
            nr.status = "running"
        if ev.reason:
            nr.reason = ev.reason
        return ev.node

    @property
    def done(self) -> bool:
        return bool(self.nodes) and all(n.done for n in self.nodes.values())

    def next_change(self, timeout: float) -> str | None:
        try:
            topic, payload, _ = self.link.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        return self.handle(topic, payload)


def follow(waiter: Waiter, deadline: float, live: bool) -> None:
    """Show per-node progress (rich bars on a terminal, one line per change otherwise) until done or deadline."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not (live and console.is_terminal):
        # a log, not a screen: a line per status or phase change, progress at most every PLAIN_EVERY seconds
        shown: dict[str, tuple[str, str, float]] = {}
        while not waiter.done and time.monotonic() < deadline:
            node = waiter.next_change(min(1.0, deadline - time.monotonic()))
            if node is None:
                continue
            nr = waiter.nodes[node]
            status, phase, at = shown.get(node, ("", "", 0.0))
            if (nr.status, nr.phase) == (status, phase) and time.monotonic() - at < PLAIN_EVERY:
                continue
            shown[node] = (nr.status, nr.phase, time.monotonic())
            step = f" {nr.phase} {nr.i}/{nr.n}" if nr.n and not nr.done else ""
            reason = f": {nr.reason}" if nr.reason and nr.done else ""
            console.print(f"  {node}: {nr.status}{step}{reason}", highlight=False)
        return
    with Progress(TextColumn("{task.fields[node]:<16}"), TextColumn("{task.description:<34}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def draw(node: str) -> None:
            nr = waiter.nodes[node]
            desc = f"{nr.status} {nr.phase}".strip() if not nr.done else nr.status + (
                f": {nr.reason[:40]}" if nr.reason else "")
            if node not in tasks:
                tasks[node] = bars.add_task(desc, node=node, total=nr.n or None)
            bars.update(tasks[node], description=desc, completed=nr.i, total=nr.n or None)

        for node in waiter.nodes:
            draw(node)
        while not waiter.done and time.monotonic() < deadline:
            node = waiter.next_change(min(1.0, deadline - time.monotonic()))
            if node is not None:
                draw(node)


def cmd_push(cfg: OperatorConfig, file: str, nodes: list[str], group: str, wait: bool, timeout_s: float,
             expires_s: float, live: bool = True) -> int:
    """Push; with ``wait``: follow, print the report, clear node orders. Exit status as documented in --help."""
    path, text, experiment = validate(file)  # ConfigError: the agent's own one-line message
    targets = check_targets(nodes, group)
    signing_key_path(cfg)  # fail before connecting when there is no key
    run = control.new_run_id()
    with Link(cfg) as link:
        expected = list(targets.nodes)
        if wait:
            link.subscribe(topics.all_nodes("events"))
            if targets.group:
                expected = members(retained_statuses(link), targets.group)
        published = publish_orders(link, cfg, path, text, targets, run, expires_s)
        print(run, flush=True)
        print(f"pushed {experiment} ({path.name}) as run {run} to {targets.describe()}: "
              f"{', '.join(published)}", file=sys.stderr)
        if not wait:
            return 0
        waiter = Waiter(link, run, expected, open_ended=bool(targets.group))
        if targets.group and not expected:
            print(f"no online node lists group {targets.group} in its status yet; waiting for any node to answer "
                  f"(at most --timeout {timeout_s:g}s)", file=sys.stderr)
        try:
            follow(waiter, time.monotonic() + timeout_s, live)
        except KeyboardInterrupt:
            print(f"\nstopped waiting; run {run} goes on. Watch it: runlab watch {run} · "
                  f"cancel it: runlab cancel {run}", file=sys.stderr)
            return 130
        return finish(cfg, link, waiter, targets, experiment, timeout_s)


def finish(cfg: OperatorConfig, link: Link, waiter: Waiter, targets: Targets, experiment: str,
           timeout_s: float) -> int:
    """Say how each node ended, clear node orders, print the report of the nodes that finished."""
    from collector.ops import report

    ok = waiter.done and all(n.status == "finished" for n in waiter.nodes.values())
    for node, nr in sorted(waiter.nodes.items()):
        if nr.status != "finished":
            why = nr.reason or ("no answer (offline? not in the group? wrong trust key?)"
                                if nr.status == "waiting" else "")
            ended = nr.status if nr.done else f"timed out after {timeout_s:g}s while {nr.status}"
            print(f"{node}: {ended}" + (f": {why}" if why else ""), file=sys.stderr)
    if not waiter.nodes:
        print(f"no node answered (group {targets.group} has no online member?)", file=sys.stderr)
    for node, nr in waiter.nodes.items():
        if nr.done and node in targets.nodes:
            link.publish(topics.node_experiment(node, waiter.run), b"", retain=True)
    finished = sorted(n for n, nr in waiter.nodes.items() if nr.status == "finished")
    if finished:
        print(report.wait_and_render(cfg, waiter.run, finished, "table"))
    return 0 if ok else 1
