"""The Received header qmail-smtpd puts on top of every message, byte for byte."""

import time

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
