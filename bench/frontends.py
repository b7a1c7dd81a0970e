"""Several frontends on one database: two tcpservers at once, through pgbouncer.

Each run starts qmail-esmtpd under tcpserver on 127.0.0.1 and on 127.0.0.2,
drives both at once with FRONTEND_CONCURRENCY client threads each, every
session an AUTH PLAIN of the same user whose limit is exactly the number of
sessions, and samples pg_stat_activity meanwhile.  Once through pgbouncer
(service/pgbouncer.ini, harness.pgbouncer.Pgbouncer), once straight to PostgreSQL, so
the backends pgbouncer saves show beside each other.
"""

import base64
import threading
from contextlib import ExitStack
from dataclasses import dataclass

from tests.harness.pgbouncer import Pgbouncer

from . import BenchError
from .session import AUTH_COMMANDS, AUTH_PASSWORD
from .setup import Bench
from .tcp import Commands, run_clients, run_threads, tcpserver

FRONTEND_HOSTS = ("127.0.0.1", "127.0.0.2")
FRONTEND_CONCURRENCY = 8  # client threads per frontend
FRONTEND_USER = "frontends@example.com"
SAMPLE_INTERVAL = 0.005  # seconds between pg_stat_activity samples


@dataclass
class FrontendRun:
    """What one run of both frontends showed."""

    label: str
    sessions: int
    rate: float  # sessions/s, both frontends together
    peak_backends: int  # qmaild's backends in pg_stat_activity, at most at once
    errors: list[str]  # a client thread group stops at its first error
    count: int  # sendcounts.count of the user afterwards


class PeakBackends:
    """Samples how many backends qmaild holds in `dbname`, in a thread, until stopped."""

    def __init__(self, bench: Bench) -> None:
        assert bench.auth is not None
        self.conn = bench.auth.cluster.connect(bench.auth.dbname)
        self.dbname = bench.auth.dbname
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        with self.conn.cursor() as cur:
            while not self.done.wait(SAMPLE_INTERVAL):
                cur.execute("SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = %s AND usename = 'qmaild'", (self.dbname,))
                self.peak = max(self.peak, cur.fetchone()[0])

    def __enter__(self) -> "PeakBackends":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.conn.close()


def reset_user(bench: Bench, limit: int) -> None:
    """The figure's user, with a limit of exactly `limit` and nothing sent today."""
    from qmail_esmtpd.auth.passwords import context

    assert bench.auth is not None
    conn = bench.auth.cluster.connect(bench.auth.dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO poppass (name, pw, sendlimit) VALUES (%s, %s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET sendlimit = excluded.sendlimit",
                        (FRONTEND_USER, context().hash(AUTH_PASSWORD), limit))
            cur.execute("DELETE FROM sendcounts WHERE id ="
                        " (SELECT id FROM poppass WHERE name = %s)", (FRONTEND_USER,))
    finally:
        conn.close()


def sent_today(bench: Bench) -> int:
    assert bench.auth is not None
    conn = bench.auth.cluster.connect(bench.auth.dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT s.count FROM sendcounts s JOIN poppass p USING (id)"
                        " WHERE p.name = %s AND s.last_send = current_date", (FRONTEND_USER,))
            row = cur.fetchone()
            return row[0] if row else 0
    finally:
        conn.close()


def frontend_commands() -> Commands:
    """The bench's AUTH session, logging in as FRONTEND_USER."""
    plain = base64.b64encode(f"\0{FRONTEND_USER}\0{AUTH_PASSWORD}".encode())
    auth = (b"AUTH PLAIN " + plain + b"\r\n", b"235")
    return tuple(auth if code == b"235" else (command, code) for command, code in AUTH_COMMANDS)


def run_frontends(bench: Bench, label: str, sessions: int, conninfo: str) -> FrontendRun:
    """`sessions` AUTH sessions, half on each frontend, all at once; AUTHDB = `conninfo`."""
    reset_user(bench, sessions)
    commands = frontend_commands()
    share = sessions // len(FRONTEND_HOSTS)
    errors: list[str] = []
    with ExitStack() as stack:
        ports = [stack.enter_context(tcpserver(bench, True, host, conninfo))[0]
                 for host in FRONTEND_HOSTS]

        def drive(host: str, port: int) -> None:
            try:
                run_clients(port, FRONTEND_CONCURRENCY, share, commands, host)
            except BenchError as e:
                errors.append(f"{host}: {e}")

        threads = [threading.Thread(target=drive, args=pair)
                   for pair in zip(FRONTEND_HOSTS, ports, strict=True)]
        with PeakBackends(bench) as backends:
            elapsed = run_threads(threads)
    total = share * len(FRONTEND_HOSTS)
    return FrontendRun(label, total, total / elapsed, backends.peak, errors, sent_today(bench))


def measure_frontends(bench: Bench, sessions: int) -> tuple[list[FrontendRun], str]:
    """Both runs, through pgbouncer and direct; and pgbouncer's pool size."""
    assert bench.auth is not None
    runs = []
    bouncer = Pgbouncer(bench.auth.cluster)
    try:
        config = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
        runs.append(run_frontends(bench, f"pgbouncer, pool {config['default_pool_size']}",
                                  sessions, bouncer.dsn(bench.auth.dbname)))
    finally:
        bouncer.stop()
    runs.append(run_frontends(bench, "direct to PostgreSQL", sessions, bench.auth.conninfo))
    return runs, config["pool_mode"]
