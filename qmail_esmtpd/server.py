"""The session loop: lines from the channel into the protocol, replies back out.

This is the only place where the protocol core, the client's channel and
the qmail-queue pipe meet.  It decides nothing: the core says what to
reply and what to queue; this moves the bytes.
"""

from . import protocol, replies
from .lineio import Channel, Gone, LineTooLong, Timeout, TLSUnavailable
from .message import BARE_LF, END
from .queue import QueueJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .lineio import Transport
    from .tls import ServerTLS


def serve(session: protocol.Session, channel: Channel,
          open_queue: "Callable[[], QueueJob]",
          open_tls: "Callable[[], ServerTLS] | None" = None, smtps: bool = False) -> int:
    """Talk SMTP until QUIT (exit 0) or until the client goes away (exit 1).

    The channel is replaced by a TLS one after STARTTLS.  With `smtps` TLS
    starts before the greeting (port 465); a certificate that cannot be
    loaded then ends the session, as there is no cleartext to fall back to.
    A line longer than the session allows gets its 500 and ends the session
    (exit 1), its rest unread.
    """
    try:
        if smtps and open_tls is not None:
            channel = _start_tls(session, channel, open_tls())
        channel.write(session.banner())
        if session.ends_after_banner:  # a connect check said its last word
            channel.flush()
            return 0 if session.ends_after_banner == protocol.QUIT else 1
        while True:
            reply, action = session.handle(channel.readline(session.line_limit()))
            channel.write(reply)
            if action == protocol.DATA:
                if not receive_message(session, channel, open_queue):
                    channel.write(replies.STRAY_NEWLINE)
                    _flush_quietly(channel)
                    return 1
                channel.flush()
            elif action == protocol.FLUSH:
                channel.flush()
            elif action == protocol.STARTTLS and open_tls is not None:
                channel = starttls(session, channel, open_tls)
            elif action == protocol.QUIT:
                channel.flush()
                channel.close()
                return 0
            elif action == protocol.DROP:
                channel.flush()
                return 1
    except Timeout:
        channel.write(replies.TIMEOUT)
        _flush_quietly(channel)
        return 1
    except LineTooLong:
        channel.write(session.line_too_long())
        _flush_quietly(channel)
        return 1
    except Gone:
        return 1
    except TLSUnavailable:  # SMTPS without a usable certificate (tls.py logged it)
        return 1
    finally:
        session.end()


def starttls(session: protocol.Session, channel: Channel,
             open_tls: "Callable[[], ServerTLS]") -> Channel:
    """220 and the handshake, or 454 and the same cleartext channel."""
    try:
        tls = open_tls()
    except TLSUnavailable:  # logged where the file is known
        channel.write(session.starttls_ready(False))
        channel.flush()
        return channel
    channel.write(session.starttls_ready(True))
    return _start_tls(session, channel, tls)


def _start_tls(session: protocol.Session, channel: Channel, tls: "ServerTLS") -> Channel:
    """Nothing the client sent in cleartext may count inside TLS (CVE-2011-0411)."""
    channel.flush()
    channel.discard_input()
    secure = tls.wrap(channel, session.peer.remoteip)
    session.tls_started(secure.cipher)
    return secure


def receive_message(session: protocol.Session, channel: "Transport",
                    open_queue: "Callable[[], QueueJob]") -> bool:
    """354, the DATA stream into qmail-queue, the final reply written.

    False when the stream had a bare LF: qmail then drops the connection.
    A message cut short (bare LF, timeout, client gone) leaves qmail-queue
    without an envelope, so nothing half-received is ever queued.
    """
    try:
        job = open_queue()
    except OSError:
        job = None
    channel.write(session.open_message(job is not None))
    decoder = session.decoder
    if job is None or decoder is None:
        return True
    complete = False
    try:
        job.write(session.received_header())
        while True:
            chunk = channel.read_chunk()
            data, used, status = decoder.feed(chunk)
            job.write(data)
            if status == END:
                channel.unread(chunk[used:])
                complete = True
                break
            if status == BARE_LF:
                return False
    finally:
        if not complete:
            job.finish(None)
    verdict = job.finish(session.finish_message())
    channel.write(session.queued(verdict, job.pid))
    return True


def _flush_quietly(channel: "Transport") -> None:
    try:
        channel.flush()
    except Gone:
        pass
