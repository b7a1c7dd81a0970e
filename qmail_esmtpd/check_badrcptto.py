"""control/badrcptto: recipients refused, whole addresses and `@domain`,
as badmailfrom lists senders."""

from . import replies
from .address import listed
from .log import printable
from .protocol import BUFFER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .config import Settings
    from .protocol import Session, Verdict


class BadRcptTo:
    def __init__(self, entries: "Iterable[bytes]") -> None:
        self.entries = frozenset(e.lower() for e in entries)

    def on_rcpt(self, session: "Session", given: bytes) -> "Verdict | None":
        recipient = session.recipient  # what will be queued: a plugin's `C` may have changed it
        if listed(self.entries, recipient):
            session.note(f"badrcptto refused ip={printable(session.peer.remoteip)} "
                         f"rcpt={printable(recipient, 256)}")
            return replies.BADRCPTTO, BUFFER
        return None


def build(settings: "Settings") -> BadRcptTo:
    return BadRcptTo(settings.badrcptto or ())
