"""control/badmailfrom: senders refused, whole addresses and `@domain`.

qmail-smtpd accepts the MAIL and refuses each RCPT, so a client learns why
at the first recipient; a plugin that accepted the sender outright (qmail-spp
`O`) lets it pass.
"""

from . import replies
from .address import listed
from .protocol import BUFFER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Settings
    from .protocol import Session, Verdict


class BadMailFrom:
    def __init__(self, entries: "frozenset[bytes]") -> None:
        self.entries = entries

    def on_rcpt(self, session: "Session", recipient: bytes) -> "Verdict | None":
        sender = session.sender
        if sender and not session.sender_accepted_now and listed(self.entries, sender):
            return replies.BADMAILFROM, BUFFER
        return None


def build(settings: "Settings") -> BadMailFrom:
    return BadMailFrom(settings.badmailfrom or frozenset())
