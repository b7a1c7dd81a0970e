"""A throwaway PostgreSQL cluster (initdb in a temp folder, a unix socket
only) and its databases, loaded from sql/ as an install loads them."""

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .paths import ROOT
from .processes import StartError
from .system_users import host_has

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))

_database_numbers = itertools.count(1)


@contextmanager
def unbounded() -> Iterator[None]:
    """The suite's own statements wait as long as they need (CREATE DATABASE
    on a busy machine), not within the deadline qmail-esmtpd's psycopg2 wait
    callback gives a session's statements, which is global to the process
    once a test has loaded it."""
    import psycopg2.extensions

    callback = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(None)
    try:
        yield
    finally:
        psycopg2.extensions.set_wait_callback(callback)


def _service_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        if host_has(name):
            return name
    raise StartError("no unprivileged user to run PostgreSQL as")


class Cluster:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, a unix socket only.

    Each test gets a fresh database loaded from sql/, with the least-privilege
    role `qmaild` the server connects as.  destroy() stops it and removes it.
    With `primary`, it is that cluster's streaming standby instead
    (pg_basebackup -R): read-only until promote().
    """

    def __init__(self, primary: "Cluster | None" = None) -> None:
        self.user = _service_user()
        self.base = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        self.loaded: dict[tuple[bool, bool], str] = {}  # new_database()'s originals
        try:
            if self.user:
                entry = pwd.getpwnam(self.user)
                for path in (self.base, self.sock):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            if primary is None:
                self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                          "--no-sync", "-E", "UTF8", "--locale=C")
            else:  # initdb's pg_hba.conf lets local connections replicate
                self._run("pg_basebackup", "-D", str(self.data), "-R", "-h", str(primary.sock),
                          "-U", "postgres", "--checkpoint=fast", "--no-sync")
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(PGBIN / program), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise StartError(f"{program} from {PGBIN} ($PGBIN): {e}") from None
        except subprocess.CalledProcessError as e:
            raise StartError(f"{program} exited {e.returncode}: "
                             f"{e.stderr.decode(errors='replace').strip()[-600:]}") from None

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.sock} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.base / "postgres.log"), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def promote(self) -> None:
        """A standby becomes a primary (returns once it accepts writes)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def postmaster(self) -> int:
        """The postmaster's pid."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.sock} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", user: str = "postgres"):
        """An autocommit connection (don't use it as `with conn:`, that opens a transaction)."""
        import psycopg2

        with unbounded():
            conn = psycopg2.connect(self.dsn(dbname, user))
            conn.autocommit = True
        return conn

    def empty_database(self, prefix: str = "mail") -> "Database":
        """A new empty database, and the service role `qmaild` if not there yet."""
        name = f"{prefix}{next(_database_numbers)}"
        with Database(self, "postgres") as admin:
            admin.sql(f"CREATE DATABASE {name}")
            if not admin.sql("SELECT 1 FROM pg_roles WHERE rolname = 'qmaild'"):
                admin.sql("CREATE ROLE qmaild LOGIN")
        return Database(self, name)

    def new_database(self, grants: bool = True) -> "Database":
        """A fresh database with sql/schema.sql and (optionally) sql/grants.sql:
        a copy of one loaded once per cluster, which is what most tests start
        from (loading the files takes longer than copying the result).
        grants.sql grants to `dovecot` only where that role exists, so
        whether it does is part of which copy is taken."""
        with Database(self, "postgres") as admin:
            dovecot = bool(admin.sql("SELECT 1 FROM pg_roles WHERE rolname = 'dovecot'"))
            key = (grants, dovecot)
            if key not in self.loaded:
                with self.empty_database("loaded") as loaded:
                    loaded.sql((ROOT / "sql" / "schema.sql").read_text())
                    if grants:
                        loaded.sql((ROOT / "sql" / "grants.sql").read_text())
                self.loaded[key] = loaded.name
            name = f"mail{next(_database_numbers)}"
            admin.sql(f"CREATE DATABASE {name} TEMPLATE {self.loaded[key]} STRATEGY FILE_COPY")
        return Database(self, name)


class Database:
    """One database of a Cluster, and the SQL helper: `sql()` as the superuser.

    The connection opens at the first statement, in autocommit mode, and
    stays open (so a test can hold a lock in it: `conn.autocommit = False`).
    """

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = self.cluster.connect(self.name)
        return self._conn

    def dsn(self, user: str = "postgres") -> str:
        return self.cluster.dsn(self.name, user)

    def sql(self, text: str, params: tuple | dict | None = None) -> list:
        """One statement (or a script of several); its rows, if any.

        Without `params` the text goes as it is (a `%` in a script stays a `%`).
        """
        with unbounded(), self.conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

