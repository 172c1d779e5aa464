"""MQTT topic names of wire version 1, built and parsed in one place."""

from __future__ import annotations

import re

PREFIX = "runlab/v1"
# Node and group names become topic levels: keep them free of MQTT wildcards and separators.
# \Z, not $: "$" also matches before a trailing newline (msgspec's pattern check uses re.search too).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
_NAME = re.compile(NAME_PATTERN)
_NODE_TOPIC = re.compile(r"^runlab/v1/nodes/([^/]+)/([a-z]+)\Z")


def valid_name(name: str) -> bool:
    """True when ``name`` can be used as a node or group name in topics."""
    return bool(_NAME.match(name))


def status(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/status"


def samples(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/samples"


def events(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/events"


def receipts(node: str) -> str:
    """Where the collector tells a node which of its batches are in the store."""
    return f"{PREFIX}/nodes/{node}/receipts"


def control(node: str) -> str:
    return f"{PREFIX}/nodes/{node}/control"


def node_experiment(node: str, run: str) -> str:
    return f"{PREFIX}/nodes/{node}/experiments/{run}"


def group_experiment(group: str, run: str) -> str:
    return f"{PREFIX}/groups/{group}/experiments/{run}"


def all_nodes(kind: str) -> str:
    """Subscription filter for one kind of per-node topic, e.g. ``all_nodes("samples")``."""
    return f"{PREFIX}/nodes/+/{kind}"


def shared(group: str, topic_filter: str) -> str:
    """A shared-subscription filter: several subscribers in ``group`` split the messages."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def parse_node_topic(topic: str) -> tuple[str, str] | None:
    """``runlab/v1/nodes/N/kind`` → ``(N, kind)``; anything else → None."""
    m = _NODE_TOPIC.match(topic)
    return (m.group(1), m.group(2)) if m else None
