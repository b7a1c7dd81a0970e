"""A network namespace of the test's own, for clients at many IPv6 addresses.

The loopback interface has one IPv6 address (::1); a table of IPv6 sources
needs more.  own_network() moves the calling thread (and every process it
starts from then on: servers, tcprules, sessions) into a new network
namespace with loopback up and the given addresses on it, and back when the
block ends.  Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
"""

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


@contextmanager
def own_network(addresses: list[str]) -> Iterator[None]:
    """This thread in a new network namespace: lo up (127.0.0.0/8, ::1) and
    each of `addresses` on it (IPv6, /128, usable at once)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as before:
        _call(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            for address in addresses:
                subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo",
                                "nodad"], check=True, capture_output=True)
            yield
        finally:
            _call(libc.setns(before.fileno(), CLONE_NEWNET), "setns back")
