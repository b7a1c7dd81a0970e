"""Unknown recipients remembered across connections, per source, in `unknownrcpts`.

`unknownrcptlimit` ends one session; a harvester that reconnects starts
afresh.  Where the AUTH database is configured (control/authdb, $AUTHDB),
this keeps a window per source as auth/throttle.py does for failed logins:
a source (an IPv4 address, or the /64 of an IPv6 client) that named more
than `unknownrcptwindowlimit` unknown recipients within `unknownrcptwindow`
seconds gets the 421 at its next unknown recipient, in whichever connection.

- The database is asked once a session, at its first unknown recipient: one
  statement records it and reads what the source named lately; the rest of
  the session's count is recorded as the session ends.  A session that never
  names an unknown address never loads this module.
- It fails open: a database that cannot be read or written (down, read-only,
  a revoked grant, too slow) leaves the session judged alone, as without a
  database, with one log line.  Failing closed would refuse mail.
- The caller counts only clients that neither relay nor authenticated.
Rows older than a day are deleted as new ones arrive.
"""

from .config import ControlError, authdb_conninfo, number_setting
from .log import log, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .auth.db import Database
    from .config import Controls

DEFAULT_LIMIT = 30  # unknown recipients from one source ...
DEFAULT_WINDOW = 3600  # ... within this many seconds
RETENTION = 86400  # seconds a row is kept; the window is at most this

# This session's first unknown recipient, and the source's earlier ones in the
# window (the SELECT sees the table as it was before the INSERT).
FIRST = """
WITH expired AS (
    DELETE FROM unknownrcpts WHERE at < now() - %(retention)s * interval '1 second'
), recorded AS (
    INSERT INTO unknownrcpts (source) VALUES (%(source)s)
)
SELECT coalesce(sum(unknown), 0) FROM unknownrcpts
WHERE source = %(source)s AND at > now() - %(window)s * interval '1 second'
"""

REST = "INSERT INTO unknownrcpts (source, unknown) VALUES (%(source)s, %(unknown)s)"


class Memory:
    """One session's view of its source's unknown recipients across connections."""

    def __init__(self, db: "Database", source: str, limit: int, window: int,
                 remoteip: bytes) -> None:
        self.db = db
        self.source = source
        self.limit = limit
        self.window = min(window, RETENTION)
        self.ip = printable(remoteip)
        self.earlier: int | None = None  # the source's unknown recipients before this session
        self.failed = False  # the database failed once: judged alone from then on

    def past_limit(self, unknown: int) -> int | None:
        """The source's unknown recipients lately, this session's `unknown`
        included, when that is past the limit; None while within it, or when
        the database could not say.  Asks the database at the first call only."""
        if self.earlier is None and not self.failed:
            rows = self._query(FIRST, {"source": self.source, "window": self.window,
                                       "retention": RETENTION})
            if rows is not None:
                self.earlier = int(rows[0][0])
        if self.earlier is None:
            return None
        lately = self.earlier + unknown
        return lately if lately > self.limit else None

    def finish(self, unknown: int) -> None:
        """The session is over: record its unknown recipients after the first."""
        if self.earlier is not None and unknown > 1:
            self._query(REST, {"source": self.source, "unknown": unknown - 1})

    def _query(self, sql: str, params: dict) -> list | None:
        """One statement, the connection closed after it (no backend is held while
        the client talks); None, logged once, when the database failed."""
        from .auth.db import DatabaseError

        try:
            return self.db.query(sql, params)
        except (DatabaseError, ImportError) as e:
            self.failed = True
            self.earlier = None
            log(f"recipient harvesting database: ip={self.ip}: {e}; "
                "unknown recipients judged within this session only")
            return None
        finally:
            self.db.close()


def open_memory(env: "Mapping[bytes, bytes]", controls: "Controls",
                remoteip: bytes) -> Memory | None:
    """The memory as the configuration sets it (unknownrcptwindowlimit,
    unknownrcptwindow; control/authdb or $AUTHDB); None when off: no
    database, a limit or window of 0, or no client address."""
    ip = printable(remoteip)
    try:
        conninfo = authdb_conninfo(env, controls)
        limit = number_setting(controls, env, b"unknownrcptwindowlimit", DEFAULT_LIMIT)
        window = number_setting(controls, env, b"unknownrcptwindow", DEFAULT_WINDOW)
    except ControlError as e:
        log(f"recipient harvesting controls: ip={ip}: {e}; "
            "unknown recipients judged within this session only")
        return None
    if conninfo is None or not limit or not window:
        return None
    from .auth.db import Database
    from .auth.throttle import source_of

    source = source_of(remoteip.decode("ascii", "replace"))
    if source is None:
        return None
    return Memory(Database(conninfo), source, limit, window, remoteip)
