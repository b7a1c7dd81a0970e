"""Password check against the `poppass` table, through passlib.

One round trip per AUTH.  An unknown, inactive or undecodable user costs
the same hash work as a wrong password, so timing does not tell which names
exist.  A deprecated hash is replaced on success when the role may UPDATE
pw (the optional grant); without it the login simply goes on.
"""

from . import replies
from .limit import DailyLimit
from .pgdb import Database, DatabaseError
from .sasl import AuthOutcome

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from passlib.context import CryptContext

USER_QUERY = "SELECT id, pw, active, sendlimit FROM poppass WHERE name = %s"
REHASH = "UPDATE poppass SET pw = %s WHERE id = %s AND pw = %s"
NO_PRIVILEGE = "42501"


class PostgresAuth:
    def __init__(self, db: Database, default_limit: int, plaintext: bool,
                 log: "Callable[[str], None]") -> None:
        self.db = db
        self.default_limit = default_limit
        self.plaintext = plaintext
        self.log = log
        self._context = None

    @property
    def context(self) -> "CryptContext":
        """Built at the first AUTH, not at start-up: passlib is slow to import."""
        if self._context is None:
            from .passwords import context

            self._context = context(self.plaintext)
        return self._context

    def verify(self, user: bytes, password: bytes) -> AuthOutcome:
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        row = None
        if name is not None and "\0" not in name:
            try:
                rows = self.db.query(USER_QUERY, (name,))
            except DatabaseError as e:
                self.log(f"auth database: {e}")
                return AuthOutcome(False, tempfail=replies.AUTH_TEMP_DB)
            row = rows[0] if rows else None
        if row is None:
            self.context.dummy_verify()
            return AuthOutcome(False)
        user_id, stored, active, limit = row
        ok, new_hash = self._verify(password, stored)
        if not (ok and active):
            return AuthOutcome(False)
        if new_hash:
            self._rehash(new_hash, user_id, stored)
        limit = self.default_limit if limit is None else limit
        return AuthOutcome(True, user=user, account=DailyLimit(self.db, user_id, limit, self.log))

    def close(self) -> None:
        self.db.close()

    def _verify(self, password: bytes, stored: str) -> "tuple[bool, str | None]":
        """passlib's verify_and_update; an unusable hash or password is just a no."""
        try:
            return self.context.verify_and_update(password, stored)
        except (ValueError, TypeError):  # unknown hash format, NUL, >72 bytes for bcrypt...
            self.context.dummy_verify()
            return False, None

    def _rehash(self, new_hash: str, user_id: int, stored: str) -> None:
        try:
            self.db.query(REHASH, (new_hash, user_id, stored))
        except DatabaseError as e:
            if e.code != NO_PRIVILEGE:  # no UPDATE grant: keep the old hash, quietly
                self.log(f"auth rehash skipped: {e}")
