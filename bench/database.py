"""The PostgreSQL cluster behind the AUTH figures, and the CPU of its backends."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.postgres import PGBIN, Cluster
from tests.harness.processes import StartError

from . import BenchError
from .session import AUTH_PASSWORD, AUTH_SENDLIMIT, AUTH_USER


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold blanks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


class Backends:
    """CPU of PostgreSQL backends, which are the postmaster's children, not ours.

    A backend exits when its client disconnects and the postmaster reaps it,
    so its CPU ends up in the postmaster's cutime+cstime.  The kernel reports
    those in clock ticks (usually 10 ms): only totals over many sessions mean
    something, and while they are taken nothing else may connect.
    """

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float | None:
        """Seconds of all reaped children so far; None where /proc cannot tell."""
        try:
            fields = proc_stat(self.postmaster)
            return (int(fields[13]) + int(fields[14])) / self.tick
        except (OSError, ValueError, IndexError):
            return None

    def busy(self) -> bool:
        """Is a client backend alive, or an exited child not reaped yet?"""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = proc_stat(int(entry.name))
                if int(fields[1]) != self.postmaster:
                    continue
                if fields[0] == "Z":
                    return True
                title = Path(entry.path, "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if b"[local]" in title:  # ps title of a client backend on the unix socket
                return True
        return False

    def settled_cpu(self) -> float | None:
        """cpu(), once every backend of a finished session has been reaped."""
        deadline = time.monotonic() + 5.0
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.cpu()


def pop3_sysuser() -> str:
    """Who the POP3 figure's logins become: nobody as root, else ourselves
    (qmail-esmtpd-checkpassword can only switch users as root)."""
    import pwd

    return "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name


@dataclass
class AuthDB:
    """A running throwaway cluster holding one AUTH user."""

    conninfo: str  # what $AUTHDB gets: the least-privilege role qmaild
    backends: Backends
    cluster: Cluster  # for figures that put pgbouncer in front of it
    dbname: str


@contextmanager
def auth_database() -> Iterator[AuthDB]:
    """harness.postgres.Cluster with the schema, grants and the bench's user; always destroyed."""
    try:
        import passlib.context  # noqa: F401
        import psycopg2  # noqa: F401

        from qmail_esmtpd.auth.passwords import context
    except ImportError as e:
        raise BenchError(f"the AUTH figures need psycopg2 and passlib ({e}): run with "
                         ".venv/bin/python, or pass --no-auth") from None
    try:
        cluster = Cluster()
    except StartError as e:
        raise BenchError(f"cannot start PostgreSQL from {PGBIN} ($PGBIN): {e} "
                         "(--no-auth skips the AUTH figures)") from None
    try:
        with cluster.new_database() as db:  # closed: an open client would look busy
            db.sql("INSERT INTO poppass (name, pw, sendlimit, sysuser, dir)"
                   " VALUES (%s, %s, %s, %s, '/')",
                   (AUTH_USER, context().hash(AUTH_PASSWORD), AUTH_SENDLIMIT, pop3_sysuser()))
            # Autovacuum workers would be counted as backend CPU.
            db.sql("ALTER SYSTEM SET autovacuum = off")
            db.sql("SELECT pg_reload_conf()")
        yield AuthDB(db.dsn("qmaild"), Backends(cluster.postmaster()), cluster, db.name)
    finally:
        cluster.destroy()
