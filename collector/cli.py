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
        if name == "check":
            sp.add_argument("--user", metavar="NAME",
                            help="as root: also check that the service's user NAME can read every file the "
                                 "config names and write the quarantine (default: runlab, when it exists)")
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


def _broker_hint(err: str, cfg: CollectorConfig) -> list[str]:
    """How to fix what check_broker found."""
    if "not authori" in err.lower() or "bad user name or password" in err.lower():
        who = f"user {cfg.mqtt.username!r}" if cfg.mqtt.username else "anonymous clients (mqtt.username is not set)"
        return [f"the broker refused {who}: set mqtt.username and mqtt.password_file to the collector's login "
                "(deploy/mosquitto/runlab-broker-setup writes it to /etc/mosquitto/runlab/clients/collector.password;"
                " see docs/deploy-mosquitto.md)"]
    if "refused" in err.lower() or "no answer" in err.lower() or "timed out" in err.lower():
        return ["is Mosquitto running and listening there? (systemctl status mosquitto; with Compose: "
                "docker compose ps mosquitto) Is mqtt.url right (mqtt:// plain, mqtts:// TLS, host, port)?"]
    if "certificate" in err.lower() or "ssl" in err.lower():
        return ["TLS failed: mqtt.ca_file must be the CA that signed the broker's certificate, and the host in "
                "mqtt.url one of the names in it (runlab-broker-setup --host NAME)"]
    return []


def check_service_user(cfg: CollectorConfig, user: str | None) -> bool:
    """As root: can the service's user read what the config names and write the quarantine? One line."""
    import os

    from runlab import access

    user = user or access.default_user()
    if not user:
        return True
    files = [cfg.source, *(f for f in (cfg.mqtt.password_file, cfg.mqtt.ca_file, cfg.mqtt.cert_file,
                                       cfg.mqtt.key_file, cfg.influx.password_file, cfg.influx.token_file) if f)]
    problems = access.problems_as(user, files, [os.path.dirname(os.path.abspath(cfg.quarantine.path))])
    print(f"service user {user}: " + ("ok (reads the config and the files it names, writes the quarantine)"
                                      if not problems else problems[0]))
    for line in [*problems[1:], *([access.fix_hint(user)] if problems else [])]:
        print(f"  {line}")
    return not problems


def cmd_check(cfg: CollectorConfig, user: str | None = None) -> int:
    """Config, broker, store: one line each, ok or what is wrong; the indented lines under it say how to fix it.

    Exit status 1 when the collector could not work (broker or store writes); the read side (InfluxQL for
    Grafana and ``runlab report``) only adds notes and warnings.
    """
    from collector.sinks import open_sink

    print(f"config {cfg.source}: ok")
    ok = check_service_user(cfg, user)
    err = check_broker(cfg)
    print(f"broker {cfg.mqtt.url}: {err or 'ok'}")
    for line in _broker_hint(err, cfg) if err else []:
        print(f"  {line}")
    ok &= err is None
    sink = open_sink(cfg.influx, cfg.source)
    try:
        problems = sink.check()
        notes: list[str] = list(getattr(sink, "check_notes", []))
    finally:
        sink.close()
    target = (f"database {cfg.influx.database}" if cfg.influx.api == "v1" else f"bucket {cfg.influx.bucket}")
    lines = "\n".join(problems).splitlines()
    print(f"store {cfg.influx.url} ({cfg.influx.api} API, {target}): {lines[0] if lines else 'ok'}")
    for line in [*lines[1:], *notes]:
        print(f"  {line}")
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
        return cmd_check(cfg, args.user) if args.cmd == "check" else cmd_serve(cfg)
    except ConfigError as e:
        print(f"runlab-collector: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
