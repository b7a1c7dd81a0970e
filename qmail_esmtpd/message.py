"""The message as qmail-queue gets it: the Received line on top, then the
DATA stream decoded as qmail-smtpd's blast() decodes it."""

import time

MAX_HOPS = 100  # Received:/Delivered- header lines: more means a mail loop


# -- the Received line qmail-smtpd puts on top of every message, byte for byte --
_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@%+/=:-[]")
_SAFE_TABLE = bytes(c if c in _SAFE else 0x3F for c in range(256))
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def safe(text: bytes) -> bytes:
    """Every byte outside qmail's safe set becomes `?` (header injection guard)."""
    return text.translate(_SAFE_TABLE)


def date822(seconds: float) -> bytes:
    """`D Mon YYYY HH:MM:SS -0000` in UTC, day without leading zero."""
    t = time.gmtime(seconds)
    return b"%d %s %d %02d:%02d:%02d -0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def received(remotehost: bytes, helo: bytes | None, remoteinfo: bytes | None,
             remoteip: bytes, local: bytes, protocol: bytes, seconds: float) -> bytes:
    """The two header lines, LF-terminated, as written to qmail-queue."""
    parts = [b"Received: from ", safe(remotehost)]
    if helo is not None:
        parts += [b" (HELO ", safe(helo), b")"]
    parts.append(b" (")
    if remoteinfo is not None:
        parts += [safe(remoteinfo), b"@"]
    parts += [safe(remoteip), b")\n  by ", safe(local), b" with ", protocol,
              b"; ", date822(seconds), b"\n"]
    return b"".join(parts)


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
            if state == _LINESTART and chunk[i] != 0x2E:
                # whole lines up to the next one that starts with a dot, at once
                # when each ends in CRLF (else line by line, below, finds the bare LF)
                dot = chunk.find(b"\n.", i)
                end = dot + 1 if dot >= 0 else chunk.rfind(b"\n", i) + 1
                if end > i:
                    block = chunk[i:end]
                    if block.count(b"\n") == block.count(b"\r\n"):
                        out.append(block.replace(b"\r\n", b"\n"))
                        i = end
                        continue
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
