"""One line per event on stderr: multilog under supervise reads it.

Plain writes to fd 2 (no `logging`: its import costs more than a session).
Every program of the project logs through here, so the prefix names the
program that is running (`PROGRAM` is set by its entry point).
"""

import posix

PROGRAM = "qmail-esmtpd"


def log(message: str) -> None:
    """Never fatal: a log that cannot be written must not end a session."""
    try:
        posix.write(2, f"{PROGRAM}: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def printable(text: bytes, limit: int = 64) -> str:
    """A client-chosen name made safe for a log line, at most `limit` characters:
    printable ASCII as itself, but the backslash; valid UTF-8 that prints as
    itself (`jörg@例子.中国`); everything else as \\xHH per byte: blanks, control
    and format characters (a bidi override, a line separator), invalid bytes.
    So no client can end a line, start another or disguise one."""
    if len(text) <= limit and not text.translate(None, _AS_THEMSELVES):
        return text.decode("ascii")  # the usual name or address: no byte to look at
    chars = text[:limit * 4].decode("utf-8", "surrogateescape")[:limit]
    out = "".join(map(_shown, chars))
    taken = len(chars.encode("utf-8", "surrogateescape"))
    return out + ("..." if len(text) > taken else "")


# the bytes printable() shows as themselves: printable ASCII but the backslash
_AS_THEMSELVES = bytes(range(0x21, 0x7F)).replace(b"\\", b"")


def _shown(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return char if 0x21 <= code < 0x7F and code != 0x5C else f"\\x{code:02x}"
    if char.isprintable():  # not Cc, Cf, Zs, Zl, Zp, Co, Cn: no blank, no control
        return char
    return "".join(f"\\x{c:02x}" for c in char.encode("utf-8"))
