"""The PostgreSQL connection behind accounts, the sending limit and the admin tool.

The connection string comes from config.authdb_conninfo() (`$AUTHDB`, else
control/authdb; libpq's PG* variables and ~/.pgpass apply as libpq defines
them).  psycopg2 is imported on first use: a session that never
authenticates never loads it.

Every call is bounded in time twice over:
- on the server, each statement runs with `statement_timeout` set inside
  its own transaction (set_config(..., true)), so a row lock or a slow plan
  is cancelled there and nothing outlives the statement: this works through
  pgbouncer in transaction pooling, where startup `options` and plain SET
  do not;
- on the client, libpq waits through our own poll loop (psycopg2's wait
  callback) with a deadline, so a database host that stopped answering (a
  stalled backend, a lost network) costs a few seconds, never a hung
  session.  The connection is then dropped.
Callers close() the connection whenever they go back to waiting for their
client, so an idle session holds no database backend.  In a worker of
qmail-esmtpd-server (-m N) close() keeps the one connection for the
worker's next use instead (keep_connections(), below): a connect costs
the client more CPU than all of a session's statements.
"""

import posix
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from psycopg2.extensions import connection

CONNECT_TIMEOUT = 3  # seconds a connection may take, unless conninfo sets connect_timeout
STATEMENT_TIMEOUT_MS = 5000  # the server cancels a statement after this
ANSWER_GRACE = 1  # seconds the client waits beyond that before hanging up
APPLICATION_NAME = "qmail-esmtpd"
NO_PRIVILEGE = "42501"  # SQLSTATE insufficient_privilege

# Prefixed to every statement: one simple-protocol query, one transaction.
_BOUNDED = f"SELECT set_config('statement_timeout', '{STATEMENT_TIMEOUT_MS}', true); "


class DatabaseError(Exception):
    """The database could not answer: unreachable, refused, missing table, timeout.

    `code` is PostgreSQL's SQLSTATE when the server sent one (42501: no privilege).
    """

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.code = code


class NoAnswer(Exception):
    """The client-side deadline passed (raised inside psycopg2's wait callback)."""


_wait_seconds = float(CONNECT_TIMEOUT)  # the deadline of the call in progress


def _wait(conn: "connection") -> None:
    """psycopg2's wait callback: libpq's blocking waits, with a deadline."""
    import select

    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE

    deadline = time.monotonic() + _wait_seconds
    while True:
        state = conn.poll()
        if state == POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer(f"no answer from the database in {_wait_seconds:g} s")
        fd = conn.fileno()
        if state == POLL_READ:
            select.select([fd], [], [], left)
        elif state == POLL_WRITE:
            select.select([], [fd], [], left)
        else:
            raise NoAnswer(f"unexpected poll state {state}")


def _import_psycopg2() -> None:
    """psycopg2 without Python's `ssl` (15 ms, half its import cost).

    psycopg2 imports `ssl` only so that Python, not libpq, sets up the
    thread-locking callbacks of OpenSSL before 1.1; when that import fails
    it lets libpq do it (psycopgmodule.c, libcrypto_threads_init).  With
    OpenSSL 1.1 and later (psycopg2-binary bundles 3.x) neither does
    anything, and libpq still makes TLS connections to the database.  A
    session that already loaded `ssl` (STARTTLS) keeps it as it is.
    """
    import sys

    if "psycopg2" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` fails
    try:
        import psycopg2  # noqa: F401
    finally:
        del sys.modules["ssl"]


def each_host(params: "dict[str, str]") -> "list[dict[str, str]]":
    """libpq's host lists (`host=a,b port=5432,6432`), one override per host.

    libpq tries the hosts of a list in turn and moves on after connect_timeout,
    but not when it is polled (as here, for our own deadline): then a first
    host that accepts and never answers would use up the deadline and the
    next one would never be tried.  So each host gets its own connection
    attempt and its own deadline; target_session_attrs still applies to each.
    A single host, or lists libpq itself would refuse, come back as [{}].
    """
    lists = {key: params[key].split(",") for key in ("host", "hostaddr", "port")
             if key in params}
    count = max((len(values) for values in lists.values()), default=1)
    if count == 1 or any(len(values) not in (1, count) for values in lists.values()):
        return [{}]
    return [{key: values[i] if len(values) > 1 else values[0]
             for key, values in lists.items()} for i in range(count)]


def one_line(error: BaseException) -> str:
    """An error as one log-safe line (libpq's can span several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines)[:500] or type(error).__name__


class Database:
    """One lazily opened autocommit connection; each statement stands alone."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.conn: "connection | None" = None
        self._kept_as: tuple | None = None  # what a kept connection must match (once a session)

    def kept_as(self) -> tuple:
        if self._kept_as is None:
            self._kept_as = KeptConnection.key(self.conninfo)
        return self._kept_as

    def _connect(self) -> "connection":
        global _wait_seconds
        import psycopg2
        import psycopg2.extensions

        psycopg2.extensions.set_wait_callback(_wait)
        params = psycopg2.extensions.parse_dsn(self.conninfo)
        extra: dict[str, str] = {}
        if "application_name" not in params:
            extra["application_name"] = APPLICATION_NAME
        try:
            timeout = float(params.get("connect_timeout", CONNECT_TIMEOUT))
        except ValueError:
            timeout = CONNECT_TIMEOUT
        hosts = each_host(params)
        reasons = []
        for host in hosts:
            _wait_seconds = timeout
            try:
                conn = psycopg2.connect(psycopg2.extensions.make_dsn(
                    self.conninfo, **extra, **host))
            except (psycopg2.Error, NoAnswer) as e:
                if len(hosts) == 1:
                    raise
                where = host.get("host") or host.get("hostaddr") or "default"
                reasons.append(f"{where}{':' + host['port'] if 'port' in host else ''}: "
                               f"{one_line(e)}")
                continue
            conn.autocommit = True
            return conn
        raise psycopg2.OperationalError("; ".join(reasons))

    def connect(self, identity: "AbstractContextManager[object] | None" = None) -> None:
        """Open the connection now rather than at the first statement, inside
        `identity` when given: the POP3 program started as root connects with
        the service user's uid, which PostgreSQL's peer authentication reads,
        while psycopg2 itself is loaded outside it.  Raises DatabaseError."""
        _import_psycopg2()
        import psycopg2

        if self.conn is not None:
            return
        try:
            if identity is None:
                self.conn = self._connect()
            else:
                with identity:
                    self.conn = self._connect()
        except (psycopg2.Error, NoAnswer) as e:
            self.close()
            raise DatabaseError(one_line(e), getattr(e, "pgcode", None)) from None

    def query(self, sql: str, params: "tuple | dict" = ()) -> list:
        """Run one parameterised statement and return its rows (empty if none).

        Any failure raises DatabaseError with a one-line reason and drops the
        connection, so the next statement starts afresh.
        """
        global _wait_seconds
        _import_psycopg2()
        import psycopg2

        try:
            if self.conn is None:
                self.conn = _kept.take(self.kept_as()) if _kept else None
            if self.conn is None:
                self.conn = self._connect()
            _wait_seconds = STATEMENT_TIMEOUT_MS / 1000 + ANSWER_GRACE
            with self.conn.cursor() as cur:
                cur.execute(_BOUNDED + sql, params)
                return cur.fetchall() if cur.description is not None else []
        except (psycopg2.Error, NoAnswer) as e:
            self.close(broken=True)
            raise DatabaseError(one_line(e), getattr(e, "pgcode", None)) from None

    def close(self, broken: bool = False) -> None:
        """Hang up (in a worker: keep it for the next use, unless `broken`);
        the next query() connects again."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            if not broken and _kept is not None and _kept.keep(conn, self.kept_as()):
                return
            hang_up(conn)


def hang_up(conn: "connection") -> None:
    try:
        conn.close()
    except Exception:  # closing a broken connection must not mask the real error
        pass


KEEP_SECONDS = 60  # a kept connection idle longer is closed, not used


class KeptConnection:
    """A worker's one idle connection, between its uses and its sessions.

    Only a connection that carries nothing of its last use is kept: in
    autocommit with no transaction open.  Nothing here sets a role, a
    setting (each statement's timeout is local to its own transaction), a
    temporary table, a prepared statement or a lock that outlives its
    statement.  It is taken again only for the same conninfo and the same
    libpq variables (a rule may set PG* ones), within KEEP_SECONDS, and only
    while nothing waits on its socket: a backend that was terminated, or a
    server that restarted or failed over, has said so there (or closed it),
    and a new connection is opened instead.
    """

    def __init__(self) -> None:
        self.conn: "connection | None" = None
        self.opened_for: tuple = ()
        self.since = 0.0

    @staticmethod
    def key(conninfo: str) -> tuple:
        """What a connection was opened for: `conninfo` and libpq's variables."""
        return conninfo, tuple((k, v) for k, v in posix.environ.items() if k[:2] == b"PG")

    def keep(self, conn: "connection", key: tuple) -> bool:
        """Whether `conn` is kept (else the caller closes it)."""
        import psycopg2.extensions

        try:
            idle = (not conn.closed and conn.autocommit and conn.info.transaction_status
                    == psycopg2.extensions.TRANSACTION_STATUS_IDLE)
        except Exception:
            idle = False
        if not idle:
            return False
        self.forget()
        self.conn, self.opened_for, self.since = conn, key, time.monotonic()
        return True

    def take(self, key: tuple) -> "connection | None":
        """The kept connection, if it was opened for `key` and is still sound; else None."""
        conn, self.conn = self.conn, None
        if conn is None:
            return None
        import select

        try:
            sound = (self.opened_for == key and not conn.closed
                     and time.monotonic() - self.since < KEEP_SECONDS
                     and not select.select([conn.fileno()], [], [], 0)[0])
        except (OSError, ValueError):
            sound = False
        if sound:
            return conn
        hang_up(conn)
        return None

    def forget(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            hang_up(conn)

    def descriptor(self) -> int | None:
        """The kept connection's socket (a worker's own, not a session's leftover)."""
        try:
            return self.conn.fileno() if self.conn is not None and not self.conn.closed else None
        except Exception:
            return None


_kept: KeptConnection | None = None


def keep_connections() -> KeptConnection:
    """From now on, close() keeps one connection for the next use (workers only)."""
    global _kept
    if _kept is None:
        _kept = KeptConnection()
    return _kept
