"""The RCPT checks after rcpthosts: `badrcptto`, and refusing local recipients
that qmail would bounce (mailboxes.py has qmail's rules), with a bound on
unknown recipients per session against directory harvesting.

Both are checks for the protocol core (`check(session, recipient)`); cli.py
adds them only when configured, so a plain session never loads this module.
"""

from . import replies
from .log import printable
from .mailboxes import UNKNOWN, UNSURE, Mailboxes
from .protocol import BUFFER, DROP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .config import Controls
    from .protocol import Check, Session, Verdict

DEFAULT_UNKNOWN_LIMIT = 10


class BadRcptTo:
    """control/badrcptto: whole addresses and `@domain`, case-insensitively."""

    def __init__(self, entries: "Iterable[bytes]") -> None:
        self.entries = frozenset(e.lower() for e in entries)

    def __call__(self, session: "Session", recipient: bytes) -> "Verdict | None":
        low = recipient.lower()
        at = low.rfind(b"@")
        if low in self.entries or (at >= 0 and low[at:] in self.entries):
            session.note(f"badrcptto refused ip={printable(session.peer.remoteip)} "
                         f"rcpt={printable(recipient, 256)}")
            return replies.BADRCPTTO, BUFFER
        return None


class RecipientCheck:
    """Refuse what qmail would bounce as unknown; accept what it would deliver
    or defer, or what we cannot see (logged once a session)."""

    def __init__(self, mailboxes: "Mailboxes", unknown_limit: int = DEFAULT_UNKNOWN_LIMIT,
                 relayed_too: bool = False) -> None:
        self.mailboxes = mailboxes
        self.unknown_limit = unknown_limit
        self.relayed_too = relayed_too
        self.unknown = 0
        self.unsure_noted = False

    def __call__(self, session: "Session", recipient: bytes) -> "Verdict | None":
        if session.relayclient is not None and not self.relayed_too:
            return None  # RELAYCLIENT or AUTH: their recipients are theirs to choose
        verdict, why = self.mailboxes.verdict(recipient)
        ip = printable(session.peer.remoteip)
        if verdict == UNSURE:
            if not self.unsure_noted:
                self.unsure_noted = True
                session.note(f"recipient accepted unchecked ip={ip} "
                             f"rcpt={printable(recipient, 256)} ({why})")
            return None
        if verdict != UNKNOWN:
            return None
        self.unknown += 1
        if self.unknown_limit and self.unknown > self.unknown_limit:
            session.note(f"recipient harvesting ip={ip} unknown={self.unknown}: closing")
            return replies.TOO_MANY_UNKNOWN, DROP
        session.note(f"recipient unknown ip={ip} rcpt={printable(recipient, 256)}")
        return replies.NO_MAILBOX, BUFFER


def rcpt_checks(controls: "Controls", env: "Mapping[bytes, bytes]",
                badrcptto: "list[bytes] | None", check_recipients: bool) -> "tuple[Check, ...]":
    """The RCPT checks the configuration asks for, in order."""
    from .config import flag_setting, number_setting

    checks: "list[Check]" = []
    if badrcptto:
        checks.append(BadRcptTo(badrcptto))
    if check_recipients:
        me = controls.line(b"me")
        locals_ = controls.lines(b"locals")
        qmail_home = controls.directory.rpartition(b"/")[0]  # users/ sits beside control/
        mailboxes = Mailboxes(
            locals_ if locals_ is not None else [me or b""],
            controls.lines(b"virtualdomains") or [],
            controls.line(b"envnoathost") or me or b"envnoathost",
            (qmail_home or b".") + b"/users/cdb")
        checks.append(RecipientCheck(
            mailboxes,
            number_setting(controls, env, b"unknownrcptlimit", DEFAULT_UNKNOWN_LIMIT),
            flag_setting(controls, env, b"checkrelayedrecipients")))
    return tuple(checks)
