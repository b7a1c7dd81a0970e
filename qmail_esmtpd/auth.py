"""Which AUTH backend a session gets, and what every backend shares.

The patch's command line (`qmail-esmtpd CHECKPASSWORD SUBPROGRAM...`) picks
checkpassword; otherwise a connection string in `$AUTHDB` or control/authdb
picks PostgreSQL; with neither the server is plain qmail-smtpd.  Around the
backend, `Authenticator` adds what must hold for all of them: a delay before
every 535, one log line per outcome, and no exception reaching the client.
All of this loads at the first AUTH command: a session that only offers AUTH
pays nothing for it.
"""

import time

from . import replies
from .config import Controls, number_setting
from .sasl import AuthOutcome

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_FAIL_DELAY = 3  # seconds before each 535
DEFAULT_MAX_FAILURES = 3  # failed AUTHs in one session before 421
DEFAULT_SEND_LIMIT = 50  # messages a day, the 2002 patch's figure


class AuthSettings:
    """control/authfaildelay, authmaxfail, sendlimit, authplaintext; $VARIABLES win."""

    def __init__(self, controls: Controls, env: "Mapping[bytes, bytes]") -> None:
        def number(name: bytes, default: int) -> int:
            found = number_setting(controls, env, name)
            return default if found is None else found

        self.fail_delay = number(b"authfaildelay", DEFAULT_FAIL_DELAY)
        self.max_failures = max(number(b"authmaxfail", DEFAULT_MAX_FAILURES), 1)
        self.send_limit = number(b"sendlimit", DEFAULT_SEND_LIMIT)
        self.plaintext = number(b"authplaintext", 0) != 0


def printable(text: bytes, limit: int = 64) -> str:
    """A client-chosen name made safe for a log line."""
    out = "".join(chr(c) if 0x21 <= c < 0x7F and c != 0x5C else f"\\x{c:02x}"
                  for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


class Authenticator:
    """Delay before failure, log every outcome, turn surprises into a 454."""

    def __init__(self, backend: object, remoteip: bytes, fail_delay: float,
                 max_failures: int, log: "Callable[[str], None]",
                 sleep: "Callable[[float], None]" = time.sleep) -> None:
        self.backend = backend
        self.remoteip = remoteip
        self.fail_delay = fail_delay
        self.max_failures = max_failures
        self.log = log
        self.sleep = sleep

    def check(self, user: bytes, password: bytes, mechanism: bytes) -> AuthOutcome:
        try:
            outcome = self.backend.verify(user, password)  # type: ignore[attr-defined]
        except Exception as e:  # the client gets a 454, the log gets the reason
            self.log(f"auth error: {type(e).__name__}: {e}")
            outcome = AuthOutcome(False, tempfail=replies.AUTH_TEMP_DB)
        result = "ok" if outcome.ok else "tempfail" if outcome.tempfail else "fail"
        if result == "fail":
            self.sleep(self.fail_delay)
        self.log(f"auth {result} user={printable(user)} ip={printable(self.remoteip)} "
                 f"mech={mechanism.decode()}")
        return outcome

    def close(self) -> None:
        """End of session: hang up on the database, if the backend has one."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def authenticator(checkpassword: "list[bytes]", conninfo: str | None, controls: Controls,
                  env: "Mapping[bytes, bytes]", remoteip: bytes,
                  log: "Callable[[str], None]") -> Authenticator:
    """The configured backend, wrapped; checkpassword wins over a database."""
    settings = AuthSettings(controls, env)
    if checkpassword:
        from .checkpassword import Checkpassword

        backend: object = Checkpassword(checkpassword)
    else:
        from .authdb import PostgresAuth
        from .pgdb import Database

        backend = PostgresAuth(Database(conninfo or ""), settings.send_limit,
                               settings.plaintext, log)
    return Authenticator(backend, remoteip, settings.fail_delay, settings.max_failures, log)
