"""`qmail-esmtpd`: read the configuration once, wire the adapters, run the session.

Start-up cost is paid once per connection (tcpserver forks us for each), so
this path imports only cheap standard modules; anything heavier is imported
where it is needed.
"""

from __future__ import annotations

import os
import sys

from . import replies
from .config import DEFAULT_CONTROL, ControlError, Controls, Settings
from .lineio import Channel
from .localips import LocalIPs
from .protocol import Peer, Session
from .queue import DEFAULT_QUEUE, QueueJob
from .rcpthosts import RcptHosts
from .server import run

QMAIL_HOME = "/var/qmail"


def log(message: str) -> None:
    """One line on stderr (multilog under supervise); never fatal."""
    try:
        os.write(2, f"qmail-esmtpd: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    try:
        settings = Settings(Controls(env.get("QMAIL_CONTROL", DEFAULT_CONTROL)), dict(env))
    except ControlError as e:
        log(f"fatal: {e}")
        _say(replies.CONTROLS)
        return 1
    try:
        os.chdir(QMAIL_HOME)  # qmail-queue expects to run in the qmail home
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
    )
    program = env.get("QMAILQUEUE", DEFAULT_QUEUE)

    def open_queue() -> QueueJob:
        return QueueJob(program, dict(env))

    channel = Channel(settings.timeout)
    try:
        return run(session, channel, settings.databytes, open_queue)
    except Exception as e:  # a bug: tell the client plainly, keep the trace in the log
        log(f"internal error: {type(e).__name__}: {e}")
        _say(replies.INTERNAL_ERROR)
        return 1


def _say(reply: bytes) -> None:
    try:
        os.write(1, reply)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
