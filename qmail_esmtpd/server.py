"""The session loop: lines from the channel into the protocol, replies back out.

This is the only place where the protocol core, the client's channel and
the qmail-queue pipe meet.  It decides nothing: the core says what to
reply and what to queue; this moves the bytes.
"""

from . import protocol, replies
from .lineio import Gone, Timeout
from .protocol import BARE_LF, END
from .queue import QueueJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .lineio import Transport


def serve(session: protocol.Session, channel: "Transport",
          open_queue: "Callable[[], QueueJob]") -> int:
    """Talk SMTP until QUIT (exit 0) or until the client goes away (exit 1)."""
    try:
        channel.write(session.banner())
        while True:
            reply, action = session.handle(channel.readline())
            channel.write(reply)
            if action == protocol.DATA:
                if not receive_message(session, channel, open_queue):
                    channel.write(replies.STRAY_NEWLINE)
                    _flush_quietly(channel)
                    return 1
                channel.flush()
            elif action == protocol.FLUSH:
                channel.flush()
            elif action == protocol.QUIT:
                channel.flush()
                return 0
            elif action == protocol.DROP:
                channel.flush()
                return 1
    except Timeout:
        channel.write(replies.TIMEOUT)
        _flush_quietly(channel)
        return 1
    except Gone:
        return 1


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
