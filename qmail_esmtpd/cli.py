"""`qmail-esmtpd`: read the configuration once, wire the adapters, run the session.

Start-up cost is paid once per connection (tcpserver forks us for each), so
this path imports only cheap standard modules; anything heavier is imported
where it is needed (AUTH at the first AUTH command).
"""

import posix
import sys

from . import replies
from .config import (
    DEFAULT_CONTROL,
    ControlError,
    Controls,
    Settings,
    auth_backend,
    clamp_seconds,
    flag_setting,
    number_setting,
)
from .lineio import Channel
from .protocol import AT_RCPT, Peer, Session, with_checks
from .queue import DEFAULT_QUEUE, QueueJob
from .rcpthosts import RcptHosts
from .server import serve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .auth import Authenticator
    from .tls import ServerTLS

    OpenTLS = Callable[[bytes, bytes | None, bytes | None], ServerTLS]

QMAIL_HOME = b"/var/qmail"
SERVERCERT = b"servercert.pem"  # the TLS patch's file: certificate chain and key


def main(preloaded_tls: "OpenTLS | None" = None) -> int:
    """One session on fds 0/1.  `preloaded_tls(certfile, ciphers, remoteip)` is how
    qmail-esmtpd-server hands its session a certificate it loaded once."""
    env = posix.environ
    client = env.get(b"TCPREMOTEIP", b"unknown").decode("ascii", "replace")  # for log lines
    controls = Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL))
    try:
        settings = Settings(controls, env)
        argv = [arg.encode("utf-8", "surrogateescape") for arg in sys.argv[1:]]
        smtpauth = env.get(b"SMTPAUTH")  # the qmail-authentication patch's switch
        backend = None if smtpauth == b"-" else auth_backend(argv, env, controls)
        if smtpauth == b"!" and backend is None:
            note(f"SMTPAUTH=! but no AUTH is configured ip={client}: every MAIL gets 530")
        tls_offered = controls.exists(SERVERCERT)
        auth_needs_tls = (tls_offered and backend is not None
                          and not flag_setting(controls, env, b"authcleartext"))
        plugins = None  # qmail-spp: control/smtpplugins
        if b"NOSPP" not in env and (b"SPPCONFFILE" in env or controls.exists(b"smtpplugins")):
            from .spp import DEFAULT_TIMEOUT, open_plugins

            plugins = open_plugins(controls.directory, env, clamp_seconds(
                number_setting(controls, env, b"spptimeout", DEFAULT_TIMEOUT)))
        last = None  # badrcptto, recipient validation
        badrcptto = controls.lines(b"badrcptto")
        check_recipients = flag_setting(controls, env, b"checkrecipients")
        if badrcptto or check_recipients:
            from .rcptcheck import rcpt_checks

            last = {AT_RCPT: rcpt_checks(controls, env, badrcptto, check_recipients)}
        checks = None if plugins is None and last is None else with_checks(
            plugins.checks() if plugins is not None else None, last)
    except ControlError as e:
        note(f"fatal ip={client}: {e}")
        _say(replies.CONTROLS)
        return 1
    auth: "Authenticator | None" = None
    if backend is not None:
        from .auth import Authenticator

        auth = Authenticator(*backend, controls, env, settings.remoteip)
    # qmail-smtpd dies when it cannot chdir to the qmail home; we go on.  Our
    # control directory is named by absolute path ($QMAIL_CONTROL), and
    # qmail-queue changes to the qmail home itself, so the directory matters
    # only to checkpassword programs that expect it, and an install under
    # another PREFIX or a test has no /var/qmail at all.
    try:
        posix.chdir(QMAIL_HOME)
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
        tls_offered=tls_offered,
        auth_needs_tls=auth_needs_tls,
        auth_required=smtpauth == b"!",
        checks=checks,
        note=note,
    )
    program = env.get(b"QMAILQUEUE", DEFAULT_QUEUE)

    def open_queue() -> QueueJob:
        child_env = {**env, **session.child_environment()}
        if plugins is not None:  # what plugins set with S or unset with U
            for name, value in plugins.changes().items():
                if value is None:
                    child_env.pop(name, None)
                else:
                    child_env[name] = value
        return QueueJob(program, child_env)

    def open_tls() -> "ServerTLS":
        certfile, ciphers = controls.path(SERVERCERT), controls.line(b"tlsserverciphers")
        if preloaded_tls is not None:
            return preloaded_tls(certfile, ciphers, settings.remoteip)
        from .tls import ServerTLS  # `ssl` loads only when TLS is asked for

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

    Nothing is left to flush (all output goes through raw fds), and skipping
    finalization saves about 1 ms of CPU per connection.
    """
    posix._exit(main())
