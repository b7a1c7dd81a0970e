"""The session loop: lines from the channel into the protocol, replies back out.

This is the only place where the protocol core, the client's fds and the
qmail-queue pipe meet.
"""

from . import protocol, replies
from .lineio import Channel, Gone, Timeout
from .queue import QueueJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def serve(session: protocol.Session, channel: Channel,
          open_queue: "Callable[[], QueueJob]") -> int:
    """Talk SMTP until QUIT (exit 0) or until the client goes away (exit 1)."""
    try:
        channel.write(session.banner())
        while True:
            reply, action = session.handle(channel.readline())
            channel.write(reply)
            if action == protocol.DATA:
                channel.write(receive_message(session, channel, open_queue))
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
    except StrayLF:
        channel.write(replies.STRAY_LF)
        _flush_quietly(channel)
        return 1


class StrayLF(Exception):
    """A bare LF inside DATA: qmail drops the connection."""


def receive_message(session: protocol.Session, channel: Channel,
                    open_queue: "Callable[[], QueueJob]") -> bytes:
    """354, stream DATA into qmail-queue, and return the final reply."""
    try:
        job = open_queue()
    except OSError:
        return session.data_opened(False)
    channel.write(session.data_opened(True))
    decoder = protocol.DataDecoder(session.databytes)
    complete = False
    try:
        job.write(session.received_header())
        while True:
            chunk = channel.read_chunk()
            data, used, status = decoder.feed(chunk)
            job.write(data)
            if status == protocol.END:
                channel.unread(chunk[used:])
                complete = True
                break
            if status == protocol.STRAY_LF:
                raise StrayLF()
    finally:
        if not complete:
            job.finish(None)
    refusal = session.charge() if decoder.acceptable else None
    queue_it = decoder.acceptable and refusal is None
    verdict = job.finish(session.envelope() if queue_it else None)
    if queue_it and verdict:
        session.refund()
    return refusal or session.data_done(decoder, verdict, job.pid)


def _flush_quietly(channel: Channel) -> None:
    try:
        channel.flush()
    except Gone:
        pass
