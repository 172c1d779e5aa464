"""A collector whose subscription the broker refuses says so, instead of silently receiving nothing.

Mosquitto 2 grants every subscription and filters by ACL at delivery (measured: a node user subscribing to
runlab/v1/nodes/+/samples gets SUBACK 0x01), so only brokers that refuse at SUBACK time (EMQX, HiveMQ,
VerneMQ) produce this error; the reason codes are fed in directly here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from collector.config import load_config
from collector.service import Collector


def test_refused_subscription_is_logged_with_the_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text("mqtt:\n  url: mqtt://127.0.0.1:9\n  username: node-a\n"
                    "influx:\n  url: http://127.0.0.1:9\n  api: v1\n  database: runlab\n"
                    f"quarantine:\n  path: {tmp_path / 'q.jsonl'}\n")
    col = Collector(load_config(str(path)))
    col._filters = ["runlab/v1/nodes/+/samples", "runlab/v1/nodes/+/status"]
    granted, refused = ReasonCode(PacketTypes.SUBACK, identifier=1), ReasonCode(PacketTypes.SUBACK, identifier=0x87)
    with caplog.at_level(logging.INFO, logger="runlab.collector"):
        col._on_subscribe(None, None, 1, [granted, granted], None)
        assert "subscribed to samples and status" in caplog.text
        caplog.clear()
        col._on_subscribe(None, None, 2, [refused, granted], None)
    assert "refused the subscription to runlab/v1/nodes/+/samples (Not authorized)" in caplog.text
    assert "'node-a'" in caplog.text and "subscribed to samples" not in caplog.text
