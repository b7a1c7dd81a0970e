"""SMTP AUTH: which backend checks a password, and what the core may ask of it.

The protocol core talks to one `Authenticator` (authenticator.py), whose
`check()` answers with a `Verdict`, never with reply text.  Behind it sits one
backend, chosen by config.AUTH_BACKENDS: the first entry whose setting is
present wins.  A backend is a module of this package with

    open_backend(setting, controls, env) -> Backend

so adding one is that module plus one line in AUTH_BACKENDS.  This package
loads only when AUTH is configured, and the backend module at the first AUTH
command: a session that never says AUTH must not pay for psycopg2 or passlib.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Limit(Protocol):
        """An authenticated user's daily sending limit (limit.DailyLimit)."""

        def allows(self) -> bool | None: ...
        def charge(self) -> bool | None: ...
        def refund(self) -> None: ...

    class Backend(Protocol):
        def verify(self, user: bytes, password: bytes) -> "Verdict": ...
        def close(self) -> None: ...


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
