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
    """A client-chosen name made safe for a log line (no spaces, no escapes)."""
    out = "".join(chr(c) if 0x21 <= c < 0x7F and c != 0x5C else f"\\x{c:02x}"
                  for c in text[:limit])
    return out + ("..." if len(text) > limit else "")
