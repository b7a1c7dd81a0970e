"""SMTP AUTH: which backend checks a password, and what the core may ask of it.

The protocol core talks to one `Authenticator` (authenticator.py), whose
`check()` answers with a `Verdict`, never with reply text.  Behind it sits one
backend, chosen by BACKENDS: the first entry whose setting is present wins.
A backend is a module of this package with

    open_backend(setting, controls, env) -> Backend

so adding one is that module plus one line in BACKENDS.  Nothing heavy is
imported here or at start-up: a session that never says AUTH must not pay for
psycopg2 or passlib (the backend module loads at the first AUTH command).
"""

from ..config import authdb_conninfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Protocol

    from ..config import Controls

    class Limit(Protocol):
        """An authenticated user's daily sending limit (limit.DailyLimit)."""

        def allows(self) -> bool | None: ...
        def charge(self) -> bool | None: ...
        def refund(self) -> None: ...

    class Backend(Protocol):
        def verify(self, user: bytes, password: bytes) -> "Verdict": ...
        def close(self) -> None: ...

    Setting = str | list[bytes]
    Finder = Callable[[list[bytes], Mapping[bytes, bytes], Controls], Setting | None]

MECHANISMS = (b"LOGIN", b"PLAIN")

# Why a check could not be made; replies.AUTH_TEMPORARY gives each its 454.
DATABASE = "database"
NO_PIPE = "pipe"
NO_START = "start"
NO_WRITE = "write"
CHILD_TROUBLE = "child"


class Verdict:
    """A backend's answer: `ok`, or a failure (535), or `tempfail` (a reason, 454).

    `limit` is the user's sending limit when the backend keeps one.
    """

    __slots__ = ("ok", "user", "tempfail", "limit")

    def __init__(self, ok: bool, user: bytes = b"", tempfail: str | None = None,
                 limit: "Limit | None" = None) -> None:
        self.ok = ok
        self.user = user
        self.tempfail = tempfail
        self.limit = limit


def _checkpassword(argv: list[bytes], env: "Mapping[bytes, bytes]",
                   controls: "Controls") -> "list[bytes] | None":
    """The AUTH patch's command line: `qmail-esmtpd CHECKPASSWORD SUBPROGRAM...`."""
    return argv or None


def _postgres(argv: list[bytes], env: "Mapping[bytes, bytes]", controls: "Controls") -> str | None:
    """A libpq connection string in $AUTHDB or control/authdb."""
    return authdb_conninfo(env, controls)


# configuration -> backend module; the first that finds its setting wins
BACKENDS: "tuple[tuple[str, Finder], ...]" = (
    ("checkpassword", _checkpassword),
    ("postgres", _postgres),
)


def chosen(argv: list[bytes], env: "Mapping[bytes, bytes]",
           controls: "Controls") -> "tuple[str, Setting] | None":
    """(backend module name, its setting), or None: no AUTH, plain qmail-smtpd."""
    for name, find in BACKENDS:
        setting = find(argv, env, controls)
        if setting is not None:
            return name, setting
    return None
