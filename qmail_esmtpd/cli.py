"""`qmail-esmtpd`: read the configuration once, wire the adapters, run the session.

Start-up cost is paid once per connection (tcpserver forks us for each), so
this path imports only cheap standard modules; anything heavier is imported
where it is needed.
"""

import posix
import sys

from . import replies
from .config import DEFAULT_CONTROL, ControlError, Controls, Settings, authdb_conninfo
from .lineio import Channel
from .protocol import Peer, Session
from .queue import DEFAULT_QUEUE, QueueJob
from .rcpthosts import RcptHosts
from .server import serve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .auth import Authenticator
    from .sasl import AuthOutcome

QMAIL_HOME = b"/var/qmail"


def log(message: str) -> None:
    """One line on stderr (multilog under supervise); never fatal."""
    try:
        posix.write(2, f"qmail-esmtpd: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def main() -> int:
    env = posix.environ
    controls = Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL))
    try:
        settings = Settings(controls, env)
        checkpassword = [arg.encode("utf-8", "surrogateescape") for arg in sys.argv[1:]]
        conninfo = authdb_conninfo(env, controls)
        auth = None
        if checkpassword or conninfo is not None:
            auth = AuthOnDemand(checkpassword, conninfo, controls, env, settings.remoteip)
    except ControlError as e:
        log(f"fatal: {e}")
        _say(replies.CONTROLS)
        return 1
    try:
        posix.chdir(QMAIL_HOME)  # qmail-queue expects to run in the qmail home
    except OSError:
        pass
    session = Session(
        settings.greeting,
        Peer(settings.remoteip, settings.remotehost, settings.remoteinfo, settings.local),
        relayclient=settings.relayclient,
        rcpt_allowed=RcptHosts(settings.rcpthosts, settings.morercpthosts),
        badmailfrom=settings.badmailfrom,
        localiphost=settings.localiphost,
        is_local_ip=is_local_ip,
        auth=auth,
        databytes=settings.databytes,
    )
    program = env.get(b"QMAILQUEUE", DEFAULT_QUEUE)

    def open_queue() -> QueueJob:
        return QueueJob(program, {**env, **session.child_environment()})

    channel = Channel(settings.timeout)
    try:
        return serve(session, channel, open_queue)
    except Exception:  # a bug: tell the client plainly, keep the trace in the log
        import traceback

        for line in traceback.format_exc().splitlines():
            log(f"internal error: {line}")
        _say(replies.INTERNAL_ERROR)
        return 1
    finally:
        if auth is not None:
            auth.close()


class AuthOnDemand:
    """AUTH is offered from the greeting on, but its code (and the control files
    it reads) load at the first AUTH command, so sessions that never use it do
    not pay for it.  Quacks like auth.Authenticator for the protocol core."""

    def __init__(self, checkpassword: list[bytes], conninfo: str | None, controls: Controls,
                 env: "Mapping[bytes, bytes]", remoteip: bytes) -> None:
        self.how = (checkpassword, conninfo, controls, env, remoteip)
        self.real: "Authenticator | None" = None

    def _load(self) -> "Authenticator":
        if self.real is None:
            from .auth import authenticator

            self.real = authenticator(*self.how, log)
        return self.real

    def check(self, user: bytes, password: bytes, mechanism: bytes) -> "AuthOutcome":
        try:
            real = self._load()
        except Exception as e:  # e.g. an unreadable control/authfaildelay
            from .sasl import AuthOutcome

            log(f"auth unavailable: {type(e).__name__}: {e}")
            return AuthOutcome(False, tempfail=replies.AUTH_TEMP_DB)
        return real.check(user, password, mechanism)

    @property
    def max_failures(self) -> int:
        return self._load().max_failures

    def close(self) -> None:
        if self.real is not None:
            self.real.close()


def is_local_ip(ip: str) -> bool:
    """For `user@[a.b.c.d]` only: the address table loads on the first literal."""
    from .localips import is_local_ip

    return is_local_ip(ip)


def _say(reply: bytes) -> None:
    try:
        posix.write(1, reply)
    except OSError:
        pass


def run() -> None:
    """The program: main(), then exit without interpreter teardown.

    Nothing is left to flush (all output goes through raw fds), and skipping
    finalization saves about 1 ms of CPU per connection.
    """
    posix._exit(main())
