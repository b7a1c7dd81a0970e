"""SMTP AUTH: which backend checks a password, and what the core may ask of it.

The protocol core talks to one `Authenticator` (below), whose `check()`
answers with a `Verdict`, never with reply text.  Around whichever backend:
the backend module and the AUTH control files load at the first AUTH
command, a delay comes before every failure, one log line per outcome, and
any surprise (a bug, an unreadable control file) becomes a temporary
failure, never a traceback on the wire.  Behind it sits one
backend, chosen by config.AUTH_BACKENDS: the first entry whose setting is
present wins.  A backend is a module of this package with

    open_backend(setting, controls, env) -> Backend

so adding one is that module plus one line in AUTH_BACKENDS.  This package
loads only when AUTH is configured, and the backend module at the first AUTH
command: a session that never says AUTH must not pay for psycopg2 or passlib.
"""

import time

from ..config import Controls, clamp_seconds, flag_setting, number_setting

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Protocol

    from ..config import Setting

    class Limit(Protocol):
        """An authenticated user's daily sending limit (limit.DailyLimit)."""

        why: str  # the last refusal's reason, for the log

        def remaining(self) -> int | None: ...
        def charge(self, recipients: int) -> bool | None: ...
        def refund(self) -> None: ...

    class Backend(Protocol):
        def verify(self, user: bytes, password: bytes) -> "Verdict": ...
        def addresses(self) -> frozenset[bytes]: ...  # the verified account's senders
        def close(self) -> None: ...


MECHANISMS = (b"LOGIN", b"PLAIN")

# Why a check could not be made; replies.AUTH_TEMPORARY gives each its 454.
DATABASE = "database"
NO_PIPE = "pipe"
NO_START = "start"
NO_WRITE = "write"
CHILD_TROUBLE = "child"
THROTTLED = "throttled"  # too many failures from the client's network lately (throttle.py)


class Verdict:
    """A backend's answer: `ok`, or a failure (535), or `tempfail` (a reason, 454).

    `limit` is the user's sending limit when the backend keeps one; `senders`
    the envelope senders the user may give (lower case), None: any.
    `slowed`: the name is under attack, so even a right answer waits.
    `detail` ends the log line (why throttled or slowed).
    """

    __slots__ = ("ok", "user", "tempfail", "limit", "senders", "slowed", "detail")

    def __init__(self, ok: bool, user: bytes = b"", tempfail: str | None = None,
                 limit: "Limit | None" = None, slowed: bool = False,
                 detail: str = "") -> None:
        self.ok = ok
        self.user = user
        self.tempfail = tempfail
        self.limit = limit
        self.senders: frozenset[bytes] | None = None
        self.slowed = slowed
        self.detail = detail


DEFAULT_FAIL_DELAY = 3  # seconds before each 535
DEFAULT_MAX_FAILURES = 3  # failed AUTHs in one session before 421


class Authenticator:
    """The one object the protocol core asks: check(), max_failures, close()."""

    mechanisms = MECHANISMS

    def __init__(self, backend: str, setting: "Setting", controls: Controls,
                 env: "Mapping[bytes, bytes]", remoteip: bytes,
                 sleep: "Callable[[float], None]" = time.sleep) -> None:
        self.backend_name = backend
        self.setting = setting
        self.controls = controls
        self.env = env
        self.remoteip = remoteip
        self.sleep = sleep
        self.backend: "Backend | None" = None
        self.fail_delay = 0
        self._max_failures = 0
        self.bind_senders = False

    def _load(self) -> "Backend":
        if self.backend is None:
            # AUTH's nine settings, most of them files that are missing: in a
            # worker, read as it keeps files while unchanged (kept.KeptFiles)
            controls, env = self.controls.kept(), self.env
            fail_delay = number_setting(controls, env, b"authfaildelay", DEFAULT_FAIL_DELAY)
            max_failures = number_setting(controls, env, b"authmaxfail", DEFAULT_MAX_FAILURES)
            module = __import__(f"{__name__}.{self.backend_name}", fromlist=["open_backend"])
            self.backend = module.open_backend(self.setting, controls, env)
            self.fail_delay = clamp_seconds(fail_delay)
            self._max_failures = max(max_failures, 1)
            self.bind_senders = flag_setting(controls, env, b"senderbinding")
        return self.backend

    @property
    def max_failures(self) -> int:
        """Failed AUTHs allowed in one session (read once a check has loaded them)."""
        return self._max_failures or DEFAULT_MAX_FAILURES

    def check(self, user: bytes, password: bytes, mechanism: bytes,
              authzid: bytes = b"") -> Verdict:
        """One login, answered after the delay; `authzid` (PLAIN's first
        field) must be empty or the login name itself (RFC 4616)."""
        from ..log import log, printable  # here, not at start-up: AUTH sessions only

        backend = None
        try:
            backend = self._load()
            if authzid and authzid != user:
                verdict = Verdict(False)  # we let nobody act for another user
                log(f"auth refused authzid={printable(authzid)} ip={printable(self.remoteip)}: "
                    "not the login name")
            else:
                verdict = backend.verify(user, password)
            if verdict.ok and self.bind_senders:
                verdict.senders = self._senders(verdict.user or user, backend)
        except Exception as e:  # the client gets a 454, the log gets the reason
            log(f"auth error ip={printable(self.remoteip)}: {type(e).__name__}: {e}")
            verdict = Verdict(False, tempfail=DATABASE)
        finally:
            if backend is not None:
                backend.close()  # no database connection while the client thinks
        result = ("ok" if verdict.ok else verdict.tempfail if verdict.tempfail == THROTTLED
                  else "tempfail" if verdict.tempfail else "fail")
        if result in ("fail", THROTTLED) or verdict.slowed:
            self.sleep(self.fail_delay)
        log(f"auth {result} user={printable(user)} ip={printable(self.remoteip)} "
            f"mech={mechanism.decode()}{verdict.detail}")
        return verdict

    @staticmethod
    def _senders(user: bytes, backend: "Backend") -> frozenset[bytes]:
        """With control/senderbinding: the login name when it is an address,
        and whatever the backend lists for the account."""
        own = frozenset([user.lower()]) if b"@" in user else frozenset()
        return own | backend.addresses()

    def close(self) -> None:
        """End of session: hang up on the database, if the backend has one
        (check() already did after each login; the limit after each use)."""
        if self.backend is not None:
            self.backend.close()
