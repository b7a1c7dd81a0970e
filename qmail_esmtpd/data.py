"""The DATA stream: SMTP transparency, hop counting and size, as qmail-smtpd's blast().

Pure: bytes in, the bytes qmail-queue gets out.  The protocol core owns one
decoder per message; the server only moves chunks through it.
"""

MAX_HOPS = 100

# DataDecoder states, named after qmail-smtpd's blast(): where in a line we are.
_MIDLINE, _LINESTART, _DOT, _DOTCR, _CR = 0, 1, 2, 3, 4
MORE, END, BARE_LF = 0, 1, 2  # what feed() says of the stream


class DataDecoder:
    """SMTP DATA transparency as qmail-smtpd's blast(), over chunks.

    CRLF becomes LF, any leading dot goes, `.` CRLF ends the message, a bare
    LF is fatal.  Counts hops (Received:/Delivered- header lines) and the
    queued size; once the size exceeds `databytes` nothing more is emitted,
    since the message will not be queued.
    """

    def __init__(self, databytes: int = 0) -> None:
        self.databytes = databytes
        self.size = 0
        self.overflow = False
        self.hops = 0
        self.state = _LINESTART
        self.in_header = True
        self._head = b""

    def feed(self, chunk: bytes) -> tuple[bytes, int, int]:
        """-> (bytes for qmail-queue, bytes of `chunk` consumed, MORE/END/BARE_LF).

        After END, `chunk[consumed:]` is the start of the next command.
        """
        out = []
        i, n = 0, len(chunk)
        state = self.state
        status = MORE
        while i < n:
            if state == _LINESTART:
                nl = chunk.find(b"\n", i)
                if nl >= 0:  # a whole line at once: the common case
                    if nl == i or chunk[nl - 1] != 0x0D:
                        status = BARE_LF
                        break
                    text = chunk[i:nl - 1]
                    i = nl + 1
                    if text == b".":
                        status = END
                        break
                    if text[:1] == b"." and text[1:2] != b"\r":
                        text = text[1:]
                    out.append(text)
                    out.append(b"\n")
                    continue
                ch = chunk[i]
                i += 1
                if ch == 0x2E:
                    state = _DOT
                elif ch == 0x0D:
                    state = _CR
                else:
                    out.append(bytes((ch,)))
                    state = _MIDLINE
            elif state == _MIDLINE:
                cr = chunk.find(b"\r", i)
                lf = chunk.find(b"\n", i)
                stop = cr if lf < 0 or 0 <= cr < lf else lf
                if stop < 0:
                    out.append(chunk[i:])
                    i = n
                elif stop == lf:
                    status = BARE_LF
                    break
                else:
                    out.append(chunk[i:stop])
                    i = stop + 1
                    state = _CR
            else:
                ch = chunk[i]
                i += 1
                if state == _CR:
                    if ch == 0x0A:
                        out.append(b"\n")
                        state = _LINESTART
                    elif ch == 0x0D:
                        out.append(b"\r")
                    else:
                        out.append(b"\r" + bytes((ch,)))
                        state = _MIDLINE
                elif state == _DOT:
                    if ch == 0x0A:
                        status = BARE_LF
                        break
                    if ch == 0x0D:
                        state = _DOTCR
                    else:
                        out.append(bytes((ch,)))
                        state = _MIDLINE
                else:  # _DOTCR
                    if ch == 0x0A:
                        status = END
                        break
                    out.append(b".\r")
                    if ch == 0x0D:
                        state = _CR
                    else:
                        out.append(bytes((ch,)))
                        state = _MIDLINE
        self.state = state
        if self.in_header:
            self._count_hops(chunk[:i])
        data = b"".join(out)
        if self.overflow:
            return b"", i, status
        self.size += len(data)
        if self.databytes and self.size > self.databytes:
            self.overflow = True
            return b"", i, status
        return data, i, status

    @property
    def acceptable(self) -> bool:
        """Neither looping nor too big: qmail-queue may have it."""
        return self.hops < MAX_HOPS and not self.overflow

    def _count_hops(self, raw: bytes) -> None:
        """Header lines starting received/delivered (any case) are hops."""
        pos, n = 0, len(raw)
        while pos < n:
            nl = raw.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            room = 9 - len(self._head)
            if room > 0:
                self._head += raw[pos:min(end, pos + room)]
            if nl < 0:
                return
            pos = nl + 1
            head, self._head = self._head.lower(), b""
            if head.startswith(b"received") or head.startswith(b"delivered"):
                self.hops += 1
            elif head.startswith(b"\r\n"):
                self.in_header = False
                return
