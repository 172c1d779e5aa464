"""Wire version 1 and line protocol: interop with the reference msgpack package, decoder fuzzing, and a
round trip of LineEncoder's output through small reference line-protocol parsers (one per dialect)."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event

from collector.lineprotocol import INT64_MAX, INT64_MIN, InvalidSample, LineEncoder
from runlab import topics, wire
from runlab.devservers import InfluxV1
from tests.conftest import Stack, v1_section, wait_until
from tests.helpers import Publisher, quarantine_entries

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- (a) interop with the reference msgpack package ---------------------------------------------------------

TS = 1_764_000_000_123_456_789
PLAIN_BATCH: dict[str, Any] = {
    "v": 1, "node": "pi4-kitchen", "boot": "0123456789ab", "seq": 42,
    "samples": [
        {"ts": TS, "name": "host", "tags": {"sensor": "cpu thermal", "rack": "a,b=c"},
         "fields": {"temp_c": 51.25, "throttled": False, "cores": 4, "governor": "ondemand",
                    "big": 2**63 - 1, "neg": -(2**63), "small": -3, "u8": 200, "u16": 60000, "u32": 4_000_000_000}},
        {"ts": TS + 1, "name": "agent", "tags": {}, "fields": {"rss_bytes": 12_345_678}},
    ],
}


def expected_batch() -> wire.SampleBatch:
    return wire.SampleBatch(v=1, node="pi4-kitchen", boot="0123456789ab", seq=42, samples=[
        wire.Sample(ts=s["ts"], name=s["name"], tags=s["tags"], fields=s["fields"]) for s in PLAIN_BATCH["samples"]])


@pytest.mark.parametrize("options", [{}, {"use_single_float": True}, {"use_bin_type": False}],
                         ids=["default", "float32", "legacy-raw-str"])
def test_batch_packed_by_reference_msgpack_decodes(options: dict[str, Any]) -> None:
    payload = msgpack.packb(PLAIN_BATCH, **options)
    got = wire.decode_batch(payload)
    assert got == expected_batch()
    assert type(got.samples[0].fields["throttled"]) is bool
    assert type(got.samples[0].fields["cores"]) is int
    assert type(got.samples[0].fields["temp_c"]) is float


def test_reference_msgpack_reads_what_runlab_writes_and_unknown_keys_are_skipped() -> None:
    assert msgpack.unpackb(wire.encode(expected_batch())) == PLAIN_BATCH
    # A newer sender may add keys, in any order: version 1 readers skip what they do not know.
    reordered = {"future": {"nested": [1, 2, {"x": b"\x00"}]}, **dict(reversed(list(PLAIN_BATCH.items())))}
    assert wire.decode_batch(msgpack.packb(reordered)) == expected_batch()


def test_batch_packed_by_reference_msgpack_lands_in_influxdb(stack: Stack, influx: InfluxV1) -> None:
    stack.collector(v1_section(influx), name="interop").start().wait_subscribed()
    pub = Publisher(stack.mq)
    try:
        pub.publish(topics.samples("pi4-kitchen"), msgpack.packb(PLAIN_BATCH))
    finally:
        pub.close()
    rows = wait_until(lambda: influx.query('SELECT * FROM host WHERE node = \'pi4-kitchen\'')["results"][0]
                      .get("series"), what="the msgpack-built batch in InfluxDB")
    got = dict(zip(rows[0]["columns"], rows[0]["values"][0], strict=True))
    assert got == {"time": TS, "node": "pi4-kitchen", "sensor": "cpu thermal", "rack": "a,b=c", "temp_c": 51.25,
                   "throttled": False, "cores": 4, "governor": "ondemand", "big": 2**63 - 1, "neg": -(2**63),
                   "small": -3, "u8": 200, "u16": 60000, "u32": 4_000_000_000}
    kinds = {r[0]: r[1] for r in influx.rows("SHOW FIELD KEYS FROM host")}
    assert kinds == {"temp_c": "float", "throttled": "boolean", "cores": "integer", "governor": "string",
                     "big": "integer", "neg": "integer", "small": "integer", "u8": "integer", "u16": "integer",
                     "u32": "integer"}
    assert wait_until(lambda: influx.rows("SELECT rss_bytes FROM agent WHERE node = 'pi4-kitchen'"))[0][1] == 12_345_678
    assert quarantine_entries(stack.quarantine) == []


# --- (b) the decoder never fails any other way than DecodeError -------------------------------------------

def decode_outcome(payload: bytes) -> wire.SampleBatch | wire.DecodeError:
    try:
        batch = wire.decode_batch(payload)
    except wire.DecodeError as e:
        assert str(e), "a DecodeError must say why"
        if currently_in_test_context():  # statistics for --hypothesis-show-statistics
            event(f"DecodeError: {str(e).split(':')[0]}")
        return e
    if currently_in_test_context():
        event("decoded")
    # Whatever decodes is fully typed: the collector relies on it.
    assert isinstance(batch, wire.SampleBatch)
    assert batch.v == wire.WIRE_VERSION and topics.valid_name(batch.node) and batch.seq >= 0
    for s in batch.samples:
        assert isinstance(s, wire.Sample) and type(s.ts) is int and isinstance(s.name, str) and s.name
        assert all(type(k) is str and k and type(v) is str for k, v in s.tags.items())
        assert all(type(k) is str and k and type(v) in (bool, int, float, str) for k, v in s.fields.items())
    return batch


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    decode_outcome(payload)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_after_a_batch_header_decode_or_raise_decode_error(tail: bytes) -> None:
    # Start like a real batch so the fuzzer gets past the first byte into the structured part.
    head = msgpack.packb({"v": 1, "node": "n", "boot": "b", "seq": 0})  # fixmap of 4: made a map of 5 below
    decode_outcome(b"\x85" + head[1:] + msgpack.packb("samples") + tail)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
texts = st.text(max_size=12)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` four times out of five, so that whole batches are often valid but for one part."""
    return st.one_of(valid, valid, valid, valid, other)


near_samples = st.fixed_dictionaries({
    "ts": mostly(st.integers(min_value=-(2**63), max_value=2**64 - 1), msgpack_values),
    "name": mostly(st.text(min_size=1, max_size=12), msgpack_values),
    "tags": mostly(st.dictionaries(st.text(min_size=1, max_size=8), texts, max_size=3), msgpack_values),
    "fields": mostly(st.dictionaries(st.text(min_size=1, max_size=8),
                                     st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | texts,
                                     max_size=3), msgpack_values),
})
near_batches = st.fixed_dictionaries({
    "v": mostly(st.just(1), msgpack_values),
    "node": mostly(st.sampled_from(["pi4", "a.b_c-d", "x" * 64]),
                   st.sampled_from(["x" * 65, "bad node", "n\n", "", "-n", "a/b"]) | msgpack_values),
    "boot": mostly(st.text(min_size=1, max_size=64), st.sampled_from(["", "b" * 65]) | msgpack_values),
    "seq": mostly(st.integers(min_value=0, max_value=2**64 - 1),
                  st.integers(min_value=-(2**63), max_value=-1) | msgpack_values),
    "samples": mostly(st.lists(near_samples, max_size=3), msgpack_values),
}, optional={"extra": msgpack_values})


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_structures_decode_or_raise_decode_error(value: Any) -> None:
    decode_outcome(msgpack.packb(value))


@FUZZ
@given(near_batches)
def test_almost_valid_batches_decode_or_raise_decode_error(value: dict[str, Any]) -> None:
    outcome = decode_outcome(msgpack.packb(value))
    if isinstance(outcome, wire.SampleBatch):  # accepted: then it is exactly what was sent (bytes: NaN != NaN)
        sent = {k: value[k] for k in ("v", "node", "boot", "seq", "samples")}  # in the struct's field order
        sent["samples"] = [{k: s[k] for k in ("ts", "name", "tags", "fields")} for s in sent["samples"]]
        assert wire.encode(outcome) == msgpack.packb(sent)


@pytest.mark.parametrize("depth", [1, 100, 900, 1000, 1100, 5000, 1_000_000])
@pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
def test_deep_nesting_decodes_or_is_a_decode_error(depth: int, container: bytes) -> None:
    # msgspec raises RecursionError past ~1000 levels, even inside a key it skips: that used to escape
    # decode_batch and kill the collector (and, never acked, kill it again after every restart).
    ok = msgpack.packb({"v": 1, "node": "n", "boot": "b", "seq": 0, "samples": []})
    unknown_key = b"\x86" + ok[1:] + msgpack.packb("x") + container * depth + b"\xc0"
    in_a_field = ok[: -1] + b"\x91" + container * depth + b"\xc0"  # samples = [[[...]]]
    outcome = decode_outcome(unknown_key)
    if depth <= 100:
        assert isinstance(outcome, wire.SampleBatch)
    if depth >= 5000:
        assert isinstance(outcome, wire.DecodeError) and "nested too deeply" in str(outcome)
    assert isinstance(decode_outcome(in_a_field), wire.DecodeError)


def test_every_truncation_and_trailing_garbage_is_a_decode_error() -> None:
    payload = msgpack.packb(PLAIN_BATCH)
    for cut in range(len(payload)):
        with pytest.raises(wire.DecodeError):
            wire.decode_batch(payload[:cut])
    with pytest.raises(wire.DecodeError):
        wire.decode_batch(payload + b"\x00")


def test_size_limit_is_checked_before_decoding() -> None:
    assert isinstance(wire.decode_batch(pad_to(wire.MAX_PAYLOAD_BYTES)), wire.SampleBatch)
    with pytest.raises(wire.DecodeError, match=r"payload of 16777217 bytes exceeds 16777216"):
        wire.decode_batch(pad_to(wire.MAX_PAYLOAD_BYTES + 1))


def pad_to(size: int) -> bytes:
    base = msgpack.packb({**PLAIN_BATCH, "pad": b""})
    out = msgpack.packb({**PLAIN_BATCH, "pad": b"\0" * (size - len(base) - 3)})  # bin8 header → bin32
    assert len(out) == size
    return out


def test_unknown_wire_version_is_named_whatever_its_layout() -> None:
    for payload in (msgpack.packb({**PLAIN_BATCH, "v": 2}), msgpack.packb({"v": 2, "points": [1]})):
        with pytest.raises(wire.DecodeError, match=r"^unsupported wire version 2 \(expected 1\)$"):
            wire.decode_batch(payload)
    with pytest.raises(wire.DecodeError, match=r"^invalid sample batch: .*`v`"):
        wire.decode_batch(msgpack.packb({"points": [1]}))


def test_node_names_with_a_trailing_newline_are_refused() -> None:
    for node in ("pi4\n", "pi4\r", "pi4/x", "+", "#", "-pi4", "x" * 65, ""):
        with pytest.raises(wire.DecodeError, match=r"\$\.node"):
            wire.decode_batch(msgpack.packb({**PLAIN_BATCH, "node": node}))


# --- (c) LineEncoder round trip through reference parsers ---------------------------------------------------

class ParseError(ValueError):
    pass


def _field_value(buf: str, pos: int) -> tuple[bool | int | float | str, int]:
    """A field value at ``pos`` (same rules in both dialects); return it and the position after it."""
    if buf.startswith('"', pos):
        out, pos = [], pos + 1
        while True:
            if pos >= len(buf):
                raise ParseError("unterminated string")
            c = buf[pos]
            if c == "\\" and pos + 1 < len(buf) and buf[pos + 1] in '\\"':
                out.append(buf[pos + 1])
                pos += 2
            elif c == '"':
                return "".join(out), pos + 1
            else:
                out.append(c)
                pos += 1
    end = pos
    while end < len(buf) and buf[end] not in ", ":
        end += 1
    token = buf[pos:end]
    if token in ("true", "false"):
        return token == "true", end
    try:
        return (int(token[:-1]) if token.endswith("i") else float(token)), end
    except ValueError:
        raise ParseError(f"bad field value {token!r}") from None


def parse_v2(line: str) -> tuple[str, dict[str, str], dict[str, Any], int] | None:
    """The v2 dialect (InfluxDB 2/3, VictoriaMetrics): outside strings, backslash escapes one of , = space \\
    (any other backslash is literal); '=' is literal in a measurement; lines starting with '#' are comments."""
    if line.startswith("#"):
        return None

    def scan(pos: int, stops: str) -> tuple[str, int]:
        out = []
        while pos < len(line):
            c = line[pos]
            if c == "\\" and pos + 1 < len(line) and line[pos + 1] in ",= \\":
                out.append(line[pos + 1])
                pos += 2
                continue
            if c in stops:
                break
            out.append(c)
            pos += 1
        return "".join(out), pos

    return _parse(line, scan, scan, scan, str, str)


def parse_v1(line: str) -> tuple[str, dict[str, str], dict[str, Any], int] | None:
    """The InfluxDB 1.x dialect, after influxdb/models/points.go: leading whitespace (and NUL) is skipped,
    '#' starts a comment; in the measurement and tags a separator counts as escaped when the byte before
    it is a backslash; the escapes \\, \\= and \\space are then replaced one kind after the other; any other
    backslash is literal. In the field section a backslash escapes the next byte."""
    line = line.lstrip(" \t\0")
    if line.startswith("#"):
        return None

    def scan_prev(pos: int, stops: str) -> tuple[str, int]:
        start = pos
        while pos < len(line) and not (line[pos] in stops and (pos == start or line[pos - 1] != "\\")):
            pos += 1
        return line[start:pos], pos

    def scan_skip(pos: int, stops: str) -> tuple[str, int]:
        start = pos
        while pos < len(line) and line[pos] not in stops:
            pos += 2 if line[pos] == "\\" and pos + 1 < len(line) else 1
        return line[start:pos], pos

    def unescape_name(raw: str) -> str:  # measured on 1.6: unescaped twice (the raw name \\,m reads back as ,m)
        once = raw.replace("\\,", ",").replace("\\ ", " ")
        return once.replace("\\,", ",").replace("\\ ", " ")

    def unescape_tag(raw: str) -> str:
        return raw.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")

    return _parse(line, scan_prev, scan_prev, scan_skip, unescape_name, unescape_tag, skip_ws=" \t\0")


def _parse(line: str, scan_name: Any, scan_tag: Any, scan_field: Any, un_name: Any, un_tag: Any,
           skip_ws: str = "") -> tuple[str, dict[str, str], dict[str, Any], int]:
    name, pos = scan_name(0, ", ")
    if not name:
        raise ParseError("no measurement")
    tags: dict[str, str] = {}
    while pos < len(line) and line[pos] == ",":
        key, pos = scan_tag(pos + 1, "=, ")
        if pos >= len(line) or line[pos] != "=" or not key:
            raise ParseError("bad tag key")
        value, pos = scan_tag(pos + 1, ",= ")
        if pos >= len(line) or line[pos] == "=" or not value:
            raise ParseError("bad tag value")
        tags[un_tag(key)] = un_tag(value)
    if pos >= len(line) or line[pos] != " ":
        raise ParseError("no fields")
    fields: dict[str, Any] = {}
    while skip_ws and pos + 1 < len(line) and line[pos + 1] in skip_ws:  # 1.x: whitespace before the fields
        pos += 1
    while True:
        key, pos = scan_field(pos + 1, "=, ")
        if pos >= len(line) or line[pos] != "=" or not key:
            raise ParseError("bad field key")
        fields[un_tag(key)], pos = _field_value(line, pos + 1)
        if pos < len(line) and line[pos] == ",":
            continue
        break
    if pos >= len(line) or line[pos] != " ":
        raise ParseError("no timestamp")
    ts = line[pos + 1:]
    if not ts.isdigit() or not ts.isascii():
        raise ParseError(f"bad timestamp {ts!r}")
    return un_name(name), tags, fields, int(ts)


# Text heavy in the characters line protocol cares about, plus anything else (no lone surrogates: they
# cannot come out of MessagePack).
chars = st.sampled_from(list(',= "\\\'#\t\n\r\0')) | st.characters(exclude_categories=("Cs",))
keys = st.text(chars, min_size=1, max_size=10)
values = st.text(chars, max_size=10)
field_values = (st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats()
                | st.text(chars, max_size=10))
samples = st.builds(
    wire.Sample,
    ts=st.integers(min_value=0, max_value=INT64_MAX) | st.integers(min_value=-(2**64), max_value=2**64),
    name=keys, tags=st.dictionaries(keys, values, max_size=4),
    fields=st.dictionaries(keys, field_values, max_size=4))
nodes = st.text(chars, max_size=6)


def must_refuse(s: wire.Sample, tags: dict[str, str], v1: bool) -> bool:
    """Everything LineEncoder has to refuse: what line protocol cannot carry unchanged."""
    texts = [s.name, *tags, *tags.values(), *s.fields, *(v for v in s.fields.values() if type(v) is str)]
    return (not 0 <= s.ts <= INT64_MAX or not s.fields or any("\n" in t or "\r" in t for t in texts)
            or s.name.startswith("#")
            or any(v == "" for v in tags.values())
            or any(type(v) is float and not math.isfinite(v) for v in s.fields.values())
            or any(type(v) is int and not INT64_MIN <= v <= INT64_MAX for v in s.fields.values())
            or (v1 and any(t.endswith("\\") for t in [s.name, *tags, *tags.values(), *s.fields]))
            or (v1 and any(t[:1] in (" ", "\t", "\0") or any(f"\\{c}" in t for c in ',= "\\')
                           for t in [s.name, *s.fields]))
            or (not v1 and any('"' in k for k in s.fields)))


def same_value(a: Any, b: Any) -> bool:
    if type(a) is float:
        return type(b) is float and struct.pack("<d", a) == struct.pack("<d", b)  # -0.0 stays -0.0
    return type(a) is type(b) and a == b


ENCODERS = {"v1": LineEncoder(backslash=False), "v2": LineEncoder(backslash=True)}  # shared: exercises the caches


def check_round_trip(dialect: str, s: wire.Sample, node: str) -> None:
    v1 = dialect == "v1"
    extra = {"node": node}
    tags = s.tags | extra
    try:
        line = ENCODERS[dialect].encode(s, extra)
    except InvalidSample:
        assert must_refuse(s, tags, v1), f"refused a sample line protocol can carry: {s}"
        return
    assert not must_refuse(s, tags, v1), f"accepted {s} as {line!r}"
    assert "\n" not in line and "\r" not in line
    parsed = (parse_v1 if v1 else parse_v2)(line)
    assert parsed is not None, f"{line!r} reads as a comment"
    name, got_tags, got_fields, ts = parsed
    assert (name, got_tags, ts) == (s.name, tags, s.ts), line
    assert got_fields.keys() == s.fields.keys(), line
    assert all(same_value(s.fields[k], got_fields[k]) for k in s.fields), line


@settings(max_examples=500, deadline=None)
@given(samples, nodes)
def test_v2_dialect_round_trips_or_refuses(s: wire.Sample, node: str) -> None:
    check_round_trip("v2", s, node)


@settings(max_examples=500, deadline=None)
@given(samples, nodes)
def test_v1_dialect_round_trips_or_refuses(s: wire.Sample, node: str) -> None:
    check_round_trip("v1", s, node)


@pytest.mark.parametrize("dialect", ["v1", "v2"])
@pytest.mark.parametrize("text", ["a,b", "a b", "a=b", 'a"b', "a\\b", "\\,", "\\ ", "\\=", "=,\" \\x", "#x", " x"])
def test_tags_round_trip_in_both_dialects(dialect: str, text: str) -> None:
    s = wire.Sample(ts=1, name="m", tags={text: text, "t": text}, fields={"f": text, "g": 1.5})
    check_round_trip(dialect, s, "node")


@pytest.mark.parametrize("dialect", ["v1", "v2"])
def test_measurement_starting_with_hash_is_not_a_comment(dialect: str) -> None:
    check_round_trip(dialect, wire.Sample(ts=1, name="#m", tags={}, fields={"f": 1.0}), "n")


@pytest.mark.parametrize("s", [
    wire.Sample(ts=1, name="m\\ x", tags={}, fields={"f": 1.0}),
    wire.Sample(ts=1, name="\tm", tags={}, fields={"f": 1.0}),
    wire.Sample(ts=1, name="m", tags={}, fields={"\\,x": 1.0}),
    wire.Sample(ts=1, name="m", tags={}, fields={"\tf": 1.0}),
], ids=["name-backslash-space", "name-leading-tab", "field-key-backslash-comma", "field-key-leading-tab"])
def test_v1_names_and_field_keys_that_influxdb_1x_would_alter_are_refused(s: wire.Sample) -> None:
    with pytest.raises(InvalidSample, match=r"InfluxDB 1\.x"):
        ENCODERS["v1"].encode(s, {"node": "n"})
    check_round_trip("v2", s, "n")  # the v2 write API stores them as they are
