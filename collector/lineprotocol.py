"""Samples → InfluxDB line protocol, escaped so that no tag or field can inject a second point.

Plain string building (influxdb-client's ``Point`` is ~11× slower here). The two
InfluxDB write APIs disagree on one detail, measured against the real servers:
InfluxDB 1.x keeps ``\\\\`` in a tag literally, the v2 write API (InfluxDB 2/3,
VictoriaMetrics) reads it as one backslash. ``LineEncoder(backslash=...)``
picks the dialect. Every check that a type cannot express is made here, in the
same pass: NaN/inf, int64 range, line breaks, empty tags.
"""

from __future__ import annotations

from runlab.wire import Sample

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_CACHE_LIMIT = 200_000


class InvalidSample(ValueError):
    """A sample that decodes but cannot be stored as one point unchanged."""


def _no_breaks(what: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise InvalidSample(f"{what} contains a line break")


class LineEncoder:
    """Encodes samples; caches escaped names and tag values (they repeat in every batch)."""

    def __init__(self, *, backslash: bool) -> None:
        # backslash=True: the v2 dialect, where "\\" means one backslash.
        self._backslash = backslash
        self._tag_table = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "} |
                                        ({"\\": "\\\\"} if backslash else {}))
        self._name_table = str.maketrans({",": r"\,", " ": r"\ "} | ({"\\": "\\\\"} if backslash else {}))
        self._tags: dict[str, str] = {}
        self._names: dict[str, str] = {}

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
            if text.endswith("\\") and not self._backslash:
                raise InvalidSample("name ends with a backslash (InfluxDB 1.x cannot store that)")
            esc = text.translate(self._name_table)
            if len(self._names) > _CACHE_LIMIT:
                self._names.clear()
            self._names[text] = esc
        return esc

    def encode(self, s: Sample, extra_tags: dict[str, str] | None = None) -> str:
        """One line (no newline); ``extra_tags`` override the sample's own tags of the same key."""
        if not 0 <= s.ts <= INT64_MAX:
            raise InvalidSample(f"ts {s.ts} is outside 0..2^63-1 ns")
        tags = s.tags | extra_tags if extra_tags else s.tags
        cache = self._tags
        head = self._names.get(s.name) or self._name(s.name)
        for k, v in tags.items():
            head += f",{cache.get(k) or self._tag('tag key', k)}={cache.get(v) or self._tag(f'tag {k}', v)}"
        parts = []
        for k, v in s.fields.items():
            t = type(v)
            if t is float:
                r = repr(v)
                if "n" in r:  # "nan", "inf": line protocol has no such values
                    raise InvalidSample(f"field {k} is {r} (only finite floats can be stored)")
            elif t is int:
                if not INT64_MIN <= v <= INT64_MAX:  # type: ignore[operator]
                    raise InvalidSample(f"field {k} = {v} does not fit in int64")
                r = f"{v}i"
            elif t is bool:
                r = "true" if v else "false"
            else:
                _no_breaks(f"field {k}", v)  # type: ignore[arg-type]
                r = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'  # type: ignore[union-attr]
            parts.append(f"{cache.get(k) or self._tag('field key', k)}={r}")
        if not parts:
            raise InvalidSample("no fields")
        return f"{head} {','.join(parts)} {s.ts}"
