"""A ground-truth server for comparisons: comes up after --start-ms, then answers every HTTP/1.1 request (keep-alive)
after sleeping --delay-ms. Two of them with different delays are a known regression to detect.

--start-ms counts from the process's exec (its start time in /proc/self/stat, 10 ms ticks), not from when Python
got going: the interpreter's own start-up, which a busy machine makes noisy, does not move the ground truth.
"""

import os
import socket
import sys
import threading
import time


def serve(conn: socket.socket, delay: float) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            _, buf = buf.split(b"\r\n\r\n", 1)  # GET requests: no body
            if delay:
                time.sleep(delay)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")


def since_exec() -> float:
    """Seconds since this process was started (exec), from the kernel's own record."""
    with open("/proc/self/stat") as f:
        after_name = f.read().rsplit(")", 1)[1].split()
    started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def main() -> None:
    args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
    time.sleep(max(0.0, float(args.get("--start-ms", 0)) / 1000 - since_exec()))
    delay = float(args.get("--delay-ms", 0)) / 1000
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(args["--port"])))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, delay), daemon=True).start()


if __name__ == "__main__":
    main()
