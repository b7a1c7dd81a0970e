"""SASL LOGIN and PLAIN (RFC 4954, RFC 4616) as the qmail AUTH patch speaks them.

An `Exchange` takes the AUTH argument and the client's lines and gives
back either the next reply (a 334 prompt, or a 501 that ends the exchange)
or the decoded credentials for the caller to verify.  `start()`, the first
AUTH command, also makes the session unreadable to its user's other
processes (undumpable.py) before any password is decoded or read.
"""

import binascii

from .. import replies
from . import MECHANISMS


def decode(line: bytes) -> bytes | None:
    """Strict base64; None for anything else (the patch silently skipped junk)."""
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def split_plain(message: bytes) -> tuple[bytes, bytes, bytes] | None:
    """`authzid NUL user NUL password` -> (authzid, user, password)."""
    parts = message.split(b"\0", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[0], parts[1], parts[2]


class Exchange:
    """One AUTH exchange.  `reply` is the next line to send; `credentials` is
    set once both are known; `done` is true when the exchange is over."""

    def __init__(self, mechanism: bytes, initial: bytes | None) -> None:
        self.mechanism = mechanism
        self.user: bytes | None = None
        self.credentials: tuple[bytes, bytes] | None = None
        self.authzid = b""  # PLAIN's "act as": Authenticator.check() decides
        self.done = False
        if initial is None:
            self.reply = (replies.AUTH_PROMPT_USER if mechanism == b"LOGIN"
                          else replies.AUTH_PROMPT_PLAIN)
        else:
            self.reply = b""
            self.respond(initial)

    def respond(self, line: bytes) -> None:
        """Take the client's answer to the last prompt."""
        if line == b"*":
            return self._end(replies.AUTH_CANCELED)
        data = decode(line) if line else None
        if not data:
            return self._end(replies.AUTH_MALFORMED)
        if self.mechanism == b"PLAIN":
            fields = split_plain(data)
            if fields is None:
                return self._end(replies.AUTH_MALFORMED)
            self.authzid, *pair = fields
            self.credentials = (pair[0], pair[1])
            return self._end(b"")
        if self.user is None:
            self.user = data
            self.reply = replies.AUTH_PROMPT_PASSWORD
            return None
        self.credentials = (self.user, data)
        return self._end(b"")

    def _end(self, reply: bytes) -> None:
        self.reply = reply
        self.done = True


def start(arg: bytes) -> Exchange | None:
    """Parse `AUTH mechanism [initial-response]`; None for an unknown mechanism."""
    from ..undumpable import make_undumpable

    why = make_undumpable()
    if why is not None:
        from ..log import log

        log(f"auth: this session stays readable by its user's other processes: {why}")
    words = arg.split()
    if not words or words[0].upper() not in MECHANISMS:
        return None
    return Exchange(words[0].upper(), words[1] if len(words) > 1 else None)
