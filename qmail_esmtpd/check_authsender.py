"""What an authenticated client may send: a message within databytes by its
SIZE (the AUTH patch's rule), only as itself (senderbinding), and within its
daily limit (auth/limit.py counts it; the core charges it at the end of DATA).

Without AUTH none of this can apply: the module is switched on by an AUTH
backend in the configuration.

Senders compare as `sender_key` writes them: ASCII case ignored, as always;
a UTF-8 address (SMTPUTF8) also with its local part in Unicode NFC and case
folded, which RFC 6530 leaves the local part's domain free to do, and its
domain in A-label form (idn.py), so `JÖRG@müller.example` is the account's
`jörg@xn--mller-kva.example`.
"""

from . import replies
from .protocol import BUFFER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Settings
    from .protocol import Session, Verdict


def sender_key(address: bytes) -> bytes:
    """The form in which two envelope senders are the same address."""
    low = address.lower()
    if low.isascii():
        return low
    at = low.rfind(b"@")
    local, domain = (low, b"") if at < 0 else (low[:at], low[at + 1:])
    try:
        text = local.decode("utf-8")
    except UnicodeDecodeError:
        pass  # not UTF-8: its bytes, as qmail has them
    else:
        import unicodedata

        folded = unicodedata.normalize("NFC", text).casefold()
        local = unicodedata.normalize("NFC", folded).encode("utf-8")
    if at < 0:
        return local
    from .idn import ascii_form

    return local + b"@" + ascii_form(domain)


class AuthenticatedSender:
    def __init__(self) -> None:
        self.keys: "tuple[frozenset[bytes] | None, frozenset[bytes]]" = (None, frozenset())

    def on_mail(self, session: "Session", sender: bytes) -> "Verdict | None":
        if session.databytes and session.size > session.databytes:
            return replies.SIZE_EXCEEDED, BUFFER
        senders = session.senders
        if senders is not None and sender and sender_key(sender) not in self._keys(senders):
            return replies.SENDER_NOT_YOURS, BUFFER  # the null sender impersonates nobody
        limit = session.limit
        if limit is None:
            return None
        left = limit.remaining()
        if left is None:
            return replies.LIMIT_UNAVAILABLE, BUFFER
        if left == 0:
            session.note_limit_refusal("MAIL")
            return replies.LIMIT_REACHED, BUFFER
        session.left = left  # how many recipients this transaction may have
        session.limit_noted = False
        return None

    def _keys(self, senders: "frozenset[bytes]") -> "frozenset[bytes]":
        """The user's own senders as sender_key writes them, once per login."""
        if self.keys[0] is not senders:
            self.keys = senders, frozenset(map(sender_key, senders))
        return self.keys[1]

    def on_rcpt(self, session: "Session", recipient: bytes) -> "Verdict | None":
        """The client sends to the recipients accepted so far."""
        if session.limit is not None and len(session.recipients) >= session.left:
            if not session.limit_noted:  # one log line a transaction, not one per address
                session.note_limit_refusal("RCPT")
            return replies.LIMIT_RECIPIENTS, BUFFER
        return None


def build(settings: "Settings") -> AuthenticatedSender:
    return AuthenticatedSender()
