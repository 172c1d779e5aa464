"""The ``runlab`` argument parser and dispatch: every command, its --help with examples, its exit status."""

from __future__ import annotations

import argparse
import sys

from collector.ops.link import OpsError
from runlab import __version__, control
from runlab.config import ConfigError, parse_duration

EPILOG = """\
examples:
  runlab keys generate --dir ~/.config/runlab            # signing.key (0600) + signing.pub for agents
  runlab push configs/experiments/local-runtimes.yaml --to pi4 --wait
  runlab push exp.yaml --group edge --wait --timeout 2h
  runlab nodes
  runlab runs --limit 10
  runlab watch 20261126T182757-3fa9c1
  runlab cancel 20261126T182757-3fa9c1
  runlab report local-runtimes --format markdown --plot out.png

config: --config FILE, else $RUNLAB_CONFIG, else ~/.config/runlab/runlab.yaml — the collector's
mqtt: and influx: sections plus signing: {key: PATH} (see configs/runlab.yaml).
exit status: 0 ok · 1 a run or a node failed, or the broker/InfluxDB could not be used · 2 bad config
or input · 130 interrupted.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("manage signing keys", """\
examples:
  runlab keys generate --dir ~/.config/runlab
  openssl pkey -in ~/.config/runlab/signing.key -noout -text   # standard PEM (Ed25519)

Copy signing.pub to every agent and list it under trust.keys in agent.yaml.
"""),
    "push": ("validate, sign and publish an experiment to nodes or a group", """\
examples:
  runlab push exp.yaml --to pi4                     # prints the run id
  runlab push exp.yaml --to pi4 --to nuc --wait     # live progress, then the comparison table
  runlab push exp.yaml --group edge --wait --timeout 2h
  runlab push exp.yaml --all --expires 1d

The file is validated here exactly as the agent validates it, signed with signing.key and published
retained (an offline node runs it when it comes back, once). --wait exits 0 only when every node
finished; 1 when one failed, refused it, was cancelled or did not end before --timeout. Ctrl-C
stops waiting, not the run.
"""),
    "nodes": ("every node seen: online/offline, version, arch, CPU, memory, runtimes, current run", """\
examples:
  runlab nodes
  runlab nodes --format json | jq '.[] | select(.online)'
"""),
    "runs": ("recent runs per node with status, times and reasons (from InfluxDB)", """\
examples:
  runlab runs
  runlab runs --limit 50 --format json
"""),
    "watch": ("live events and cold starts of every run, or of one run until it ends", """\
examples:
  runlab watch                          # everything, until Ctrl-C
  runlab watch 20261126T182757-3fa9c1   # one run; exits 0 when every node finished it
"""),
    "cancel": ("stop a run (or drop it from the queue) on the nodes that have it", """\
examples:
  runlab cancel 20261126T182757-3fa9c1
  runlab cancel 20261126T182757-3fa9c1 --node pi4

The agent stops the workload cleanly and reports `cancelled` (see `runlab runs`).
"""),
    "report": ("an experiment's latest run per node, or one run, from InfluxDB", """\
examples:
  runlab report local-runtimes                       # latest run on every node, side by side
  runlab report 20261126T182757-3fa9c1 --format json
  runlab report local-runtimes --node pi4 --node nuc --format markdown > results.md
  runlab report local-runtimes --plot startup.png
  runlab report local-runtimes --rp results          # history beyond the raw data's 30 days

Statistics are recomputed from every raw cold start (median with 95 % CI, Mann-Whitney U against the
reference variant — the first one unless --reference names another).
--format html writes one self-contained page (inline SVG plots, no network): --out FILE or stdout.
"""),
    "compare": ("two runs figure by figure: better, worse or no significant difference; a CI gate", """\
examples:
  runlab compare before.json after.json                   # two `runlab-agent run --json` files: no server
  runlab compare before.json after.json --fail-on worse:5%   # exit 1 if anything got worse by >= 5 %
  runlab compare 20261126T182757-3fa9c1 local-runtimes       # a run id against the latest run
  runlab compare local-runtimes@2026-11-01 local-runtimes --format html --out diff.html

Each side: a JSON file, a run id, EXPERIMENT (its latest run per node) or EXPERIMENT@DATE (the latest run
that had started by DATE, UTC). Per node × variant × figure: both medians with 95 % CIs, the ratio NEW/BASE
with a bootstrap CI, Mann-Whitney p (Holm-Bonferroni adjusted over every tested figure), and a verdict:
better/worse when adjusted p < --alpha and the median moved >= --threshold. Details: docs/report.md.
"""),
}


def duration(text: str) -> float:
    try:
        return float(parse_duration(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="runlab", description="runlab operator CLI: push signed experiments to "
                                "agents over MQTT, follow them live, read results from InfluxDB.",
                                epilog=EPILOG, formatter_class=raw)
    p.add_argument("--version", action="version", version=f"runlab {__version__}")
    p.add_argument("--config", "-c", metavar="FILE", help="operator config (default: $RUNLAB_CONFIG, else "
                   "~/.config/runlab/runlab.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        help_, epilog = COMMANDS[name]
        sp = sub.add_parser(name, help=help_, description=help_, epilog=epilog, formatter_class=raw)
        if name != "keys":  # also accepted after the command: `runlab push --config FILE …`
            sp.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS,
                            help="operator config (default: $RUNLAB_CONFIG, else ~/.config/runlab/runlab.yaml)")
        return sp

    keys = add("keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    gen = ksub.add_parser("generate", help="write signing.key (mode 0600) and signing.pub into --dir",
                          description="write signing.key (Ed25519, PEM, mode 0600) and signing.pub into --dir; "
                          "needs no config", epilog=COMMANDS["keys"][1], formatter_class=raw)
    gen.add_argument("--dir", required=True, metavar="DIR", help="where to write the two files (created)")

    push = add("push")
    push.add_argument("file", metavar="FILE", help="experiment YAML file")
    to = push.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", action="append", metavar="NODE", help="a node (repeatable)")
    to.add_argument("--group", metavar="G", help="every node in group G")
    to.add_argument("--all", action="store_true", help="every node (group `all`)")
    push.add_argument("--wait", action="store_true", help="follow the run live, then print the report")
    push.add_argument("--timeout", type=duration, default=duration("30m"), metavar="DURATION",
                      help="with --wait: give up after this long (default 30m)")
    push.add_argument("--expires", type=duration, default=duration("7d"), metavar="DURATION",
                      help="agents refuse the order after this long (default 7d; 0: never)")
    push.add_argument("--no-live", action="store_true", help="with --wait: one line per change, no bars")

    for name in ("nodes", "runs"):
        sp = add(name)
        sp.add_argument("--format", choices=("table", "json"), default="table")
        if name == "runs":
            sp.add_argument("--limit", type=positive, default=20, metavar="N", help="newest N runs (default 20)")

    watch = add("watch")
    watch.add_argument("run", nargs="?", metavar="RUN", help="only this run, and stop when it ended")
    watch.add_argument("--timeout", type=duration, default=0.0, metavar="DURATION",
                       help="stop after this long (default: never)")

    cancel = add("cancel")
    cancel.add_argument("run", metavar="RUN")
    cancel.add_argument("--node", action="append", default=[], metavar="N",
                        help="only on this node (repeatable; default: every node that has the run)")

    rep = add("report")
    rep.add_argument("what", metavar="EXPERIMENT|RUN", help="experiment name (latest run per node) or run id")
    rep.add_argument("--node", action="append", default=[], metavar="N", help="only this node (repeatable)")
    rep.add_argument("--format", choices=("table", "markdown", "json", "csv", "html"), default="table")
    rep.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    rep.add_argument("--plot", metavar="OUT.png", help="also draw a PNG (needs matplotlib)")
    rep.add_argument("--reference", metavar="VARIANT", help="compare against this variant (default: the first)")
    rep.add_argument("--rp", metavar="RP", help="read this retention policy, e.g. `results` for runs older than "
                     "the raw data's 30 days (deploy/influxdb/README.md)")
    cmp = add("compare")
    cmp.add_argument("base", metavar="BASE", help="FILE.json, RUN, EXPERIMENT or EXPERIMENT@DATE")
    cmp.add_argument("new", metavar="NEW", help="FILE.json, RUN, EXPERIMENT or EXPERIMENT@DATE")
    cmp.add_argument("--format", choices=("table", "markdown", "json", "html"), default="table")
    cmp.add_argument("--out", metavar="FILE", help="write the comparison here instead of stdout")
    cmp.add_argument("--fail-on", metavar="worse:N%", help="exit 1 when a figure got significantly worse by N %% "
                     "or more (e.g. worse:5%%)")
    cmp.add_argument("--alpha", type=fraction, default=0.05, metavar="A",
                     help="family-wise significance level, Holm-Bonferroni (default 0.05)")
    cmp.add_argument("--threshold", type=percentage, default=0.05, metavar="N%",
                     help="smallest change of the median called better/worse (default 5%%)")
    cmp.add_argument("--node", action="append", default=[], metavar="N", help="only this node (repeatable)")
    return p


def fraction(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return x


def percentage(text: str) -> float:
    try:
        x = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        x = -1.0
    if not 0 <= x < 10:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5% (or 0.05), got {text!r}")
    return x


def dispatch(args: argparse.Namespace) -> int:
    from collector.ops import config

    if args.cmd == "keys":
        priv, pub = control.generate_keys(args.dir)
        print(f"wrote {priv} (private, mode 0600: set signing.key to it) and {pub} (copy to agents, trust.keys)")
        return 0
    if args.cmd == "compare":  # two JSON files need no config and no server
        from collector.ops.compare import BadInput, cmd_compare

        try:
            return cmd_compare(args.base, args.new, args.format, args.fail_on, args.alpha, args.threshold, args.node,
                               lambda: config.load_config(args.config), args.out)
        except BadInput as e:
            print(f"runlab compare: {e}", file=sys.stderr)
            return 2
    cfg = config.load_config(args.config)
    if args.cmd == "push":
        from collector.ops.push import cmd_push

        nodes = args.to or []
        group = "all" if args.all else (args.group or "")
        return cmd_push(cfg, args.file, nodes, group, args.wait, args.timeout, args.expires, not args.no_live)
    if args.cmd == "report":
        from collector.ops.report import cmd_report

        return cmd_report(cfg, args.what, args.node, args.format, args.plot, args.reference, args.rp, args.out)
    from collector.ops import fleet

    if args.cmd == "nodes":
        return fleet.cmd_nodes(cfg, args.format)
    if args.cmd == "runs":
        return fleet.cmd_runs(cfg, args.format, args.limit)
    if args.cmd == "watch":
        return fleet.cmd_watch(cfg, args.run, args.timeout)
    return fleet.cmd_cancel(cfg, args.run, args.node)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except (ConfigError, control.ControlError) as e:
        print(f"runlab: {e}", file=sys.stderr)
        return 2
    except OpsError as e:
        print(f"runlab: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("runlab: interrupted", file=sys.stderr)
        return 130
