"""Failover: a primary and its streaming standby (pg_basebackup -R), both
throwaway clusters on unix sockets.  The primary stops, the standby is
promoted, and the frontend's AUTHDB never changes: either it names both
servers with target_session_attrs=read-write and finds the new primary by
itself ("direct"), or it names a pgbouncer that the admin points at the new
primary ("pgbouncer"; pgbouncer 1.18 cannot choose the primary itself)."""

import base64
import smtplib
import socket
import time
from dataclasses import dataclass

import pytest

from qmail_esmtpd.auth.passwords import context

from harness.paths import SERVER
from harness.pgbouncer import Pgbouncer
from harness.postgres import Cluster
from harness.tcpserver import TcpServer

USER, PASSWORD = "alice", "correct horse battery staple"
ELSEWHERE = "someone@elsewhere.example.org"
LIMIT = 3


@dataclass
class Pair:
    primary: Cluster
    standby: Cluster
    dbname: str

    def direct(self) -> str:
        """The frontend's AUTHDB naming both servers, the primary first."""
        return (f"host={self.primary.sock},{self.standby.sock} dbname={self.dbname}"
                " user=qmaild target_session_attrs=read-write")

    def sent_today(self) -> list:
        """sendcounts on the promoted standby."""
        conn = self.standby.connect(self.dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT s.count FROM sendcounts s JOIN poppass p USING (id)"
                            " WHERE p.name = %s", (USER,))
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture
def pair():
    """A primary holding USER (limit LIMIT) and its standby; both destroyed after."""
    primary = Cluster()
    standby = None
    try:
        with primary.new_database() as db:
            db.sql("INSERT INTO poppass (name, pw, sendlimit) VALUES (%s, %s, %s)",
                   (USER, context().hash(PASSWORD), LIMIT))
        standby = Cluster(primary=primary)
        yield Pair(primary, standby, db.name)
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


@pytest.fixture
def frontend(tmp_path, control, queue):
    """Factory: qmail-esmtpd under tcpserver with AUTHDB = the given string."""
    servers = []

    def start(authdb: str) -> TcpServer:
        server = TcpServer(tmp_path, ":allow\n", {
            "QMAIL_CONTROL": str(control), **queue.env, "AUTHDB": authdb,
            "AUTHFAILDELAY": "0"}, [SERVER])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def smtp(server: TcpServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=60)


def send(c: smtplib.SMTP, n: int) -> None:
    c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: %d\r\n\r\nx\r\n" % n)


def auth_plain(c: smtplib.SMTP) -> tuple[int, bytes]:
    c.ehlo()
    return c.docmd("AUTH PLAIN", base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode())


def timed(what: str, call, *args):
    """call(*args) and how long the client waited, printed (pytest -s shows it)."""
    start = time.monotonic()
    result = call(*args)
    print(f"failover: {what}: {result!r} after {(time.monotonic() - start) * 1000:.0f} ms")
    return result


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
def test_frontend_follows_the_promoted_standby(pair, frontend, queue, route):
    bouncer = Pgbouncer(pair.primary) if route == "pgbouncer" else None
    try:
        server = frontend(pair.direct() if bouncer is None else bouncer.dsn(pair.dbname))
        with smtp(server) as before, smtp(server) as early:
            before.login(USER, PASSWORD)
            send(before, 1)
            early.login(USER, PASSWORD)  # authenticated while the primary was up
            early.mail("alice@client.test")
            early.rcpt(ELSEWHERE)

            pair.primary.stop()  # fast shutdown: the standby has every WAL record
            with smtp(server) as c:  # no primary: a quick 454, the session goes on
                code, _ = timed("AUTH during the outage", auth_plain, c)
                assert code == 454
                assert c.noop()[0] == 250
            code, text = timed("end of DATA during the outage", early.data,
                               b"Subject: outage\r\n\r\nx\r\n")
            assert code == 451, text  # not queued, so not counted either
            assert len(queue.queued()) == 1

            pair.standby.promote()  # nothing changes on the frontend
            if bouncer is not None:
                bouncer.point_at(pair.standby)
            early.rset()
            send(early, 2)  # the session from before the outage goes on
            with smtp(server) as after:
                after.login(USER, PASSWORD)
                send(after, 3)
                code, text = after.mail("alice@client.test")
                assert code == 451 and b"daily sending limit" in text, text
    finally:
        if bouncer is not None:
            bouncer.stop()
    assert len(queue.queued()) == LIMIT
    assert pair.sent_today() == [(LIMIT,)]
    log = server.log()
    assert "auth tempfail user=alice" in log and "sendlimit database:" in log


def test_a_hung_old_primary_is_passed_over(pair, frontend, tmp_path):
    """The old primary's host still accepts connections but never answers (a
    hung machine, not a refused port): after the promotion, the frontend must
    still reach the new primary, the second host in its list."""
    server = frontend(pair.direct())
    pair.primary.stop()
    with socket.socket(socket.AF_UNIX) as hung:  # accepts (backlog), never answers
        hung.bind(str(pair.primary.sock / ".s.PGSQL.5432"))
        hung.listen(64)
        pair.standby.promote()
        with smtp(server) as c:
            code, text = timed("AUTH with a hung old primary", auth_plain, c)
    assert code == 235, text
