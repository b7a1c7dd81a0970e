"""The PostgreSQL backend: accounts from `poppass`, each with a daily sending limit.

Maps what accounts.login() says onto SMTP's terms: database trouble and a
throttled client are temporary failures, and a verified account brings its
DailyLimit (its own `sendlimit` column, else control/sendlimit or
$SENDLIMIT, else 50).  The throttle counts by $TCPREMOTEIP; a client that
tcpserver gave RELAYCLIENT is trusted and not throttled.  An attempt the
database cannot record is not checked: a 454 after the failure delay, for
that AUTH and every later one of the session (logged once).
"""

from ..config import flag_setting, number_setting
from ..log import log, printable
from . import DATABASE, THROTTLED, Verdict
from .accounts import Account, Unavailable, addresses, login, upgrade
from .db import Database
from .limit import DailyLimit
from .throttle import Throttle, open_throttle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config import Controls

DEFAULT_SEND_LIMIT = 50  # messages a day, the 2002 patch's figure


def default_send_limit(controls: "Controls", env: "Mapping[bytes, bytes]") -> int:
    return number_setting(controls, env, b"sendlimit", DEFAULT_SEND_LIMIT)


def open_backend(conninfo: str, controls: "Controls",
                 env: "Mapping[bytes, bytes]") -> "PostgresAuth":
    plaintext = flag_setting(controls, env, b"authplaintext")
    per_message = flag_setting(controls, env, b"sendlimitmessages")
    db = Database(conninfo)
    remoteip = env.get(b"TCPREMOTEIP", b"").decode("ascii", "replace")
    throttle = open_throttle(db, controls, env, remoteip, trusted=b"RELAYCLIENT" in env)
    return PostgresAuth(db, default_send_limit(controls, env), plaintext, per_message, throttle,
                        remoteip)


class PostgresAuth:
    def __init__(self, db: Database, default_limit: int, plaintext: bool,
                 per_message: bool = False, throttle: Throttle | None = None,
                 remoteip: str = "unknown") -> None:
        self.db = db
        self.client_ip = printable(remoteip.encode()) or "unknown"  # for log lines
        self.throttle = throttle
        self.default_limit = default_limit
        self.plaintext = plaintext
        self.per_message = per_message
        self.account: Account | None = None  # the last one verified
        self.said_unrecorded = False  # logged once a session

    def verify(self, user: bytes, password: bytes) -> Verdict:
        try:
            account, status = login(self.db, user, password, self.throttle, self.plaintext)
        except Unavailable as e:
            log(f"auth database: ip={self.client_ip}: {e}")
            return Verdict(False, tempfail=DATABASE)
        self.account = account
        if status is not None and status.unrecorded is not None:
            if not self.said_unrecorded and self.throttle is not None:
                self.said_unrecorded = True
                log(f"auth attempt not recorded source={self.throttle.source}: "
                    f"{status.unrecorded}; AUTH refused unchecked in this session")
            return Verdict(False, tempfail=DATABASE, slowed=True,
                           detail=" refused unchecked: failed logins cannot be recorded")
        if status is not None and status.refused:
            source = self.throttle.source if self.throttle else ""
            return Verdict(False, tempfail=THROTTLED,
                           detail=f" source={source} failures={status.failures}")
        slowed = status is not None and status.slowed
        detail = f" slowed: {status.failures} failures against this name lately" \
            if slowed and status is not None else ""
        if account is None:
            return Verdict(False, slowed=slowed, detail=detail)
        upgrade(self.db, account, password)
        limit = DailyLimit(self.db, account.id, self.default_limit, self.per_message,
                           self.client_ip)
        return Verdict(True, user=user, limit=limit, slowed=slowed, detail=detail)

    def addresses(self) -> frozenset[bytes]:
        """The verified account's own sender addresses; Unavailable on trouble."""
        return frozenset() if self.account is None else addresses(self.db, self.account)

    def close(self) -> None:
        """Hang up; used again, the database is dialled anew."""
        self.db.close()
