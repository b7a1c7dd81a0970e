"""One connection in a child of qmail-esmtpd-server: tcpserver's part, then the session.

What tcpserver does between fork and exec happens here in the same order:
the TCP variables, the rules (deny, or their variables on top), the `pid`
and `ok`/`deny` log lines, the socket on fds 0 and 1.  Then the very
session code tcpserver mode runs (`cli.main`), with the preloaded TLS
context, and the child's exit status is the session's.
"""

import os
import posix
import signal
import sys

from . import log as logmodule
from .log import log
from .tcprules import RulesFile, RulesUnreadable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from .preload import PreloadedTLS

DENIED = 100  # tcpserver's exit status for a connection its rules deny
TROUBLE = 111


class Listening:
    """What every child shares: how the server was told to behave."""

    def __init__(self, rules: RulesFile | None, localhost: bytes | None, verbose: bool,
                 session_argv: list[str], tls: "PreloadedTLS") -> None:
        self.rules = rules
        self.localhost = localhost
        self.verbose = verbose
        self.session_argv = session_argv
        self.tls = tls


def setenv(name: bytes, value: bytes | None) -> None:
    """Set (None: remove) a variable for the session and for what it starts.

    posix.environ is what the session reads and hands to qmail-queue;
    putenv() is what libpq's getenv() sees.
    """
    if value is None:
        posix.environ.pop(name, None)
        os.unsetenv(name)
    else:
        posix.environ[name] = value
        os.putenv(name, value)


def tcp_environment(local: tuple, remote: tuple, localhost: bytes | None) -> \
        list[tuple[bytes, bytes | None]]:
    """tcpserver -H -R's variables: no remote host name, no remote info."""
    return [(b"PROTO", b"TCP"),
            (b"TCPLOCALIP", local[0].encode()), (b"TCPLOCALPORT", str(local[1]).encode()),
            (b"TCPLOCALHOST", localhost),
            (b"TCPREMOTEIP", remote[0].encode()), (b"TCPREMOTEPORT", str(remote[1]).encode()),
            (b"TCPREMOTEHOST", None), (b"TCPREMOTEINFO", None)]


def connection_line(word: str, local: tuple, remote: tuple, localhost: bytes | None) -> str:
    """tcpserver -v's `ok`/`deny` line: local name:ip:port, remote host:ip:info:port."""
    name = (localhost or b"").decode("ascii", "replace")
    return (f"{word} {posix.getpid()} {name}:{local[0]}:{local[1]} "
            f":{remote[0]}::{remote[1]}")


def reset_signals() -> None:
    """A session starts with the dispositions a freshly exec'd qmail-esmtpd has."""
    signal.set_wakeup_fd(-1)  # before the server's wakeup pipe is closed
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def run(conn: "socket.socket", listening: Listening) -> int:
    """Everything a child does with one accepted connection; its exit status."""
    reset_signals()
    local, remote = conn.getsockname(), conn.getpeername()
    if listening.verbose:
        log(f"pid {posix.getpid()} from {remote[0]}")
    for name, value in tcp_environment(local, remote, listening.localhost):
        setenv(name, value)
    deny = False
    if listening.rules is not None:
        try:
            rule = listening.rules.rule(remote[0].encode())
        except RulesUnreadable as e:
            log(f"warning: dropping connection, unable to read {e}")
            return TROUBLE
        deny = rule.deny
        for name, value in rule.variables:
            setenv(name, value)
    if listening.verbose:
        log(connection_line("deny" if deny else "ok", local, remote, listening.localhost))
    if deny:
        return DENIED
    fd = conn.detach()
    posix.dup2(fd, 0)
    posix.dup2(fd, 1)
    posix.close(fd)
    logmodule.PROGRAM = "qmail-esmtpd"
    sys.argv = ["qmail-esmtpd", *listening.session_argv]
    from .cli import main

    return main(listening.tls)


def refuse(conn: "socket.socket", reply: bytes, listening: Listening) -> int:
    """A source over its limit: qmail's 421 from the child, never from the server."""
    reset_signals()
    local, remote = conn.getsockname(), conn.getpeername()
    if listening.verbose:
        log(connection_line("limit", local, remote, listening.localhost))
    conn.settimeout(10)
    try:
        conn.sendall(reply)
    except OSError:
        pass
    conn.close()
    return DENIED
