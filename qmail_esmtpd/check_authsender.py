"""What an authenticated client may send: a message within databytes by its
SIZE (the AUTH patch's rule), only as itself (senderbinding), and within its
daily limit (auth/limit.py counts it; the core charges it at the end of DATA).

Without AUTH none of this can apply: the module is switched on by an AUTH
backend in the configuration.
"""

from . import replies
from .protocol import BUFFER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Settings
    from .protocol import Session, Verdict


class AuthenticatedSender:
    def on_mail(self, session: "Session", sender: bytes) -> "Verdict | None":
        if session.databytes and session.size > session.databytes:
            return replies.SIZE_EXCEEDED, BUFFER
        senders = session.senders
        if senders is not None and sender and sender.lower() not in senders:
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

    def on_rcpt(self, session: "Session", recipient: bytes) -> "Verdict | None":
        """The client sends to the recipients accepted so far."""
        if session.limit is not None and len(session.recipients) >= session.left:
            if not session.limit_noted:  # one log line a transaction, not one per address
                session.note_limit_refusal("RCPT")
            return replies.LIMIT_RECIPIENTS, BUFFER
        return None


def build(settings: "Settings") -> AuthenticatedSender:
    return AuthenticatedSender()
