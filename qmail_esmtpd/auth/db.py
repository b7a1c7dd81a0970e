"""The PostgreSQL connection behind accounts, the sending limit and the admin tool.

The connection string comes from config.authdb_conninfo() (`$AUTHDB`, else
control/authdb; libpq's PG* variables and ~/.pgpass apply as libpq defines
them).  Connections get a short connect timeout and a statement timeout
unless the string sets its own, so a sick database costs a client a
few seconds and a 4xx, never a hung session.  psycopg2 is imported on first
use: a session that never authenticates never loads it.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from psycopg2.extensions import connection

CONNECT_TIMEOUT = 3  # seconds, libpq's connect_timeout
STATEMENT_TIMEOUT_MS = 5000
APPLICATION_NAME = "qmail-esmtpd"
NO_PRIVILEGE = "42501"  # SQLSTATE insufficient_privilege


class DatabaseError(Exception):
    """The database could not answer: unreachable, refused, missing table, timeout.

    `code` is PostgreSQL's SQLSTATE when the server sent one (42501: no privilege).
    """

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.code = code


class Database:
    """One lazily opened autocommit connection; each statement stands alone."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.conn: "connection | None" = None

    def _connect(self) -> "connection":
        import psycopg2
        import psycopg2.extensions

        params = psycopg2.extensions.parse_dsn(self.conninfo)
        extra: dict[str, str | int] = {}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        if "options" not in params:
            extra["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        if "application_name" not in params:
            extra["application_name"] = APPLICATION_NAME
        conn = psycopg2.connect(psycopg2.extensions.make_dsn(self.conninfo, **extra))
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: "tuple | dict" = ()) -> list:
        """Run one parameterised statement and return its rows (empty if none).

        Any failure raises DatabaseError with a one-line reason and drops the
        connection, so the next statement starts afresh.
        """
        import psycopg2

        try:
            if self.conn is None:
                self.conn = self._connect()
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg2.Error as e:
            self.close()
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DatabaseError(reason, getattr(e, "pgcode", None)) from None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                pass
            self.conn = None
