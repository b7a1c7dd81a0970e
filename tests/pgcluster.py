"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, unix socket only.

PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user (or `nobody`).  Each test gets a fresh database loaded from
sql/, with the least-privilege role `qmaild` the server connects as.
"""

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
_counter = itertools.count(1)


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run PostgreSQL as")


class Cluster:
    def __init__(self) -> None:
        self.user = _service_user()
        self.base = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.base, self.sock):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(PGBIN / program), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.sock} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.base / "postgres.log"), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.sock} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", user: str = "postgres"):
        """An autocommit connection (don't use it as `with conn:`, that opens a transaction)."""
        conn = psycopg2.connect(self.dsn(dbname, user))
        conn.autocommit = True
        return conn

    def empty_database(self, prefix: str = "mail") -> str:
        """A new empty database, and the service role `qmaild` if not there yet."""
        name = f"{prefix}{next(_counter)}"
        with closing(self.connect()) as admin, admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'qmaild'")
            if cur.fetchone() is None:
                cur.execute("CREATE ROLE qmaild LOGIN")
        return name

    def new_database(self, grants: bool = True) -> str:
        """A fresh database with sql/schema.sql and (optionally) sql/grants.sql."""
        name = self.empty_database()
        self.query(name, (ROOT / "sql" / "schema.sql").read_text())
        if grants:
            self.query(name, (ROOT / "sql" / "grants.sql").read_text())
        return name

    def query(self, dbname: str, text: str, params: tuple = ()) -> list:
        """One statement (or script) as the superuser; its rows, if any."""
        with closing(self.connect(dbname)) as conn, conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []
