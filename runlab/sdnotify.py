"""sd_notify(3) without a dependency: tell systemd READY / WATCHDOG / STOPPING over $NOTIFY_SOCKET.

The units are ``Type=notify`` with ``WatchdogSec=``: systemd marks the service started only once the
process says READY=1 (so ``systemctl start`` returns when the agent really runs) and restarts it when
the main loop stops sending WATCHDOG=1 (a wedged event loop, not only a dead process). Outside systemd
$NOTIFY_SOCKET is unset and every call is a no-op costing one dict lookup.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """One datagram socket to systemd's notify socket; ``watchdog()`` is rate-limited to half the period."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr.startswith("@"):  # abstract namespace socket
            self._addr = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self._addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ours else 0.0
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); False when not under systemd or the send failed."""
        if self._addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._addr)
                s.sendall(state.encode())
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """WATCHDOG=1 at most every half WatchdogSec; call it from the loop whose liveness it proves."""
        if not self.watchdog_interval or self._addr is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")
