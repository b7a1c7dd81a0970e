"""The per-user daily sending limit, kept exactly in `sendcounts`.

The rules, all of them here:
- the limit counts recipients of queued messages (`count` and `total_count`
  keep their 2002 names); with control/sendlimitmessages it counts messages,
  as the 2002 patch did;
- asked at MAIL (`remaining`): a user with nothing left hears so before
  sending anything, and RCPT refuses (452) recipients beyond what is left;
- charged by one atomic statement just before the message goes to
  qmail-queue (`charge`): all its recipients, or none and the message is
  refused, if parallel sessions used the rest meanwhile;
- refunded if qmail-queue then refuses the message (`refund`);
- every statement reads the account's current `sendlimit` and `active`, so
  `qmail-esmtpd-user limit` or `active = false` reach sessions already open;
- a database that cannot answer means a temporary failure, never an
  uncounted message.
The charge is an upsert whose UPDATE only happens while the day's count
plus the message stays within the limit: PostgreSQL serialises concurrent
upserts of one row and re-checks the condition on the latest count, so
parallel sessions can never together exceed the limit, on any number of
frontends.  The day is the database's current_date.  A limit of 0 means no
limit (like qmail's databytes); the count is still kept.  The connection is
closed after each call: the session goes back to waiting for its client.
"""

from ..log import log
from .db import Database, DatabaseError

MAX_LIMIT = 2**31 - 1  # sendlimit is an integer column; bigger means "as many as fit"
UNLIMITED = MAX_LIMIT

REMAINING = """
SELECT p.active, coalesce(p.sendlimit, %(default)s),
       coalesce((SELECT s.count FROM sendcounts s
                 WHERE s.id = p.id AND s.last_send = current_date), 0)
FROM poppass p WHERE p.id = %(id)s
"""

CHARGE = """
WITH account AS (
    SELECT id, coalesce(sendlimit, %(default)s) AS daily FROM poppass
    WHERE id = %(id)s AND active
)
INSERT INTO sendcounts AS s (id, last_send, count, total_count)
SELECT id, current_date, %(n)s, %(n)s FROM account WHERE daily = 0 OR %(n)s <= daily
ON CONFLICT (id) DO UPDATE SET
    count = CASE WHEN s.last_send = current_date THEN s.count + excluded.count
                 ELSE excluded.count END,
    last_send = current_date,
    total_count = s.total_count + excluded.count
WHERE (SELECT daily FROM account) = 0
   OR (CASE WHEN s.last_send = current_date THEN s.count ELSE 0 END) + excluded.count
      <= (SELECT daily FROM account)
RETURNING s.last_send
"""

REFUND = """
UPDATE sendcounts SET count = count - %(n)s, total_count = total_count - %(n)s
WHERE id = %(id)s AND last_send = %(day)s AND count >= %(n)s
"""


class DailyLimit:
    """One authenticated account's limit: its poppass id, the site's default
    (for accounts whose `sendlimit` is NULL) and what one message costs;
    `remoteip` (printable, as the log takes it) names the client in its lines."""

    def __init__(self, db: Database, user_id: int, default: int,
                 per_message: bool = False, remoteip: str = "unknown") -> None:
        self.db = db
        self.user_id = user_id
        self.default = min(default, MAX_LIMIT)
        self.per_message = per_message
        self.client = f"user id {user_id} ip={remoteip}"
        self.unit = "messages" if per_message else "recipients"
        self.daily = 0  # the account's limit as remaining() last read it
        self.why = ""  # the last refusal's reason, for the log
        self._charge: tuple[object, int] | None = None  # (day, units) of the last charge

    def remaining(self) -> int | None:
        """Recipients this account may still send to today (UNLIMITED when no
        limit, 0 when none or the account is disabled); None: cannot tell now."""
        try:
            rows = self.db.query(REMAINING, {"id": self.user_id, "default": self.default})
        except DatabaseError as e:
            log(f"sendlimit database: {self.client}: {e}")
            return None
        finally:
            self.db.close()
        if not rows or not rows[0][0]:
            self.why = "account disabled"
            return 0
        _, daily, count = rows[0]
        self.daily = daily
        if daily == 0:
            return UNLIMITED
        self.why = f"{count} of {daily} {self.unit} a day already sent"
        if self.per_message:
            return UNLIMITED if count < daily else 0
        return max(daily - count, 0)

    def cost(self, recipients: int) -> int:
        return 1 if self.per_message else recipients

    def charge(self, recipients: int) -> bool | None:
        """Count one message: True, False if refused (limit, disabled), None if
        the database failed."""
        units = self.cost(recipients)
        self._charge = None
        try:
            rows = self.db.query(CHARGE, {"id": self.user_id, "default": self.default,
                                          "n": units})
        except DatabaseError as e:
            log(f"sendlimit database: {self.client}: {e}")
            return None
        finally:
            self.db.close()
        if not rows:
            self.why = ("account disabled" if not self.daily else
                        f"{units} {self.unit} would pass the daily limit: other sessions "
                        f"sent the rest meanwhile, or the limit was lowered or the account "
                        f"disabled")
            return False
        self._charge = (rows[0][0], units)
        return True

    def refund(self) -> None:
        """Give back the last charge (qmail-queue did not take that message)."""
        charge, self._charge = self._charge, None
        if charge is None:
            return
        day, units = charge
        try:
            self.db.query(REFUND, {"id": self.user_id, "day": day, "n": units})
        except DatabaseError as e:
            log(f"sendlimit refund of {units} {self.unit} failed: {self.client}: {e}")
        finally:
            self.db.close()
