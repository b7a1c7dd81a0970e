"""The PostgreSQL backend: accounts from `poppass`, each with a daily sending limit.

Maps what accounts.verify() says onto SMTP's terms: database trouble is a
temporary failure, and a verified account brings its DailyLimit (its own
`sendlimit` column, else control/sendlimit or $SENDLIMIT, else 50).
"""

from ..config import flag_setting, number_setting
from ..log import log
from . import DATABASE, Verdict
from .accounts import Account, Unavailable, addresses, verify
from .db import Database
from .limit import DailyLimit

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
    return PostgresAuth(Database(conninfo), default_send_limit(controls, env), plaintext)


class PostgresAuth:
    def __init__(self, db: Database, default_limit: int, plaintext: bool) -> None:
        self.db = db
        self.default_limit = default_limit
        self.plaintext = plaintext
        self.account: Account | None = None  # the last one verified

    def verify(self, user: bytes, password: bytes) -> Verdict:
        try:
            account = verify(self.db, user, password, self.plaintext)
        except Unavailable as e:
            log(f"auth database: {e}")
            return Verdict(False, tempfail=DATABASE)
        self.account = account
        if account is None:
            return Verdict(False)
        limit = self.default_limit if account.sendlimit is None else account.sendlimit
        return Verdict(True, user=user, limit=DailyLimit(self.db, account.id, limit))

    def addresses(self) -> frozenset[bytes]:
        """The verified account's own sender addresses; Unavailable on trouble."""
        return frozenset() if self.account is None else addresses(self.db, self.account)

    def close(self) -> None:
        self.db.close()
