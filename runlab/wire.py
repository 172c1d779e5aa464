"""Wire version 1: the MessagePack messages agents, collectors and the CLI exchange.

Every message is a msgspec Struct encoded as a MessagePack map with the field
names below, so any MessagePack library (the reference ``msgpack`` package
included) can produce valid messages. Decoding validates types in one pass;
checks a type cannot express (finite floats, int64 range, no line breaks) are
made per sample where samples become line protocol (collector.lineprotocol), so
one bad sample is rejected without its neighbours.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from runlab.topics import NAME_PATTERN

WIRE_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # larger payloads are quarantined unread

NodeName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
FieldValue = bool | int | float | str


class Sample(msgspec.Struct, frozen=True):
    """One measurement: becomes exactly one InfluxDB point."""

    ts: int  # ns since the Unix epoch, UTC, assigned once at sampling
    name: Key  # InfluxDB measurement
    tags: dict[Key, str]
    fields: dict[Key, FieldValue]


class SampleBatch(msgspec.Struct, frozen=True):
    """Payload of ``runlab/v1/nodes/{node}/samples``."""

    v: int
    node: NodeName
    boot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # one agent process lifetime
    seq: Annotated[int, msgspec.Meta(ge=0)]  # per (node, boot), +1 per batch
    samples: list[Sample]


class NodeStatus(msgspec.Struct, frozen=True):
    """Retained payload of ``runlab/v1/nodes/{node}/status`` (also the last will)."""

    v: int
    node: NodeName
    online: bool
    ts: int
    version: str = ""
    boot: str = ""
    arch: str = ""
    cpu_model: str = ""
    cores: int = 0
    memory_bytes: int = 0
    os: str = ""
    kernel: str = ""
    runtimes: dict[str, str] = {}
    groups: list[str] = []
    run: str = ""  # the run in progress, if any


class Receipt(msgspec.Struct, frozen=True):
    """Payload of ``runlab/v1/nodes/{node}/receipts`` (collector → agent, QoS 1, not retained).

    Sent after the store accepted the batches: every sequence number in each inclusive
    ``[first, last]`` range of ``boot`` is stored (written, or quarantined whole) and the
    agent may forget it. Ranges are sorted and do not overlap.
    """

    v: int
    node: NodeName
    boot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ranges: list[tuple[Annotated[int, msgspec.Meta(ge=0)], Annotated[int, msgspec.Meta(ge=0)]]]


class _Versioned(msgspec.Struct):
    v: int


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(SampleBatch)
_status_decoder = msgspec.msgpack.Decoder(NodeStatus)
_receipt_decoder = msgspec.msgpack.Decoder(Receipt)
_version_decoder = msgspec.msgpack.Decoder(_Versioned)


def encode(msg: msgspec.Struct) -> bytes:
    """Encode any wire message to MessagePack."""
    return _encoder.encode(msg)


class DecodeError(ValueError):
    """A payload that is not a valid message of the expected kind."""


def _decode(decoder: msgspec.msgpack.Decoder[Any], payload: bytes, kind: str) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        msg = decoder.decode(payload)
    except msgspec.ValidationError as e:
        # Another wire version may have another layout: name the version, not its first odd field.
        try:
            version = _version_decoder.decode(payload).v
        except (msgspec.DecodeError, RecursionError):
            version = WIRE_VERSION
        if version != WIRE_VERSION:
            raise DecodeError(f"unsupported wire version {version} (expected {WIRE_VERSION})") from None
        raise DecodeError(f"invalid {kind}: {e}") from None
    except msgspec.DecodeError as e:
        raise DecodeError(f"not MessagePack: {e}") from None
    except RecursionError:  # msgspec raises it for deeply nested input, even inside ignored keys
        raise DecodeError(f"invalid {kind}: nested too deeply") from None
    if msg.v != WIRE_VERSION:
        raise DecodeError(f"unsupported wire version {msg.v} (expected {WIRE_VERSION})")
    return msg


def decode_batch(payload: bytes) -> SampleBatch:
    """Decode and type-check a samples payload; raise DecodeError with the reason."""
    batch: SampleBatch = _decode(_batch_decoder, payload, "sample batch")
    return batch


def decode_status(payload: bytes) -> NodeStatus:
    """Decode and type-check a status payload; raise DecodeError with the reason."""
    status: NodeStatus = _decode(_status_decoder, payload, "node status")
    return status


def decode_receipt(payload: bytes) -> Receipt:
    """Decode and type-check a receipts payload; raise DecodeError with the reason."""
    receipt: Receipt = _decode(_receipt_decoder, payload, "receipt")
    if any(first > last for first, last in receipt.ranges):
        raise DecodeError("invalid receipt: a range's first sequence number exceeds its last")
    return receipt
