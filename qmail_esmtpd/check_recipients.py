"""control/checkrecipients: refuse local recipients that qmail would bounce
(mailboxes.py has qmail's rules), with a bound on unknown recipients per
session against directory harvesting, and per source across sessions where
the database is configured (harvest.py).
"""

from . import config, replies
from .config import flag_setting, number_setting
from .log import printable
from .mailboxes import UNKNOWN, UNSURE, Mailboxes
from .protocol import BUFFER, DROP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import Settings
    from .harvest import Memory
    from .protocol import Session, Verdict

DEFAULT_UNKNOWN_LIMIT = 10


class RecipientCheck:
    """Refuse what qmail would bounce as unknown; accept what it would deliver
    or defer, or what we cannot see (logged once a session)."""

    def __init__(self, mailboxes: "Mailboxes", unknown_limit: int = DEFAULT_UNKNOWN_LIMIT,
                 relayed_too: bool = False,
                 remember: "Callable[[], Memory | None] | None" = None) -> None:
        self.mailboxes = mailboxes
        self.unknown_limit = unknown_limit
        self.relayed_too = relayed_too
        self.remember = remember  # opens the memory across sessions, at the first unknown
        self.memory: "Memory | None" = None
        self.unknown = 0
        self.counted = 0  # unknown recipients of a client that neither relays nor authenticated
        self.unsure_noted = False

    def on_rcpt(self, session: "Session", given: bytes) -> "Verdict | None":
        if session.relayclient is not None and not self.relayed_too:
            return None  # RELAYCLIENT or AUTH: their recipients are theirs to choose
        recipient = session.recipient  # what will be queued: a plugin's `C` may have changed it
        verdict, why = self.mailboxes.verdict(recipient)
        if verdict != UNKNOWN and verdict != UNSURE:
            return None
        ip = printable(session.peer.remoteip)  # for the log line, worked out only for one
        if verdict == UNSURE:
            if not self.unsure_noted:
                self.unsure_noted = True
                session.note(f"recipient accepted unchecked ip={ip} "
                             f"rcpt={printable(recipient, 256)} ({why})")
            return None
        self.unknown += 1
        counted = session.relayclient is None
        if counted:
            self.counted += 1
        if self.unknown_limit and self.unknown > self.unknown_limit:
            session.note(f"recipient harvesting ip={ip} unknown={self.unknown}: closing")
            return replies.TOO_MANY_UNKNOWN, DROP
        lately = self.across_sessions() if counted else None
        if lately is not None:
            session.note(f"recipient harvesting ip={ip} unknown={self.unknown} "
                         f"lately={lately}: closing")
            return replies.TOO_MANY_UNKNOWN, DROP
        session.note(f"recipient unknown ip={ip} rcpt={printable(recipient, 256)}")
        return replies.NO_MAILBOX, BUFFER

    def across_sessions(self) -> int | None:
        """The source's unknown recipients lately when past its limit, else None
        (harvest.py, loaded at the first unknown; None without a database)."""
        if self.counted == 1 and self.remember is not None:
            self.memory = self.remember()
        return None if self.memory is None else self.memory.past_limit(self.counted)

    def on_end(self, session: "Session", value: bytes) -> None:
        """users/cdb closed (a worker's next session opens it again: it may
        have been rebuilt); one line for a session that named unknown
        recipients (fail2ban's), after the memory across sessions has the
        rest of its count."""
        self.mailboxes.close()
        if not self.counted:
            return
        if self.memory is not None:
            self.memory.finish(self.counted)
        session.note(f"recipient unknown count ip={printable(session.peer.remoteip)} "
                     f"unknown={self.counted}")


def build(settings: "Settings") -> RecipientCheck:
    """The check, its files read as a warm worker keeps them (kept.KeptFiles)."""
    controls, env = settings.controls.kept(), settings.env
    locals_ = controls.lines(b"locals")
    mailboxes = Mailboxes(
        locals_ if locals_ is not None else [settings.me or b""],
        controls.lines(b"virtualdomains") or [],
        controls.line(b"envnoathost") or settings.me or b"envnoathost",
        settings.paths.users_cdb,
        percenthack=controls.lines(b"percenthack") or (),
        kept=config.KEPT)
    return RecipientCheck(
        mailboxes,
        number_setting(controls, env, b"unknownrcptlimit", DEFAULT_UNKNOWN_LIMIT),
        flag_setting(controls, env, b"checkrelayedrecipients"),
        lambda: _remember(settings))


def _remember(settings: "Settings") -> "Memory | None":
    """The memory across sessions, loaded at the first unknown recipient."""
    from .harvest import open_memory

    return open_memory(settings.env, settings.controls, settings.remoteip)
