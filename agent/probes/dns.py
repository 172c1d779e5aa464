"""DNS readiness: a UDP query answered with the expected rcode (and answer, if ``expect`` is given).

A server that is not listening yet answers with ICMP port unreachable, which fails the attempt at
once: the probe needs no long timeout to see a DNS server come up.
"""

from __future__ import annotations

from agent.dnsload import accepts, query
from agent.runtimes.base import Instance
from runlab.experiment import DnsQuery, Ready, fill


class DnsProbe:
    def __init__(self, q: DnsQuery, server: str, timeout: float) -> None:
        self.q, self.server, self.timeout = q, server, timeout
        self.last_error = ""

    async def check(self) -> bool:
        try:
            ans = await query(self.q, self.server, self.timeout)
        except (TimeoutError, OSError, ValueError) as e:
            self.last_error = type(e).__name__
            return False
        bad = accepts(self.q, ans)
        self.last_error = bad or ""
        return bad is None


def make(ready: Ready, values: dict[str, str], instance: Instance) -> DnsProbe:
    assert ready.dns is not None
    return DnsProbe(ready.dns, fill(ready.dns.server, values), float(ready.probe_timeout))
