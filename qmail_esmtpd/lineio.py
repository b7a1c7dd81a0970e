"""Lines in from fd 0 and replies out to fd 1, each wait bounded by timeoutsmtpd.

Replies are buffered and written when the protocol asks for a flush and
always before we block waiting for input, as qmail's substdio does: that is
what makes PIPELINING work without changing the bytes on the wire.
`select` does the timeouts, so no signal handlers (and no `signal` import).
"""

import posix
import select

READ_SIZE = 65536


class Timeout(Exception):
    """The client sent nothing for timeoutsmtpd seconds."""


class Gone(Exception):
    """The client closed the connection, or reading or writing failed."""


class Channel:
    def __init__(self, timeout: float, rfd: int = 0, wfd: int = 1) -> None:
        self.timeout = timeout
        self.rfd = rfd
        self.wfd = wfd
        self.inbuf = bytearray()  # unread input starts at self.pos
        self.pos = 0
        self.outbuf: list[bytes] = []

    def write(self, data: bytes) -> None:
        if data:
            self.outbuf.append(data)

    def flush(self) -> None:
        """Write everything pending; a stuck or closed client raises Gone."""
        if not self.outbuf:
            return
        data = memoryview(b"".join(self.outbuf))
        self.outbuf = []
        while data:
            try:
                if not select.select([], [self.wfd], [], self.timeout)[1]:
                    raise Gone("write timeout")
                done = posix.write(self.wfd, data)
            except OSError as e:
                raise Gone(str(e)) from None
            data = data[done:]

    def _fill(self) -> None:
        self.flush()
        try:
            ready = select.select([self.rfd], [], [], self.timeout)[0]
            if not ready:
                raise Timeout()
            data = posix.read(self.rfd, READ_SIZE)
        except OSError as e:
            raise Gone(str(e)) from None
        if not data:
            raise Gone("end of input")
        self.inbuf += data

    def readline(self) -> bytes:
        """One command line without its LF and without one CR before it."""
        scan = self.pos
        while True:
            nl = self.inbuf.find(b"\n", scan)
            if nl >= 0:
                break
            if self.pos:  # only a partial line is left: drop what was consumed
                del self.inbuf[:self.pos]
                self.pos = 0
            scan = len(self.inbuf)
            self._fill()
        line = bytes(self.inbuf[self.pos:nl])
        self.pos = nl + 1
        return line[:-1] if line.endswith(b"\r") else line

    def read_chunk(self) -> bytes:
        """Whatever input is buffered, or the next read; for the DATA stream."""
        if self.pos >= len(self.inbuf):
            self.inbuf.clear()
            self.pos = 0
            self._fill()
        data = bytes(self.inbuf[self.pos:])
        self.inbuf.clear()
        self.pos = 0
        return data

    def unread(self, data: bytes) -> None:
        """Give back input that belongs to the next command (pipelining)."""
        self.inbuf[:self.pos] = data
        self.pos = 0
