"""Simulated agents: publish valid wire-v1 ``SampleBatch`` messages with QoS 1 at a set rate.

One process simulates ``--nodes`` nodes (``{prefix}n000``…), publishing round robin
to ``runlab/v1/nodes/{node}/samples``; every message holds ``--samples`` host
samples stamped when the message is made (bench/fleet.py). Run several
processes for more load: each has its own GIL and its own broker connection.

Real agents run on other machines; here the generator shares the two cores with
the pipeline it measures, so it is made cheap: payloads are rendered from
templates and MQTT 3.1.1 is spoken directly on the socket (CONNECT, PUBLISH with
QoS 1, PUBACK; a window of unacknowledged messages like any client's), about a
tenth of paho's CPU per message. At the end it waits for the broker's PUBACK of
everything it published and prints one JSON line: ``offered`` counts host
samples in messages the broker acknowledged.

    .venv/bin/python bench/simagents.py --url mqtt://127.0.0.1:1883 --rate 50000 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

import fleet

from runlab import topics, wire

TICK = 0.005  # publish what is due every 5 ms


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


class Publisher:
    """A minimal MQTT 3.1.1 QoS 1 publisher: clean session, no keepalive, a window of unacked messages."""

    def __init__(self, host: str, port: int, client_id: str, window: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0) + _utf8(client_id)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = self._read_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the connection: {connack!r}")
        self.window = threading.Semaphore(window)
        self.acked = 0
        self._next_id = 0
        self._closing = False
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _read_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def _read_acks(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                if not self._closing:
                    print("simagents: the broker closed the connection", file=sys.stderr)
                return
            buf += chunk
            n = len(buf) // 4  # only PUBACKs (4 bytes each) come back to a publisher
            if any(buf[4 * i] != 0x40 for i in range(n)):
                raise RuntimeError("unexpected packet from the broker")
            self.acked += n
            for _ in range(n):
                self.window.release()
            buf = buf[4 * n:]

    def packet(self, topic: bytes, payload: bytes) -> bytes:
        """A QoS 1 PUBLISH; waits while the window of unacknowledged messages is full."""
        self.window.acquire()
        self._next_id = self._next_id % 65535 + 1
        rest = topic + struct.pack(">H", self._next_id)
        return b"\x32" + _varint(len(rest) + len(payload)) + rest + payload

    def send(self, packets: list[bytes]) -> None:
        self.sock.sendall(b"".join(packets))

    def close(self) -> None:
        self._closing = True
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="mqtt://HOST:PORT")
    p.add_argument("--prefix", default="g0", help="node name prefix, unique per generator process")
    p.add_argument("--rate", type=float, required=True, help="host samples per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--variants", type=int, default=8, help="distinct field values per node")
    p.add_argument("--probe-every", type=int, default=0, help="add a probe sample to every Nth message")
    p.add_argument("--window", type=int, default=1000, help="unacknowledged QoS 1 messages at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--end-marker", action="store_true", help="finish with one bench_end sample")
    args = p.parse_args(argv)

    plain = fleet.templates(args.prefix, args.nodes, args.samples, args.variants, args.seed)
    probed = (fleet.templates(args.prefix, args.nodes, args.samples, 1, args.seed + 7, probe_tag=args.prefix)
              if args.probe_every else None)
    topic_bytes = [_utf8(t[0].topic) for t in plain]
    u = urlsplit(args.url)
    pub = Publisher(u.hostname or "127.0.0.1", u.port or 1883, f"bench-{args.prefix}", args.window)

    n_nodes = args.nodes
    seqs = [0] * n_nodes
    last_ts = [0] * n_nodes
    msg_rate = args.rate / args.samples
    published = probes = 0
    started_ns = time.time_ns()
    t0 = time.monotonic()
    end = t0 + args.seconds
    behind_max = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = min(int((now - t0) * msg_rate) + 1, int(args.seconds * msg_rate))
        behind_max = max(behind_max, due - published)
        packets = []
        while published < due:
            k = published
            node = k % n_nodes
            if probed is not None and k % args.probe_every == 0:
                tpl = probed[node][0]
                probes += 1
            else:
                variants = plain[node]
                tpl = variants[(k // n_nodes) % len(variants)]
            ts = last_ts[node] = max(time.time_ns(), last_ts[node] + tpl.span_ns + fleet.SPACING_NS)
            packets.append(pub.packet(topic_bytes[node], tpl.render(seqs[node], ts)))
            seqs[node] += 1
            published += 1
            if len(packets) >= 64:
                pub.send(packets)
                packets = []
        if packets:
            pub.send(packets)
        time.sleep(max(0.0, min(TICK, t0 + published / msg_rate - time.monotonic())))
    stopped_ns = time.time_ns()
    elapsed = time.monotonic() - t0
    total = published
    if args.end_marker:
        node_name = fleet.node_names(args.prefix, n_nodes)[0]
        marker = wire.SampleBatch(v=wire.WIRE_VERSION, node=node_name, boot="bench", seq=seqs[0], samples=[
            wire.Sample(ts=time.time_ns(), name="bench_end", tags={"gen": args.prefix},
                        fields={"messages": published})])
        pub.send([pub.packet(_utf8(topics.samples(node_name)), wire.encode(marker))])
        total += 1
    deadline = time.monotonic() + 300
    while pub.acked < total and time.monotonic() < deadline:
        time.sleep(0.01)
    acked = pub.acked
    pub.close()
    acked_host = min(acked, published)
    print(json.dumps({
        "prefix": args.prefix, "messages": published, "acked_messages": acked_host, "probes": probes,
        "offered": acked_host * args.samples, "published_samples": published * args.samples,
        "started_ns": started_ns, "stopped_ns": stopped_ns, "seconds": elapsed,
        "offered_rate": published * args.samples / elapsed, "max_behind_messages": behind_max,
    }), flush=True)
    return 0 if acked >= total else 1


if __name__ == "__main__":
    sys.exit(main())
