"""``runlab-agent``: serve (sample and ship), check (config, broker, what this machine has)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import agent.deferred  # noqa: F401  (first: modules the agent never uses at idle are imported on first use)
from agent.config import AgentConfig, load_config
from runlab import __version__, logs, topics
from runlab.config import ConfigError

if TYPE_CHECKING:
    import argparse

    from runlab.experiment import Experiment

log = logging.getLogger("runlab.agent")

EPILOG = """\
examples:
  runlab-agent check --config /etc/runlab/agent.yaml
  runlab-agent serve --config /etc/runlab/agent.yaml
  runlab-agent validate configs/experiments/*.yaml
  runlab-agent validate --here configs/experiments/edge-dns.yaml
  runlab-agent run configs/experiments/edge-dns.yaml --variant dnsmasq --repeat 5
  runlab-agent run configs/experiments/local-runtimes.yaml --json out.json --markdown out.md
  runlab-agent run configs/experiments/local-runtimes.yaml --html report.html

run executes an experiment file on this machine with no broker (like
hyperfine): cold starts of every variant, interleaved, then idle footprint,
load and size; it prints the comparison table and can write JSON (every raw
sample, machine facts, methodology), Markdown, CSV and one HTML page. A
pre-flight first says which variants can run here; the others are skipped
with the reason and the fix (--strict: stop instead). validate --here runs
only the pre-flight.

serve samples the host every sampling.interval (measurement `host`) and
itself (measurement `agent`) and publishes every batch with QoS 1 to
runlab/v1/nodes/NODE/samples. A batch is kept until the collector's receipt
says the store has it (not merely the broker's acknowledgement), and sent
again when none comes within delivery.receipt_timeout. Kept batches live in
memory while receipts come promptly and go to the outbox under spool.path
when they do not (a power cut loses at most the last spool.flush_after plus
one interval of host samples; run events and results are on disk before they
are sent). The outbox grows up to spool.max_bytes, then drops the oldest
batches and counts them (agent.samples_dropped).

serve also runs experiments pushed with `runlab push`, one at a time, when
they are signed by a key in trust.keys and the policy allows what they
execute; anything else is rejected with the reason on the events topic.
"""


def _parser() -> argparse.ArgumentParser:
    import argparse  # not at the top: the service's own command line is read without it (_serve_config)

    p = argparse.ArgumentParser(prog="runlab-agent", description="runlab agent: measure this machine and ship it.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"runlab-agent {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, help_ in (("serve", "sample and ship until stopped (SIGTERM/Ctrl-C)"),
                        ("check", "validate the config, try the broker, print what this machine has")):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", required=True, metavar="FILE", help="agent YAML config")
        if name == "check":
            sp.add_argument("--user", metavar="NAME",
                            help="as root: also check that the service's user NAME can read every file the "
                                 "config names and write the spool (default: runlab, when it exists)")
    va = sub.add_parser("validate", help="check experiment files without running anything",
                        description="Check experiment files without running anything; exit 1 if any is invalid. "
                                    "With --here, also run the pre-flight on this machine: which variants would "
                                    "run, and why each other would not; exit 1 if a file has no variant that "
                                    "would run.")
    va.add_argument("files", nargs="+", metavar="FILE")
    va.add_argument("--here", action="store_true",
                    help="also check this machine: tools, daemons, OCI runtimes, images, artifacts, KVM, systemd, "
                         "gateways (nothing is started)")
    ru = sub.add_parser("run", help="run an experiment file locally (no broker) and print the comparison",
                        description="Run an experiment file on this machine, with no broker, and print the "
                                    "comparison table.")
    ru.add_argument("file", metavar="FILE", help="experiment YAML")
    ru.add_argument("--json", metavar="OUT", help="write the full result (every raw sample) as JSON")
    ru.add_argument("--markdown", metavar="OUT", help="write the tables as Markdown")
    ru.add_argument("--csv", metavar="OUT", help="write every raw sample as CSV")
    ru.add_argument("--html", metavar="OUT", help="write one self-contained HTML page: summary, plots, tables")
    ru.add_argument("--reference", metavar="VARIANT", help="compare against this variant (default: the first)")
    ru.add_argument("--repeat", type=int, metavar="N",
                    help="override the file's repeat: cold starts per variant, and the repeat of the benchmark, "
                         "stack, interservice and redeploy phases (overhead and load run once)")
    ru.add_argument("--variant", action="append", metavar="NAME",
                    help="run only this variant (repeatable); default: every variant the pre-flight lets run")
    ru.add_argument("--strict", action="store_true",
                    help="stop before the first sample when any variant cannot run here (default: skip it and "
                         "report why)")
    ru.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


async def _serve(cfg: AgentConfig) -> int:
    from agent.service import Agent

    agent = Agent(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()
    return 0


def _service_user_check(cfg: AgentConfig, user: str | None) -> bool:
    """As root: can the service's user read what the config names and write the spool? Prints one line."""
    from runlab import access

    user = user or access.default_user()
    if not user:
        return True
    files = [cfg.source, *(f for f in (cfg.mqtt.password_file, cfg.mqtt.ca_file, cfg.mqtt.cert_file,
                                       cfg.mqtt.key_file) if f), *cfg.trust.keys]
    problems = access.problems_as(user, files, [cfg.spool.path])
    print(f"service user {user}: " + ("ok (reads the config and the files it names, writes the spool)"
                                      if not problems else problems[0]))
    for line in [*problems[1:], *([access.fix_hint(user)] if problems else [])]:
        print(f"  {line}")
    return not problems


async def _check(cfg: AgentConfig, user: str | None = None) -> int:
    import aiomqtt

    from agent import facts
    from agent.outbox import Outbox
    from agent.service import mqtt_client_kwargs, name_hint

    print(f"config {cfg.source}: ok (node {cfg.node}, groups {', '.join([*cfg.groups, 'all'])})")
    if not _service_user_check(cfg, user):
        return 1
    pol = cfg.policy
    if cfg.trust.keys and pol.runtimes:
        print(f"fleet: runs experiments signed by {', '.join(cfg.trust.keys)}; runtimes {', '.join(pol.runtimes)}; "
              f"commands {', '.join(pol.commands) or 'none'}; images {', '.join(pol.images) or 'none'}")
    else:
        print("fleet: pushed experiments are all rejected (set trust.keys and policy to allow some)")
    from agent.policy import describe

    for line in describe(pol):  # the effective policy, defaults included
        print(f"  {line}")
    f = facts.static_facts()
    print(f"machine: {f['arch']}, {f['cpu_model']}, {f['cores']} cores, "
          f"{int(f['memory_bytes']) // 2**20} MiB, {f['os']}, kernel {f['kernel']}")  # type: ignore[call-overload]
    gov = facts.governor()
    if gov and gov != "performance":
        print(f"  note: CPU governor is {gov!r}; timings are steadier with 'performance'")
    runtimes = await facts.detect_runtimes()
    print("runtimes: " + (", ".join(f"{k} ({v})" for k, v in sorted(runtimes.items())) or "none found"))
    spool = Path(cfg.spool.path)
    if not (spool / "outbox.sqlite").exists():
        parent = next((p for p in (spool, *spool.parents) if p.exists()), Path("/"))
        writable = os.access(parent, os.W_OK)
        state = "will be created" if writable else f"cannot be created ({parent} is not writable)"
        print(f"outbox {spool}: not created yet; {state}")
        if not writable:
            return 1
    else:
        try:
            outbox = Outbox(spool, int(cfg.spool.max_bytes))
        except (OSError, sqlite3.Error) as e:
            print(f"outbox {spool}: cannot open: {e}")
            return 1
        print(f"outbox {outbox.path}: {outbox.depth} messages waiting, {outbox.bytes} bytes, "
              f"{outbox.dropped_samples} samples dropped so far")
        for topic, n, size in outbox.holdings():
            parsed = topics.parse_node_topic(topic)
            other = parsed[0] if parsed is not None and parsed[0] != cfg.node else ""
            note = f" (node {other!r}: re-addressed to node {cfg.node!r} when the agent starts)" if other else ""
            print(f"  {topic}: {n} messages, {size} bytes{note}")
        outbox.close()
    try:
        async with aiomqtt.Client(**mqtt_client_kwargs(cfg), identifier=f"runlab-agent-{cfg.node}-check"):  # type: ignore[arg-type]
            print(f"broker {cfg.mqtt.url}: ok")
    except aiomqtt.MqttError as e:
        print(f"broker {cfg.mqtt.url}: cannot connect: {e}")
        return 1
    if hint := name_hint(cfg):
        print(f"broker {cfg.mqtt.url}: {hint}")
        return 1
    return 0


def cmd_validate(files: list[str], here: bool = False) -> int:
    from runlab.experiment import load_file, with_workloads, workloads_dir

    bad = 0
    for f in files:
        try:
            exp, _ = load_file(f)
        except ConfigError as e:
            print(e, file=sys.stderr)
            bad += 1
            continue
        what = [f"{exp.repeat} cold starts each" if p == "cold_start" else p for p in exp.phases]
        print(f"{f}: ok ({exp.name}: {len(exp.variants)} variants; {', '.join(what)})")
        if here and not _preflight(with_workloads(exp, workloads_dir()), f):
            bad += 1
    return 1 if bad else 0


def _preflight(exp: Experiment, file: str) -> bool:
    """Print the pre-flight of one file; True when at least one variant would run."""
    from agent.preflight import check

    verdicts, problems = asyncio.run(check(exp, str(Path(file).resolve().parent), file))
    runs = [vd for vd in verdicts if vd.ok]
    if problems:
        runs = []
        for p in problems:
            print(f"  ✗ {p}")
    print(f"  pre-flight: {len(runs)} of {len(verdicts)} variants would run here")
    for vd in verdicts:
        print(f"  {'✓' if vd.ok else '⊘'} {vd.line()}")
    return bool(runs)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.localrun import run_local

    return run_local(args)


def _serve_config(argv: list[str]) -> str | None:
    """FILE when ``argv`` is exactly ``serve --config FILE`` (``-c FILE``, ``--config=FILE``), as the systemd
    unit starts the agent; None for anything else, which argparse reads. argparse, gettext and textwrap are
    ~0.35 MB of the idle agent's objects that it would keep for ever to read three words (docs/packaging.md)."""
    if len(argv) == 3 and argv[0] == "serve" and argv[1] in ("--config", "-c") and argv[2] and argv[2][0] != "-":
        return argv[2]
    if len(argv) == 2 and argv[0] == "serve" and argv[1].startswith("--config=") and len(argv[1]) > 9:
        return argv[1][9:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = _serve_config(argv)
    if config is not None:
        return _load_and(config, "serve", None)
    args = _parser().parse_args(argv)
    if args.cmd == "validate":
        return cmd_validate(args.files, args.here)
    if args.cmd == "run":
        logs.setup("warning")
        try:
            return cmd_run(args)
        except ConfigError as e:
            print(f"runlab-agent: {e}", file=sys.stderr)
            return 2
    return _load_and(args.config, args.cmd, getattr(args, "user", None))


def _load_and(config: str, cmd: str, user: str | None) -> int:
    """Read the config, then serve or check."""
    try:
        cfg = load_config(config)
        logs.setup(cfg.log_level, background=cmd == "serve")  # serve's main thread times workloads
        return asyncio.run(_check(cfg, user) if cmd == "check" else _serve(cfg))
    except ConfigError as e:
        print(f"runlab-agent: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the spool directory is read-only or cannot be created
        where = f"{e.filename}: " if e.filename else ""
        print(f"runlab-agent: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
