"""pgbouncer in front of a throwaway cluster, with service/pgbouncer.ini's settings."""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .paths import ROOT
from .postgres import Cluster
from .processes import StartError, end_group

PGBOUNCER_INI = ROOT / "service" / "pgbouncer.ini"


def pgbouncer_program() -> str:
    """Debian puts pgbouncer in /usr/sbin, which a normal user's PATH lacks."""
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class Pgbouncer:
    """pgbouncer in front of `cluster`, with service/pgbouncer.ini's settings.

    Only the site-specific values change: its own temp dir for the socket, log
    and pid file, the cluster's socket as the server, `settings` on top (the
    benchmark's pool size).  It listens on a unix socket only, runs as the
    cluster's unprivileged user in the foreground in its own process group,
    and stop() ends it.  dsn() is what a frontend's AUTHDB names; point_at()
    moves it to another cluster (a promoted standby), as an admin would.
    """

    def __init__(self, cluster: Cluster, **settings: str) -> None:
        import configparser

        self.cluster = cluster
        self.base = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-pgbouncer-"))
        self.port = 6432
        self.ini = configparser.RawConfigParser(delimiters=("=",), comment_prefixes=(";",))
        self.ini.optionxform = str  # type: ignore[assignment, method-assign]  # names keep case
        self.ini.read(PGBOUNCER_INI)
        self.ini["pgbouncer"].update({
            "listen_addr": "", "listen_port": str(self.port), "unix_socket_dir": str(self.base),
            "auth_file": str(self.base / "userlist.txt"),
            "logfile": str(self.base / "pgbouncer.log"),
            "pidfile": str(self.base / "pgbouncer.pid"),
            "admin_users": "postgres", **settings})
        self._write_ini()
        (self.base / "userlist.txt").write_text('"qmaild" ""\n"postgres" ""\n')
        if cluster.user:
            entry = pwd.getpwnam(cluster.user)
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cmd = [pgbouncer_program(), str(self.base / "pgbouncer.ini")]
        if cluster.user:
            cmd = ["runuser", "-u", cluster.user, "--", *cmd]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:
            shutil.rmtree(self.base, ignore_errors=True)
            raise StartError(f"pgbouncer: {e} (tools/install-deps installs it)") from None
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _write_ini(self) -> None:
        """pgbouncer.ini with [databases] on the cluster's socket (world-readable)."""
        self.ini["databases"] = {"*": f"host={self.cluster.sock} port=5432"}
        with (self.base / "pgbouncer.ini").open("w") as out:
            self.ini.write(out)

    def point_at(self, cluster: Cluster) -> None:
        """Send new server connections to `cluster`: edit [databases], RELOAD, RECONNECT."""
        self.cluster = cluster
        self._write_ini()
        self.console("RELOAD")
        self.console("RECONNECT")  # close the old server's connections, if any are left

    def _wait_listening(self, timeout: float = 10) -> None:
        path = str(self.base / f".s.PGSQL.{self.port}")
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise StartError(f"pgbouncer exited {self.proc.returncode}: {self.log()[-600:]}")
            if time.monotonic() > deadline:
                raise StartError(f"pgbouncer not listening after {timeout:g} s")
            time.sleep(0.02)

    def dsn(self, dbname: str, user: str = "qmaild") -> str:
        return f"host={self.base} port={self.port} dbname={dbname} user={user}"

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def console(self, command: str) -> list[dict]:
        """One command on pgbouncer's admin console (SHOW POOLS, RELOAD, ...); rows as dicts."""
        import psycopg2

        conn = psycopg2.connect(self.dsn("pgbouncer", "postgres"))
        try:
            conn.autocommit = True  # the console knows no transactions
            with conn.cursor() as cur:
                cur.execute(command)
                names = [column.name for column in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()] \
                    if names else []
        finally:
            conn.close()

    def show(self, what: str) -> list[dict]:
        """`SHOW <what>` (POOLS, STATS, CONFIG, ...) as dicts."""
        return self.console(f"SHOW {what}")

    def stop(self) -> None:
        """End pgbouncer (its server connections close with it) and remove its files.

        SIGTERM goes to pgbouncer itself: runuser, given one, would wait 2 s
        before passing on a SIGKILL.
        """
        try:
            os.kill(int((self.base / "pgbouncer.pid").read_text().split()[0]), signal.SIGTERM)
            signalled = True
        except (OSError, ValueError, IndexError):  # no pid file yet: the whole group
            signalled = False
        end_group(self.proc, signalled)
        shutil.rmtree(self.base, ignore_errors=True)

