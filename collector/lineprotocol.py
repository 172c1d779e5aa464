"""Samples → InfluxDB line protocol, escaped so that no tag or field can inject a second point.

Plain string building (influxdb-client's ``Point`` is ~11× slower here). The two
InfluxDB write APIs disagree on one detail, measured against the real servers:
InfluxDB 1.x keeps ``\\\\`` in a tag literally, the v2 write API (InfluxDB 2/3,
VictoriaMetrics) reads it as one backslash. ``LineEncoder(backslash=...)``
picks the dialect. Every check that a type cannot express is made here, in the
same pass: NaN/inf, int64 range, line breaks, empty tags.

This is the collector's hot path (bench/bench_hotpath.py, bench/bench_throughput.py);
lines are built as bytes, ready for the store. Escaped heads (measurement and
tags) are cached per series. Field values that are numbers or bools are
formatted by one msgspec JSON encode of the sample's values (C, shortest
round-trip floats, several times faster than ``repr``): the JSON text, with its
digits deleted, names the value types (``""`` int, ``"."``/``"e"`` float,
``"true"``/``"false"``), and each combination of field keys and types has a
cached format that splices the JSON tokens in. JSON has no NaN or infinity
(``null``) and strings come out quoted: such samples take the field-by-field
path, which names the offending field. Floats may therefore be written as
``1e16`` where ``repr`` writes ``1e+16``: the same double to every
line-protocol parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from runlab.wire import Sample

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_CACHE_LIMIT = 200_000
_json = msgspec.json.Encoder()
_NOT_TYPES = b"0123456789-"  # deleted from the values' JSON, what is left tells the types apart
_MISSING = object()

_Head = str | tuple[str, tuple[tuple[str, str], ...]]  # the name alone when there are no tags


class InvalidSample(ValueError):
    """A sample that decodes but cannot be stored as one point unchanged."""


def _no_breaks(what: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise InvalidSample(f"{what} contains a line break")


def _v1_key_check(what: str, text: str) -> None:
    """Measurement names and field keys InfluxDB 1.x would store altered, or misread (measured on 1.6)."""
    if text[:1] in (" ", "\t", "\0"):
        raise InvalidSample(f"{what} {text!r} starts with whitespace (InfluxDB 1.x strips it)")
    for c in ',= "\\':
        if "\\" + c in text:
            raise InvalidSample(f"{what} {text!r} has a backslash before {c!r} (InfluxDB 1.x reads that as an "
                                "escape and stores it altered, or misreads the line)")


class _Shape:
    """How to format the fields of one combination of keys and value types."""

    __slots__ = ("fmt", "ints")

    def __init__(self, fmt: bytes, ints: tuple[int, ...]) -> None:
        self.fmt = fmt  # b"key=%s,key2=%si,…": one %s per JSON token
        self.ints = ints  # positions of int values (their int64 range is checked)


class LineEncoder:
    """Encodes samples; caches escaped names, tags, series heads and field shapes (they repeat in every batch)."""

    def __init__(self, *, backslash: bool) -> None:
        # backslash=True: the v2 dialect, where "\\" means one backslash.
        self._backslash = backslash
        self._tag_table = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "} |
                                        ({"\\": "\\\\"} if backslash else {}))
        self._name_table = str.maketrans({",": r"\,", " ": r"\ "} | ({"\\": "\\\\"} if backslash else {}))
        self._tags: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._field_keys: dict[str, str] = {}
        self._heads: dict[tuple[tuple[str, str], ...], dict[_Head, bytes]] = {}  # extra tags → series → head
        self._shapes: dict[tuple[tuple[str, ...], bytes], _Shape | None] = {}  # None: field by field

    def _tag(self, what: str, text: str) -> str:
        esc = self._tags.get(text)
        if esc is None:
            _no_breaks(what, text)
            if not text:
                raise InvalidSample(f"{what} is empty")
            if text.endswith("\\") and not self._backslash:
                raise InvalidSample(f"{what} ends with a backslash (InfluxDB 1.x cannot store that)")
            esc = text.translate(self._tag_table)
            if len(self._tags) > _CACHE_LIMIT:
                self._tags.clear()
            self._tags[text] = esc
        return esc

    def _name(self, text: str) -> str:
        esc = self._names.get(text)
        if esc is None:
            _no_breaks("name", text)
            if text.startswith("#"):
                raise InvalidSample("name starts with '#' (line protocol would read the point as a comment)")
            if not self._backslash:
                if text.endswith("\\"):
                    raise InvalidSample("name ends with a backslash (InfluxDB 1.x cannot store that)")
                _v1_key_check("name", text)
            esc = text.translate(self._name_table)
            if len(self._names) > _CACHE_LIMIT:
                self._names.clear()
            self._names[text] = esc
        return esc

    def _field_key(self, text: str) -> str:
        esc = self._field_keys.get(text)
        if esc is None:
            if self._backslash:
                if '"' in text:  # VictoriaMetrics (measured) opens a string there: stores 0 and loses the line's rest
                    raise InvalidSample(f"field key {text!r} contains '\"' (the v2 write API misreads it)")
            else:
                _v1_key_check("field key", text)
            esc = self._tag("field key", text)
            if len(self._field_keys) > _CACHE_LIMIT:
                self._field_keys.clear()
            self._field_keys[text] = esc
        return esc

    # -- heads: measurement and tags ------------------------------------------------------------
    def _heads_for(self, extra_tags: dict[str, str] | None) -> dict[_Head, bytes]:
        extra = tuple(extra_tags.items()) if extra_tags else ()
        heads = self._heads.get(extra)
        if heads is None:
            if len(self._heads) > 1000:
                self._heads.clear()
            heads = self._heads[extra] = {}
        return heads

    def _make_head(self, heads: dict[_Head, bytes], key: _Head, s: Sample, extra_tags: dict[str, str] | None
                   ) -> bytes:
        tags = s.tags | extra_tags if extra_tags else s.tags
        head = self._name(s.name)
        for k, v in tags.items():
            head += f",{self._tag('tag key', k)}={self._tag(f'tag {k}', v)}"
        raw = _utf8(head)
        if len(heads) > _CACHE_LIMIT:
            heads.clear()
        heads[key] = raw
        return raw

    # -- fields ---------------------------------------------------------------------------------
    def _make_shape(self, key: tuple[tuple[str, ...], bytes]) -> _Shape | None:
        keys, skeleton = key
        escaped = [self._field_key(k) for k in keys]  # validates every key once per shape
        tokens = skeleton[1:-1].split(b",")
        shape: _Shape | None = None
        if len(tokens) == len(keys):
            parts, ints = [], []
            for i, (k, tok) in enumerate(zip(escaped, tokens, strict=True)):
                if tok == b"":
                    parts.append(_utf8(k).replace(b"%", b"%%") + b"=%si")
                    ints.append(i)
                elif tok in (b"true", b"false") or (tok and not tok.strip(b".e")):
                    parts.append(_utf8(k).replace(b"%", b"%%") + b"=%s")
                else:
                    break
            else:
                shape = _Shape(b",".join(parts), tuple(ints))
        if len(self._shapes) > _CACHE_LIMIT:
            self._shapes.clear()
        self._shapes[key] = shape
        return shape

    def _fields(self, fields: dict[str, Any]) -> bytes:
        values = tuple(fields.values())
        try:
            text = _json.encode(values)
        except (TypeError, ValueError, OverflowError):  # not wire values: the one-by-one path says what
            return self._fields_one_by_one(fields)
        if b'"' in text or b"null" in text or not values:  # strings; NaN or ±inf; nothing
            return self._fields_one_by_one(fields)
        key = (tuple(fields), text.translate(None, _NOT_TYPES))
        shape = self._shapes.get(key, _MISSING)
        if shape is _MISSING:
            shape = self._make_shape(key)
        if shape is None:
            return self._fields_one_by_one(fields)
        assert isinstance(shape, _Shape)
        for i in shape.ints:
            if not INT64_MIN <= values[i] <= INT64_MAX:
                return self._fields_one_by_one(fields)  # raises, naming the field
        return shape.fmt % tuple(text[1:-1].split(b","))

    def _fields_one_by_one(self, fields: dict[str, Any]) -> bytes:
        cache = self._field_keys
        parts = []
        for k, v in fields.items():
            t = type(v)
            if t is float:
                r = repr(v)
                if "n" in r:  # "nan", "inf": line protocol has no such values
                    raise InvalidSample(f"field {k} is {r} (only finite floats can be stored)")
            elif t is int:
                if not INT64_MIN <= v <= INT64_MAX:
                    raise InvalidSample(f"field {k} = {v} does not fit in int64")
                r = f"{v}i"
            elif t is bool:
                r = "true" if v else "false"
            else:
                _no_breaks(f"field {k}", v)
                r = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(f"{cache.get(k) or self._field_key(k)}={r}")
        if not parts:
            raise InvalidSample("no fields")
        return _utf8(",".join(parts))

    # -- samples --------------------------------------------------------------------------------
    def line(self, s: Sample, extra_tags: dict[str, str] | None = None) -> bytes:
        """One line as UTF-8 bytes (no newline); ``extra_tags`` override the sample's own tags of the same key."""
        heads = self._heads_for(extra_tags)
        if not 0 <= s.ts <= INT64_MAX:
            raise InvalidSample(f"ts {s.ts} is outside 0..2^63-1 ns")
        key = (s.name, tuple(s.tags.items())) if s.tags else s.name
        head = heads.get(key) or self._make_head(heads, key, s, extra_tags)
        return b"%s %s %d" % (head, self._fields(s.fields), s.ts)

    def encode(self, s: Sample, extra_tags: dict[str, str] | None = None) -> str:
        """One line (no newline); ``extra_tags`` override the sample's own tags of the same key."""
        return self.line(s, extra_tags).decode()

    def encode_many(self, samples: Iterable[Sample], extra_tags: dict[str, str] | None, out: list[bytes]
                    ) -> list[tuple[int, Sample, InvalidSample]]:
        """Append one line (bytes) per valid sample to ``out``; return (index, sample, why) of the others.

        The same lines and checks as ``line`` for each sample, with ``_fields``' common case inlined:
        a cached shape exists only for keys and types that need no other check than the int64 range
        (the skeleton of a JSON text with strings, NaN or infinity matches no cached shape). Values
        are the wire's bool/int/float/str: msgspec decoded them.
        """
        heads = self._heads_for(extra_tags)
        shapes = self._shapes
        encode = _json.encode
        append = out.append
        refused: list[tuple[int, Sample, InvalidSample]] = []
        for i, s in enumerate(samples):
            try:
                ts = s.ts
                if not 0 <= ts <= INT64_MAX:
                    raise InvalidSample(f"ts {ts} is outside 0..2^63-1 ns")
                key = (s.name, tuple(s.tags.items())) if s.tags else s.name
                head = heads.get(key) or self._make_head(heads, key, s, extra_tags)
                fields = s.fields
                values: tuple[Any, ...] = tuple(fields.values())
                try:
                    text = encode(values)
                except (TypeError, ValueError, OverflowError):  # not wire values: _fields says what
                    append(b"%s %s %d" % (head, self._fields(fields), ts))
                    continue
                shape = shapes.get((tuple(fields), text.translate(None, _NOT_TYPES)))
                if shape is not None:
                    for j in shape.ints:
                        if not INT64_MIN <= values[j] <= INT64_MAX:
                            break
                    else:
                        append(b"%s %s %d" % (head, shape.fmt % tuple(text[1:-1].split(b",")), ts))
                        continue
                append(b"%s %s %d" % (head, self._fields(fields), ts))
            except InvalidSample as e:
                refused.append((i, s, e))
        return refused


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: MessagePack cannot carry one, a Python caller can
        raise InvalidSample("text that is not valid Unicode (a lone surrogate)") from None
