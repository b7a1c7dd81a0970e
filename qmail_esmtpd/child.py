"""One connection in a child of qmail-esmtpd-server: tcpserver's part, then the session.

What tcpserver does between fork and exec happens here in the same order:
the TCP variables, the rules (deny, or their variables on top), the `pid`
and `ok`/`deny` log lines, the socket on fds 0 and 1.  Then the very
session code tcpserver mode runs (`cli.main`), with the preloaded TLS
context, and the child's exit status is the session's.
"""

import _signal  # not `signal`, whose signal.signal() builds enums: pages every child copies
import os
import posix
import sys

from . import log as logmodule
from .cli import main as session_main
from .log import log
from .tcprules import Rule, RulesUnreadable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from .preload import PreloadedTLS

DENIED = 100  # tcpserver's exit status for a connection its rules deny
TROUBLE = 111


class ChildSettings:
    """What every session child shares: how the server was told to behave."""

    def __init__(self, localhost: bytes | None, verbose: bool,
                 session_argv: list[str], tls: "PreloadedTLS") -> None:
        self.localhost = localhost
        self.verbose = verbose
        self.session_argv = session_argv
        self.tls = tls


def setenv(name: bytes, value: bytes | None, for_libpq: bool = True) -> None:
    """Set (None: remove) a variable for the session and for what it starts.

    posix.environ is what the session reads and hands to everything it
    spawns; putenv() is only for libpq's getenv(), which a rule's variable
    (PGSERVICE, say) may be meant for and tcpserver's TCP ones never are.
    """
    for_libpq = for_libpq and bool(name)  # `="x"` in the rules: putenv() refuses it
    if value is None:
        posix.environ.pop(name, None)
        if for_libpq:
            os.unsetenv(name)
    else:
        posix.environ[name] = value
        if for_libpq:
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
    _signal.set_wakeup_fd(-1)  # before the server's wakeup pipe is closed
    for signum in (_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_DFL)


def run(conn: "socket.socket", remote: tuple, settings: ChildSettings,
        rule: "Rule | RulesUnreadable") -> int:
    """Everything a child does with one accepted connection; its exit status.
    `remote` is the client's address as accept() gave it (a client that
    reset the connection since has no peer name left to ask for); `rule`
    is what the server found for it in its rules (ALLOW_ALL without a
    rules file)."""
    reset_signals()
    if settings.verbose:
        log(f"pid {posix.getpid()} from {remote[0]}")
    local = local_address(conn)
    if local is None:
        return TROUBLE
    for name, value in tcp_environment(local, remote, settings.localhost):
        setenv(name, value, for_libpq=False)
    if isinstance(rule, RulesUnreadable):
        log(f"warning: dropping connection, unable to read {rule}")
        return TROUBLE
    deny = rule.deny
    for name, value in rule.variables:
        setenv(name, value)
    if settings.verbose:
        log(connection_line("deny" if deny else "ok", local, remote, settings.localhost))
    if deny:
        return DENIED
    fd = conn.detach()
    posix.dup2(fd, 0)
    posix.dup2(fd, 1)
    posix.close(fd)
    logmodule.PROGRAM = "qmail-esmtpd"
    sys.argv = ["qmail-esmtpd", *settings.session_argv]
    return session_main(settings.tls)


def local_address(conn: "socket.socket") -> tuple | None:
    """getsockname(), as tcpserver asks it; None (logged, tcpserver's words) if that fails."""
    try:
        return conn.getsockname()
    except OSError as e:
        log(f"warning: dropping connection, unable to get local address: {e.strerror}")
        return None


def refuse(conn: "socket.socket", remote: tuple, reply: bytes | None,
           settings: ChildSettings) -> int:
    """A source over its limit: qmail's 421 from the child, never from the server;
    None: closed without a byte (a TLS port, where cleartext would be noise)."""
    reset_signals()
    local = local_address(conn)
    if local is None:
        return DENIED
    if settings.verbose:
        log(connection_line("limit", local, remote, settings.localhost))
    if reply is not None:
        conn.settimeout(10)
        try:
            conn.sendall(reply)
        except OSError:
            pass
    conn.close()
    return DENIED
