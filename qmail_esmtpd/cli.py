"""`qmail-esmtpd`: read the configuration once, wire the adapters, run the session.

Start-up cost is paid once per connection (tcpserver forks us for each), so
this path imports only cheap standard modules; anything heavier is imported
where it is needed (AUTH at the first AUTH command).
"""

import gc  # built in
import posix
import sys

from . import replies
from .config import SERVERCERT, ControlError, Settings, configured_checks
from .lineio import Channel
from .protocol import Checks, Peer, Session
from .queue import QueueJob
from .server import serve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .auth import Authenticator
    from .tls import ServerTLS

    OpenTLS = Callable[[bytes, bytes | None, bytes | None], ServerTLS]


def main(preloaded_tls: "OpenTLS | None" = None) -> int:
    """One session on fds 0/1.  `preloaded_tls(certfile, ciphers, remoteip)` is how
    qmail-esmtpd-server hands its session a certificate it loaded once."""
    env = posix.environ
    client = env.get(b"TCPREMOTEIP", b"unknown").decode("ascii", "replace")  # for log lines
    try:
        settings = Settings(env, [arg.encode("utf-8", "surrogateescape") for arg in sys.argv[1:]])
        if settings.smtpauth == b"!" and settings.auth_backend is None:
            note(f"SMTPAUTH=! but no AUTH is configured ip={client}: every MAIL gets 530")
        session_checks = Checks.assemble(configured_checks(settings))
    except ControlError as e:
        note(f"fatal ip={client}: {e}")
        _say(replies.CONTROLS)
        return 1
    auth: "Authenticator | None" = None
    if settings.auth_backend is not None:
        from .auth import Authenticator

        auth = Authenticator(*settings.auth_backend, settings.controls, env, settings.remoteip)
    # qmail-smtpd dies when it cannot chdir to the qmail home; we go on: only
    # checkpassword programs may expect it (qmail-queue changes there itself).
    try:
        posix.chdir(settings.paths.home)
    except OSError:
        pass
    session = Session(
        settings.greeting,
        Peer(settings.remoteip, settings.remotehost, settings.remoteinfo, settings.localhost),
        relayclient=settings.relayclient,
        localiphost=settings.localiphost,
        is_local_ip=is_local_ip,
        auth=auth,
        databytes=settings.databytes,
        tls_offered=settings.tls_offered,
        auth_needs_tls=settings.auth_needs_tls,
        auth_required=settings.smtpauth == b"!",
        checks=session_checks,
        note=note,
    )

    def open_queue() -> QueueJob:
        child_env = {**env, **session.child_environment()}
        for changes in session_checks.environment:  # qmail-spp's S and U
            for name, value in changes().items():
                if value is None:
                    child_env.pop(name, None)
                else:
                    child_env[name] = value
        return QueueJob(settings.paths.queue, child_env)

    def open_tls() -> "ServerTLS":
        from .tls import ServerTLS, cipher_list  # `ssl` loads only when TLS is asked for

        controls = settings.controls
        certfile, ciphers = controls.path(SERVERCERT), cipher_list(env, controls)
        if preloaded_tls is not None:
            return preloaded_tls(certfile, ciphers, settings.remoteip)
        return ServerTLS(certfile, ciphers, settings.remoteip)

    channel = Channel(settings.timeout)
    try:
        return serve(session, channel, open_queue, open_tls, smtps=b"SMTPS" in env)
    except Exception:  # a bug: tell the client plainly, keep the trace in the log
        import traceback

        for line in traceback.format_exc().splitlines():
            note(f"internal error ip={client}: {line}")
        _say(replies.INTERNAL_ERROR)
        return 1
    finally:
        if auth is not None:
            auth.close()


def note(text: str) -> None:
    """One log line; the log module loads only when there is one to write."""
    from .log import log

    log(text)


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

    Nothing is left to flush (all output goes through raw fds), and
    finalization would be CPU spent once per connection for nothing.  What
    the imports made lives as long as the process: gc.freeze() keeps the
    collector from walking it again each time the session's own objects
    pass a threshold (as the warm server does before it forks).
    Only an exact first argument --help or --version is ours: the others are
    the AUTH patch's checkpassword command line.
    """
    if len(sys.argv) > 1 and sys.argv[1] in ("--help", "--version"):
        posix._exit(_about(sys.argv[1]))
    gc.freeze()
    posix._exit(main())


USAGE = "usage: qmail-esmtpd [checkpassword subprogram [arg ...]]"


def _about(argument: str) -> int:
    """--help or --version on stdout, nothing else: no session, no log line."""
    from . import about

    _say(about("qmail-esmtpd", USAGE, argument).encode())
    return 0
