"""This machine's own IPv4 addresses, for the `user@[our.ip]` rewrite.

qmail asks the interfaces at start-up; we read the kernel's local routing
table instead, and only when an address literal actually shows up, so a
normal session pays nothing for it (cli imports this module on demand).
"""

FIB_TRIE = "/proc/net/fib_trie"


class LocalIPs:
    """Callable: `local_ips("a.b.c.d") -> bool`; 0.0.0.0 always counts, as in qmail."""

    def __init__(self, source: str = FIB_TRIE) -> None:
        self.source = source
        self._ips: set[str] | None = None

    def __call__(self, ip: str) -> bool:
        if self._ips is None:
            self._ips = self._load()
        return ip in self._ips

    def _load(self) -> set[str]:
        ips = {"0.0.0.0"}
        try:
            with open(self.source) as f:
                last = None
                for line in f:
                    text = line.strip()
                    if text.startswith("|-- "):
                        last = text[4:]
                    elif text == "/32 host LOCAL" and last:
                        ips.add(last)
        except OSError:
            ips.add("127.0.0.1")
        return ips


_this_machine = LocalIPs()


def is_local_ip(ip: str) -> bool:
    """Is `ip` one of this machine's IPv4 addresses?  Read once a session, on first use."""
    return _this_machine(ip)


def forget() -> None:
    """Read the table again at the next literal: a worker's next session may
    run after the machine's addresses changed."""
    _this_machine._ips = None
