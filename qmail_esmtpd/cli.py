"""`qmail-esmtpd`: read the configuration once, wire the adapters, run the session.

Start-up cost is paid once per connection (tcpserver forks us for each), so
this path imports only cheap standard modules; anything heavier is imported
where it is needed.
"""

import posix
import sys

from . import replies
from .config import DEFAULT_CONTROL, ControlError, Controls, Settings
from .lineio import Channel
from .localips import LocalIPs
from .pgdb import configured_conninfo
from .protocol import Peer, Session
from .queue import DEFAULT_QUEUE, QueueJob
from .rcpthosts import RcptHosts
from .server import serve

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
        conninfo = configured_conninfo(env, controls)
        auth = limits = None
        max_failures = 1
        if checkpassword or conninfo is not None:
            from .auth import Authenticator, AuthSettings, backend_for

            auth_settings = AuthSettings(controls, env)
            backend, limits = backend_for(checkpassword, conninfo, auth_settings, log)
            auth = Authenticator(backend, settings.remoteip, auth_settings.fail_delay, log)
            max_failures = auth_settings.max_failures
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
        is_local_ip=LocalIPs(),
        auth=auth,
        limits=limits,
        databytes=settings.databytes,
        max_auth_failures=max_failures,
    )
    program = env.get(b"QMAILQUEUE", DEFAULT_QUEUE)

    def open_queue() -> QueueJob:
        return QueueJob(program, {**env, **session.child_environment()})

    channel = Channel(settings.timeout)
    try:
        return serve(session, channel, settings.databytes, open_queue)
    except Exception as e:  # a bug: tell the client plainly, keep the trace in the log
        log(f"internal error: {type(e).__name__}: {e}")
        _say(replies.INTERNAL_ERROR)
        return 1
    finally:
        if limits is not None:
            limits.db.close()


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
