#!/usr/bin/env python3
"""http-tps.py — a pgbench-shaped HTTP benchmark: C keep-alive clients, N requests in all, prints ``tps = X``.

Used by db-penalty.yaml where no database runs: the same "score parsed from a benchmark's output" path as
pgbench (``tps = 1234.5 (without initial connection time)``) or sysbench (``transactions: … (123.4 per sec.)``).
Standard library only, so it runs on any machine with Python 3.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: http-tps.py --url http://127.0.0.1:8080/ --requests 2000 -c 4")
    ap.add_argument("--url", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("-c", "--clients", type=int, default=4)
    a = ap.parse_args()
    u = urlsplit(a.url)
    per = max(1, a.requests // a.clients)
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=10)
        try:
            for _ in range(per):
                conn.request("GET", u.path or "/")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(f"HTTP {r.status}")
                    return
        except OSError as e:
            errors.append(str(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        print(f"http-tps: {len(errors)} client(s) failed: {errors[0]}", file=sys.stderr)
        return 1
    print(f"transactions: {per * a.clients}")
    print(f"tps = {per * a.clients / elapsed:.1f} (clients {a.clients})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
