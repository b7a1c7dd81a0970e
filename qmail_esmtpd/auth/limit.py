"""The per-user daily sending limit, kept exactly in `sendcounts`.

The rules, all of them here:
- checked at MAIL (`allows`): a user at the limit hears so before sending DATA;
- charged by one atomic statement just before the message goes to qmail-queue
  (`charge`), so a message is counted only if it is about to be queued;
- refunded if qmail-queue then refuses it (`refund`);
- a database that cannot answer means a temporary failure, never an
  uncounted message.
The charge is an upsert whose UPDATE only happens while the day's count is
under the limit: PostgreSQL serialises concurrent upserts of one row, so N
parallel sessions against a limit L charge exactly min(N, L) messages, on any
number of frontends.  The day is the database's current_date.  A limit of 0
means no limit (like qmail's databytes); the count is still kept.
"""

from ..log import log
from .db import Database, DatabaseError

TODAY = """SELECT count FROM sendcounts WHERE id = %s AND last_send = current_date"""

CHARGE = """
INSERT INTO sendcounts AS s (id, last_send, count, total_count)
VALUES (%(id)s, current_date, 1, 1)
ON CONFLICT (id) DO UPDATE SET
    count = CASE WHEN s.last_send = current_date THEN s.count + 1 ELSE 1 END,
    last_send = current_date,
    total_count = s.total_count + 1
WHERE s.last_send <> current_date OR %(limit)s = 0 OR s.count < %(limit)s
RETURNING s.last_send
"""

REFUND = """
UPDATE sendcounts SET count = count - 1, total_count = total_count - 1
WHERE id = %s AND last_send = %s AND count > 0
"""


class DailyLimit:
    """One authenticated user's limit: the poppass id and that user's messages a day."""

    def __init__(self, db: Database, user_id: int, limit: int) -> None:
        self.db = db
        self.user_id = user_id
        self.limit = limit
        self._charged_day: object = None  # the day the last charge counted on

    def allows(self) -> bool | None:
        """May this user start another message today?  None: cannot tell now."""
        if self.limit == 0:
            return True
        try:
            rows = self.db.query(TODAY, (self.user_id,))
        except DatabaseError as e:
            log(f"sendlimit database: {e}")
            return None
        return (rows[0][0] if rows else 0) < self.limit

    def charge(self) -> bool | None:
        """Count one message: True, False at the limit, None if the database failed."""
        self._charged_day = None
        try:
            rows = self.db.query(CHARGE, {"id": self.user_id, "limit": self.limit})
        except DatabaseError as e:
            log(f"sendlimit database: {e}")
            return None
        if not rows:
            return False
        self._charged_day = rows[0][0]
        return True

    def refund(self) -> None:
        """Give back the last charge (qmail-queue did not take that message)."""
        day, self._charged_day = self._charged_day, None
        if day is None:
            return
        try:
            self.db.query(REFUND, (self.user_id, day))
        except DatabaseError as e:
            log(f"sendlimit refund failed for user id {self.user_id}: {e}")
