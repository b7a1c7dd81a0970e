"""One connection in a child of qmail-esmtpd-server: tcpserver's part, then the session.

What tcpserver does between fork and exec happens here in the same order:
the TCP variables (Debian's ucspi-tcp-ipv6 tcpserver's: the TCP6 ones too,
addresses written as tcpaddress.py says), the rules (deny, or their
variables on top), the `pid` and `ok`/`deny` log lines, the socket on fds
0 and 1.  Then the very
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
from .tcpaddress import proto, tcp_ips
from .tcprules import Rule, RulesUnreadable
from .upgrade import REFUSED, Upgraded

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from .preload import PreloadedTLS

DENIED = 100  # tcpserver's exit status for a connection its rules deny
TROUBLE = 111


class ChildSettings:
    """What every session child shares: how the server was told to behave."""

    def __init__(self, localhost: bytes | None, verbose: bool,
                 session_argv: list[str], tls: "PreloadedTLS", force6: bool = False) -> None:
        self.localhost = localhost
        self.verbose = verbose
        self.session_argv = session_argv
        self.tls = tls
        self.force6 = force6  # -6: IPv4 clients written as ::ffff:a.b.c.d, PROTO=TCP6


class Remote:
    """The client as the server found it at accept(): TCPREMOTEIP's text (what
    the rules were looked up by), TCP6REMOTEIP's, and the port."""

    __slots__ = ("ip", "ip6", "port")

    def __init__(self, ip: str, ip6: str, port: int) -> None:
        self.ip = ip
        self.ip6 = ip6
        self.port = port


class Local:
    """The server's end of the connection, from getsockname(); `interface`:
    TCP6INTERFACE, the name of a link-local address's scope."""

    __slots__ = ("ip", "ip6", "port", "interface")

    def __init__(self, sockname: tuple, force6: bool) -> None:
        self.ip, self.ip6 = tcp_ips(sockname[0], force6)
        self.port = sockname[1]
        self.interface: bytes | None = None
        if len(sockname) == 4 and sockname[3] and ":" in self.ip:
            import socket

            try:
                self.interface = socket.if_indextoname(sockname[3]).encode()
            except OSError:
                pass


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


def tcp_environment(local: Local, remote: Remote, localhost: bytes | None) -> \
        list[tuple[bytes, bytes | None]]:
    """ucspi-tcp-ipv6's tcpserver -H -R's variables: no remote host name, no
    remote info; each TCP variable has its TCP6 twin.  TCP6INTERFACE is set
    only for a link-local address, as there."""
    local_port, remote_port = str(local.port).encode(), str(remote.port).encode()
    variables = [(b"PROTO", proto(remote.ip)),
                 (b"TCPLOCALIP", local.ip.encode()), (b"TCP6LOCALIP", local.ip6.encode()),
                 (b"TCPLOCALPORT", local_port), (b"TCP6LOCALPORT", local_port),
                 (b"TCPLOCALHOST", localhost), (b"TCP6LOCALHOST", localhost),
                 (b"TCPREMOTEIP", remote.ip.encode()), (b"TCP6REMOTEIP", remote.ip6.encode()),
                 (b"TCPREMOTEPORT", remote_port), (b"TCP6REMOTEPORT", remote_port),
                 (b"TCPREMOTEHOST", None), (b"TCP6REMOTEHOST", None),
                 (b"TCPREMOTEINFO", None), (b"TCP6REMOTEINFO", None)]
    if local.interface is not None:
        variables.append((b"TCP6INTERFACE", local.interface))
    return variables


def connection_line(word: str, local: Local, remote: Remote, localhost: bytes | None) -> str:
    """tcpserver -v's `ok`/`deny` line: local name:ip:port, remote host:ip:info:port,
    the addresses as TCPLOCALIP and TCPREMOTEIP have them."""
    name = (localhost or b"").decode("ascii", "replace")
    return (f"{word} {posix.getpid()} {name}:{local.ip}:{local.port} "
            f":{remote.ip}::{remote.port}")


def reset_signals() -> None:
    """A session starts with the dispositions a freshly exec'd qmail-esmtpd has."""
    _signal.set_wakeup_fd(-1)  # before the server's wakeup pipe is closed
    for signum in (_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_DFL)


def run(conn: "socket.socket", remote: Remote, settings: ChildSettings,
        rule: "Rule | RulesUnreadable") -> int:
    """Everything a child does with one accepted connection; its exit status.
    `remote` is the client's address as accept() gave it (a client that
    reset the connection since has no peer name left to ask for); `rule`
    is what the server found for it in its rules (ALLOW_ALL without a
    rules file)."""
    reset_signals()
    if settings.verbose:
        log(f"pid {posix.getpid()} from {remote.ip}")
    local = local_address(conn, settings.force6)
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
    try:
        return session_main(settings.tls)
    except Upgraded as e:  # needed a module of a newer install: none of it ran
        log(f"warning: ip={remote.ip}: {e}")
        try:
            posix.write(1, REFUSED)
        except OSError:
            pass
        return TROUBLE


def local_address(conn: "socket.socket", force6: bool) -> Local | None:
    """getsockname(), as tcpserver asks it; None (logged, tcpserver's words) if that fails."""
    try:
        return Local(conn.getsockname(), force6)
    except OSError as e:
        log(f"warning: dropping connection, unable to get local address: {e.strerror}")
        return None


def refuse(conn: "socket.socket", remote: Remote, reply: bytes | None,
           settings: ChildSettings) -> int:
    """A source over its limit: qmail's 421 from the child, never from the server;
    None: closed without a byte (a TLS port, where cleartext would be noise)."""
    reset_signals()
    local = local_address(conn, settings.force6)
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
