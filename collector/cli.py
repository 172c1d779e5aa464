"""``runlab-collector``: serve (MQTT → InfluxDB) and check (config, broker, store)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from collector.config import CollectorConfig, load_config
from runlab import __version__, logs
from runlab.config import ConfigError

log = logging.getLogger("runlab.collector")

EPILOG = """\
examples:
  runlab-collector check --config /etc/runlab/collector.yaml
  runlab-collector serve --config /etc/runlab/collector.yaml

The collector subscribes to every node's samples (as a shared-subscription
group, so several collectors split the load), validates each message, writes
batches to InfluxDB and acknowledges a message only after InfluxDB accepted it.
Refused messages go to the quarantine file with the reason.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runlab-collector", description="runlab collector: MQTT → InfluxDB.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"runlab-collector {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, help_ in (("serve", "run the collector until stopped (SIGTERM/Ctrl-C)"),
                        ("check", "validate the config, try the broker and the store, print what was found")):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", required=True, metavar="FILE", help="collector YAML config")
    return p


def check_broker(cfg: CollectorConfig, timeout: float = 5.0) -> str | None:
    """None when the broker accepts us, else what went wrong."""
    from collector.service import connect_properties, make_client

    client = make_client(cfg, f"{cfg.mqtt.client_id}-check", manual_ack=False)
    result: list[str | None] = []
    done = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        result.append(None if not getattr(rc, "is_failure", False) else f"broker refused: {rc}")
        done.set()

    client.on_connect = on_connect
    host, port, _ = cfg.mqtt.endpoint(cfg.source)
    try:
        client.connect(host, port, keepalive=10, clean_start=True, properties=connect_properties(persistent=False))
    except (OSError, ValueError) as e:
        return f"cannot connect to {cfg.mqtt.url}: {e}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"no answer from {cfg.mqtt.url} within {timeout:.0f}s"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()


def cmd_check(cfg: CollectorConfig) -> int:
    from collector.sinks import open_sink

    print(f"config {cfg.source}: ok")
    ok = True
    err = check_broker(cfg)
    print(f"broker {cfg.mqtt.url}: {err or 'ok'}")
    ok &= err is None
    sink = open_sink(cfg.influx, cfg.source)
    problems = sink.check()
    sink.close()
    target = cfg.influx.database if cfg.influx.api == "v1" else cfg.influx.bucket
    print(f"store {cfg.influx.url} ({cfg.influx.api} API, {target}): {'ok' if not problems else problems[0]}")
    for extra in problems[1:]:
        print(f"  {extra}")
    ok &= not problems
    return 0 if ok else 1


def cmd_serve(cfg: CollectorConfig) -> int:
    from collector.service import Collector

    collector = Collector(cfg)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        collector.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    collector.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"runlab-collector: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    try:
        return cmd_check(cfg) if args.cmd == "check" else cmd_serve(cfg)
    except ConfigError as e:
        print(f"runlab-collector: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
