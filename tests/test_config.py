"""Config errors through the real CLIs (``python -m agent|collector check``), and the value parsers."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from runlab.config import (
    ByteSize,
    ConfigError,
    Duration,
    MqttSettings,
    convert,
    parse_duration,
    parse_size,
    read_yaml,
    read_yaml_in_child,
)
from tests.conftest import REPO


@dataclass(frozen=True)
class Case:
    id: str
    text: str | bytes | None  # None: the file does not exist; "DIR": a directory
    message: str  # regex for what follows "runlab-<cli>: <file>: "
    clis: tuple[str, ...] = ("agent", "collector")


CASES = [
    # Broken YAML: the line (and where an unclosed construct began).
    Case("yaml-mapping-in-value", "node: a\nmqtt:\n  url: a: b\n",
         r"line 3, column 9: invalid YAML: mapping values are not allowed here$"),
    Case("yaml-unclosed-quote", 'log_level: info\nmqtt:\n  url: "mqtt://x\n  keepalive: 5\n',
         r"line 5, column 1: invalid YAML: found unexpected end of stream "
         r"\(while scanning a quoted scalar at line 3, column 8\)$"),
    Case("yaml-unclosed-flow", "mqtt: {url: [x\n",
         r"line 2, column 1: invalid YAML: expected ',' or '\]', but got '<stream end>' "
         r"\(while parsing a flow sequence at line 1, column 13\)$"),
    Case("yaml-tab-indent", "mqtt:\n\turl: mqtt://x\n",
         r"line 2, column 1: invalid YAML: found character '\\t' that cannot start any token$"),
    # Wrong types: the key path and what was expected.
    Case("interval-list", "sampling: {interval: [1]}\n",
         r"sampling\.interval: expected a duration such as 250ms, 1s, 5m \(got \[1\]\)$", ("agent",)),
    Case("url-int", "mqtt: {url: 5}\n", r"mqtt\.url: expected str, got int$"),
    Case("max-bytes-word", "spool: {max_bytes: lots}\n",
         r"spool\.max_bytes: expected a size such as 256MB, 64KiB or a number of bytes \(got 'lots'\)$", ("agent",)),
    Case("quarantine-size-word", "quarantine: {max_bytes: lots}\n",
         r"quarantine\.max_bytes: expected a size such as 256MB", ("collector",)),
    Case("max-delay-word", "batch: {max_delay: soon}\n",
         r"batch\.max_delay: expected a duration such as 250ms", ("collector",)),
    Case("api-enum", "influx: {api: v3}\n", r"influx\.api: invalid enum value 'v3'$", ("collector",)),
    Case("section-int", "mqtt: 5\n", r"mqtt: expected object, got int$"),
    Case("groups-str", "groups: web\n", r"groups: expected array, got str$", ("agent",)),
    Case("keepalive-inf", "mqtt: {keepalive: .inf}\n", r"mqtt\.keepalive: expected a duration .*\(got inf\)$"),
    Case("keepalive-too-big", "mqtt: {keepalive: 100000}\n",
         r"mqtt\.keepalive: expected 1s to 65535s, or 0 for none \(got 100000s\)$"),
    Case("url-bad-ipv6", "mqtt: {url: 'mqtt://[::1'}\n", r"mqtt\.url: Invalid IPv6 URL in 'mqtt://\[::1'$"),
    Case("url-port-0", "mqtt: {url: 'mqtt://host:0'}\n", r"mqtt\.url: invalid port in 'mqtt://host:0'$"),
    Case("url-scheme", "mqtt: {url: 'http://host'}\n", r"mqtt\.url: expected mqtt://HOST\[:PORT\] or mqtts://"),
    Case("node-newline", 'node: "pi4\\n"\n', r"node: expected letters, digits, .* got 'pi4\\n'$", ("agent",)),
    Case("top-level-list", "- a\n- b\n", r"expected a mapping of keys at the top level, got list$"),
    Case("non-text-key", "1: 2\n", r"\(top level\): every key must be text \(expected str\)$"),
    # Unknown keys: named with their path.
    Case("unknown-nested", "mqtt:\n  url: mqtt://x\n  bogus: 1\n", r"mqtt\.bogus: unknown key$"),
    Case("unknown-typo", "sampling: {intreval: 1s}\n", r"sampling\.intreval: unknown key$", ("agent",)),
    Case("unknown-top-level", "bogus: 1\n", r"bogus: unknown key$"),
    Case("unknown-with-newline", '"a\\nb": 1\n', r"a\\nb: unknown key$"),
    # Files that cannot be read.
    Case("missing-file", None, r"file not found$"),
    Case("directory", "DIR", r"cannot read: \[Errno 21\] Is a directory"),
    Case("not-utf8", b"node: \xff\xfe\n", r"cannot read: 'utf-8' codec can't decode byte 0xff"),
]
RUNS = [(c, cli) for c in CASES for cli in c.clis]


Results = dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess[str]]]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Run every (case, cli) once, in parallel: each is a Python start-up of its own."""
    tmp = tmp_path_factory.mktemp("configs")

    def run(case: Case, cli: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        path = tmp / f"{cli}-{case.id}.yaml"
        if case.text == "DIR":
            path.mkdir()
        elif isinstance(case.text, bytes):
            path.write_bytes(case.text)
        elif case.text is not None:
            path.write_text(case.text)
        proc = subprocess.run([sys.executable, "-m", cli, "check", "--config", str(path)], capture_output=True,
                              text=True, cwd=REPO, timeout=60)
        return path, proc

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {(c.id, cli): pool.submit(run, c, cli) for c, cli in RUNS}
        return {key: f.result() for key, f in futures.items()}


@pytest.mark.parametrize(("case", "cli"), RUNS, ids=[f"{cli}-{c.id}" for c, cli in RUNS])
def test_config_error_is_one_line_naming_the_file(case: Case, cli: str, cli_results: Results) -> None:
    path, proc = cli_results[(case.id, cli)]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), proc.stderr
    prefix = f"runlab-{cli}: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(case.message, lines[0][len(prefix):]), lines[0]


# --- the value parsers ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("1s", 1.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5h", 5400.0),
    (" 2 m ", 120.0), ("100us", 1e-4), ("100µs", 1e-4), ("10ns", 1e-8), ("7", 7.0), ("0", 0.0),
    (0, 0.0), (3, 3.0), (2.5, 2.5),
])
def test_parse_duration(text: object, seconds: float) -> None:
    got = parse_duration(text)
    assert isinstance(got, Duration)
    assert math.isclose(got, seconds, rel_tol=1e-12)


@pytest.mark.parametrize("text", ["-1s", -1, -0.5, "1e3", "1 sec", "ms", "", "1.5.2s", "1S", "1 m s", True, False,
                                  None, [1], {"s": 1}, float("nan"), float("inf"), "inf", "nan"])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration such as 250ms, 1s, 5m \(got "):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("256MB", 256_000_000), ("64KiB", 65_536), ("1GB", 10**9), ("1 GiB", 2**30), ("1.5KiB", 1536), ("10", 10),
    (10, 10), ("1kb", 1000), ("2TiB", 2 * 2**40), ("0", 0), ("100 B", 100), (" 3 mib ", 3 * 2**20),
])
def test_parse_size(text: object, size: int) -> None:
    got = parse_size(text)
    assert isinstance(got, ByteSize) and got == size


@pytest.mark.parametrize("text", ["lots", -1, "-1MB", 1.5, "1e3", "MB", "", True, None, float("inf"), "1 KBB",
                                  "1 mbit", "1 KB B", [1]])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a size such as 256MB, 64KiB or a number of bytes \(got "):
        parse_size(text)


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://broker", ("broker", 1883, False)), ("mqtts://broker", ("broker", 8883, True)),
    ("mqtt://10.0.0.2:1884", ("10.0.0.2", 1884, False)), ("mqtt://[::1]:1883", ("::1", 1883, False)),
])
def test_mqtt_endpoint(url: str, expected: tuple[str, int, bool]) -> None:
    assert MqttSettings(url=url).endpoint("f.yaml") == expected


@pytest.mark.parametrize("url", ["tcp://h", "mqtt://", "mqtt://:1883", "mqtt://h:-1", "mqtt://h:70000", "mqtt://h:x",
                                 "mqtt://h:0", "mqtt://[::1", "broker:1883"])
def test_mqtt_endpoint_refuses(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^f\.yaml: mqtt\.url: "):
        MqttSettings(url=url).endpoint("f.yaml")


class MqttOnly(msgspec.Struct, forbid_unknown_fields=True):
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)


def test_config_error_is_always_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        convert({"mqtt": {"a\r\nb": 1}}, MqttOnly, "dir\nname/f.yaml")
    assert str(e.value) == "dir\\nname/f.yaml: mqtt.a\\r\\nb: unknown key"


def test_keepalive_bounds_are_checked_where_the_section_is_read() -> None:
    assert convert({"mqtt": {"keepalive": "0s"}}, MqttOnly, "f").mqtt.keepalive == 0
    assert convert({"mqtt": {"keepalive": "18h"}}, MqttOnly, "f").mqtt.keepalive == 64800
    for bad in ("500ms", "19h", 65536):
        with pytest.raises(ConfigError, match=r"^f: mqtt\.keepalive: expected 1s to 65535s"):
            convert({"mqtt": {"keepalive": bad}}, MqttOnly, "f")


@pytest.mark.parametrize("text", [None, "node: [unclosed\n", "- a list\n", "mqtt:\n  url: 'x\n"])
def test_yaml_read_in_a_child_gives_the_same_data_and_errors(tmp_path: Path, text: str | None) -> None:
    """The agent parses its config in a forked child (PyYAML stays out of its idle footprint): same result."""
    files = [REPO / "configs" / "agent.yaml", REPO / "packaging" / "agent.yaml", tmp_path / "missing.yaml"]
    if text is not None:
        files = [tmp_path / "given.yaml"]
        files[0].write_text(text)
    for f in files:
        try:
            expected: object = read_yaml(f)
        except ConfigError as e:
            expected = f"ConfigError: {e}"
        try:
            got: object = read_yaml_in_child(f)
        except ConfigError as e:
            got = f"ConfigError: {e}"
        assert got == expected, f
