"""Workers: warm processes that serve many connections, one at a time (-m N).

A fork per connection costs a CPython server about a millisecond before its
session does anything; Postfix's smtpd avoids that by serving up to
`max_use` connections per process.  Here the server still accepts, looks
up the rules and counts -c and -C itself, exactly as it does before a
fork; instead of forking it hands the connection (SCM_RIGHTS) and what it
found for it to an idle worker over that worker's own socketpair.  The
worker runs the very code a forked child runs (child.py), puts back what a
session may change in a process (`Baseline`), and answers with the
session's exit status, from which the server writes tcpserver's `end` line
and frees the slot.

Nothing of one session may reach the next: the environment, the signal
dispositions, the alarm, fds 0 and 1, the working folder and the caches a
session fills are put back after each one; a worker that holds a
descriptor it did not hold before, or that grew past its memory bound,
is retired instead of trusted.  A worker that crashes or hangs takes only
its own connection.  The server retires idle workers after -W seconds,
every worker at SIGHUP (each after its session), and each after -m
connections.
"""

import array  # noqa: F401  (socket.send_fds and recv_fds import it: loaded before the server drops privileges)
import marshal
import posix
import socket
import sys

from . import config, kept
from . import log as logmodule
from .child import TROUBLE, ChildSettings, Remote, refuse, reset_signals, run
from .log import log
from .preload import controls_from_environment
from .tcprules import Rule, RulesUnreadable

# what a worker's answer says besides the status
CARRY_ON = 0
RETIRING = 1  # it exits after this answer (grown, or holding a stray descriptor)
MESSAGE_MAX = 1 << 20  # a rule's variables fit many times over
FD_FOLDER = "/proc/self/fd"
PAGE_SIZE = posix.sysconf("SC_PAGE_SIZE")


class Worker:
    """The server's side of one worker: its pid, its channel, what it serves."""

    __slots__ = ("pid", "channel", "source", "busy", "served", "retiring", "idle_since")

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel
        self.source = ""  # counted against -C while busy ("" when not counted)
        self.busy = False
        self.served = 0
        self.retiring = False  # no connection is handed to it any more
        self.idle_since = 0.0


def encode(remote: Remote, rule: "Rule | RulesUnreadable", refusal: bytes | None,
           over: bool) -> bytes:
    """One connection's hand-over, in marshal's format (plain values only)."""
    if isinstance(rule, RulesUnreadable):
        found: tuple = (None, str(rule))
    else:
        found = (rule.deny, tuple(rule.variables))
    return marshal.dumps((remote.ip, remote.ip6, remote.port, found, refusal, over))


def decode(message: bytes) -> "tuple[Remote, Rule | RulesUnreadable, bytes | None, bool]":
    ip, ip6, port, found, refusal, over = marshal.loads(message)
    deny, value = found
    rule = RulesUnreadable(value) if deny is None else Rule(deny, list(value))
    return Remote(ip, ip6, port), rule, refusal, over


def resident_bytes() -> int:
    """VmRSS, from /proc/self/statm (one read)."""
    fd = posix.open("/proc/self/statm", posix.O_RDONLY)
    try:
        return int(posix.read(fd, 128).split()[1]) * PAGE_SIZE
    finally:
        posix.close(fd)


def open_descriptors() -> set[int]:
    """The fds open now (the listing's own, closed by the time it returns, left out)."""
    return {fd for fd in map(int, posix.listdir(FD_FOLDER)) if is_open(fd)}


def what_is(fd: int) -> str:
    """What /proc says fd is (a path, socket:[inode], ...), for the log line."""
    try:
        return posix.readlink(f"{FD_FOLDER}/{fd}")
    except OSError:
        return "?"


def is_open(fd: int) -> bool:
    try:
        posix.fstat(fd)
    except OSError:
        return False
    return True


class Baseline:
    """What the worker's process was before its first session, and puts back after each."""

    def __init__(self, growth_allowed: int) -> None:
        self.environ = dict(posix.environ)
        self.cwd = posix.getcwd()
        self.program = logmodule.PROGRAM
        self.resident = resident_bytes()
        self.growth_allowed = growth_allowed
        self.descriptors = open_descriptors()
        self.controls = controls_from_environment()  # the server's control folder
        # the database connection a worker keeps between sessions (auth/db.py):
        # only where the server loaded the database code, that is AUTH is configured
        db = sys.modules.get("qmail_esmtpd.auth.db")
        self.kept = db.keep_connections() if db is not None else None

    def restore(self, rule: "Rule | RulesUnreadable") -> None:
        """Everything a session may have changed in the process, as it was."""
        import _signal

        from . import localips

        _signal.setitimer(_signal.ITIMER_REAL, 0)  # an alarm left armed (lineio's
        # handler stays: it does nothing unless a read or write is under way)
        null = posix.open("/dev/null", posix.O_RDWR)
        posix.dup2(null, 0)  # the connection closed here, if the session left it open
        posix.dup2(null, 1)
        posix.close(null)
        if isinstance(rule, Rule):  # libpq's copy (child.setenv putenv()s a rule's variables)
            for name, _ in rule.variables:
                if not name:
                    continue
                if name in self.environ:
                    posix.putenv(name, self.environ[name])
                else:
                    posix.unsetenv(name)
        posix.environ.clear()
        posix.environ.update(self.environ)
        try:
            posix.chdir(self.cwd)
        except OSError:
            pass
        logmodule.PROGRAM = self.program
        localips.forget()

    def why_retire(self) -> str | None:
        """Why this process must not serve another connection, if it must not."""
        stray = open_descriptors() - self.descriptors
        if self.kept is not None:
            stray.discard(self.kept.descriptor())
        if stray:
            return "descriptors left open by the session: " + ", ".join(
                f"{fd} {what_is(fd)}" for fd in sorted(stray))
        grown = resident_bytes() - self.resident
        if grown > self.growth_allowed:
            return f"memory grew by {grown >> 20} MB (more than {self.growth_allowed >> 20} MB)"
        return None


def serve_connections(channel: socket.socket, settings: ChildSettings,
                      growth_allowed: int) -> int:
    """The worker's life: connections from the server, one at a time, until
    the server closes the channel (exit 0) or the worker retires itself."""
    reset_signals()
    config.KEPT = kept.KeptFiles()  # files sessions use while unchanged (kept.py)
    baseline = Baseline(growth_allowed)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, MESSAGE_MAX, 1)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not message:  # the server retired us
            for fd in fds:
                posix.close(fd)
            return 0
        if len(fds) != 1:
            log("warning: worker: a hand-over without its connection")
            for fd in fds:
                posix.close(fd)
            channel.send(bytes((TROUBLE, RETIRING)))
            return 0
        settings.tls.refresh(baseline.controls)  # a replaced certificate: loaded once, here
        status, why = serve_one(fds[0], message, settings, baseline)
        try:
            channel.send(bytes((status & 0xFF, RETIRING if why else CARRY_ON)))
        except OSError:
            return 0
        if why:
            log(f"worker {posix.getpid()} retired: {why}")
            return 0


def serve_one(fd: int, message: bytes, settings: ChildSettings,
              baseline: Baseline) -> tuple[int, str | None]:
    """One connection as a forked child would serve it; its status, and why
    the worker must retire after it (None: it may serve the next)."""
    conn = socket.socket(fileno=fd)
    status = TROUBLE
    rule: "Rule | RulesUnreadable" = Rule(True, [])
    try:
        remote, rule, refusal, over = decode(message)
        status = refuse(conn, remote, refusal, settings) if over \
            else run(conn, remote, settings, rule)
    except BaseException as e:  # a bug: the worker's state can no longer be trusted
        log(f"session failed: {type(e).__name__}: {e}")
        status = TROUBLE
        conn.close()
        baseline.restore(rule)
        return status, "a session failed"
    conn.close()
    baseline.restore(rule)
    if not isinstance(status, int):
        status = TROUBLE
    return status, baseline.why_retire()

