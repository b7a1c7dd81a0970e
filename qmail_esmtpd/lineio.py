"""Lines in from fd 0 and replies out to fd 1, every wait bounded by timeoutsmtpd.

Replies are buffered and written when the protocol asks for a flush and
always before we block waiting for input, as qmail's substdio does: that is
what makes PIPELINING work without changing the bytes on the wire.
Every read and every write is bounded by an alarm (setitimer), as qmail's
timeoutread and timeoutwrite bound theirs with select: a client that never
sends, or never reads its replies, cannot hold the session longer than the
timeout.  An alarm rather than `select`: that is a shared library every
session would load for it.
A line is read only up to the length its caller allows: a client that
sends megabytes without a LF meets `LineTooLong`, not a growing buffer.

The server loop uses a channel only through the `Transport` interface
below, so another channel (TLS over the same fds) can take over mid-session.
"""

import _signal  # the C module behind `signal`, already loaded
import posix

READ_SIZE = 65536

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol, TypeVar

    A = TypeVar("A")
    T = TypeVar("T")

    class Transport(Protocol):
        def readline(self, limit: int) -> bytes:
            """One command line without its LF and one CR before it;
            LineTooLong when more than `limit` bytes come before the LF."""

        def read_chunk(self) -> bytes:
            """Buffered input, or the next read: the DATA stream."""

        def unread(self, data: bytes) -> None:
            """Give back input that belongs to the next command."""

        def discard_input(self) -> None:
            """Forget buffered input (nothing sent before a STARTTLS may count after it)."""

        def write(self, data: bytes) -> None:
            """Queue reply bytes."""

        def flush(self) -> None:
            """Send what is queued, bounded by the timeout."""

        def close(self) -> None:
            """Say goodbye at the transport's level (TLS: close_notify) after QUIT."""


class Timeout(Exception):
    """The client sent nothing for timeoutsmtpd seconds."""


class LineTooLong(Exception):
    """More bytes than the caller allows came without a LF; the rest of the
    line is left unread (the session ends: there is no telling where the
    next command would start)."""


class TLSUnavailable(Exception):
    """TLS cannot start now (certificate or key unusable, already logged): 454,
    and the session goes on."""


class Gone(Exception):
    """The client closed the connection, took no replies for timeoutsmtpd
    seconds, or reading or writing failed."""


class _Rang(Exception):
    """The alarm rang during a bounded read or write."""


_armed = False  # a bounded read or write is under way: the alarm may end it


def _ring(signum: int, frame: object) -> None:
    """An alarm that rings once its read or write is over is ignored."""
    if _armed:
        raise _Rang()


class Channel:
    """The plain Transport: fds 0 and 1 as tcpserver hands them over."""

    def __init__(self, timeout: float, rfd: int = 0, wfd: int = 1) -> None:
        self.timeout = timeout
        self.rfd = rfd
        self.wfd = wfd
        self.inbuf = bytearray()  # unread input starts at self.pos
        self.pos = 0
        self.outbuf: list[bytes] = []
        for fd in (rfd, wfd):  # the alarm interrupts a blocking call
            try:
                posix.set_blocking(fd, True)
            except OSError:
                pass  # not ours to change (a closed fd fails at the first use anyway)
        _signal.signal(_signal.SIGALRM, _ring)

    def _seconds(self) -> float:
        """How long the next read or write may wait: timeoutsmtpd, each time, as qmail."""
        return self.timeout

    def _bounded(self, call: "Callable[[int, A], T]", fd: int, arg: "A", writing: bool) -> "T":
        """call(fd, arg), one read or write, within `_seconds()`.  qmail: a read
        timeout says 451 (Timeout), a write timeout just exits (Gone)."""
        global _armed
        expired = Gone("write timeout") if writing else Timeout()
        seconds = self._seconds()
        if seconds <= 0:
            raise expired
        _signal.setitimer(_signal.ITIMER_REAL, seconds)
        _armed = True
        try:
            return call(fd, arg)
        except _Rang:
            raise expired from None
        except OSError as e:
            raise Gone(str(e)) from None
        finally:
            _armed = False
            _signal.setitimer(_signal.ITIMER_REAL, 0)

    def write(self, data: bytes) -> None:
        if data:
            self.outbuf.append(data)

    def flush(self) -> None:
        """Write everything pending; a stuck client times out, a closed one is Gone."""
        if not self.outbuf:
            return
        data = b"".join(self.outbuf)
        self.outbuf = []
        self._send(data)

    def _fill(self) -> None:
        self.flush()
        data = self._receive()
        if not data:
            raise Gone("end of input")
        self.inbuf += data

    # -- the bytes on the wire; a TLS channel puts its records here ----------
    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._bounded(posix.write, self.wfd, view, writing=True):]

    def _receive(self) -> bytes:
        """The next read from the client (empty at end of input)."""
        return self._bounded(posix.read, self.rfd, READ_SIZE, writing=False)

    def readline(self, limit: int) -> bytes:
        """One command line without its LF and without one CR before it.

        At most `limit` bytes may come before the LF (a CR counts): beyond
        that LineTooLong, having buffered no more than `limit` plus one read.
        """
        scan = self.pos
        while True:
            nl = self.inbuf.find(b"\n", scan)
            if nl >= 0:
                break
            if self.pos:  # only a partial line is left: drop what was consumed
                del self.inbuf[:self.pos]
                self.pos = 0
            if len(self.inbuf) > limit:
                raise LineTooLong()
            scan = len(self.inbuf)
            self._fill()
        if nl - self.pos > limit:
            raise LineTooLong()
        line = bytes(self.inbuf[self.pos:nl])
        self.pos = nl + 1
        return line[:-1] if line.endswith(b"\r") else line

    def read_chunk(self) -> bytes:
        """Whatever input is buffered, or the next read; for the DATA stream."""
        if self.pos >= len(self.inbuf):
            self.discard_input()
            self._fill()
        data = bytes(self.inbuf[self.pos:])
        self.discard_input()
        return data

    def unread(self, data: bytes) -> None:
        """Give back input that belongs to the next command (pipelining)."""
        self.inbuf[:self.pos] = data
        self.pos = 0

    def discard_input(self) -> None:
        self.inbuf.clear()
        self.pos = 0

    def close(self) -> None:
        """Nothing to say in cleartext: the process exit closes the fds."""
