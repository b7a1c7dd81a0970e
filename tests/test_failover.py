"""Failover: a primary and its streaming standby (pg_basebackup -R), both
throwaway clusters on unix sockets.  The primary stops, the standby is
promoted, and the frontend's AUTHDB never changes: either it names both
servers with target_session_attrs=read-write and finds the new primary by
itself ("direct"), or it names a pgbouncer that the admin points at the new
primary ("pgbouncer"; pgbouncer 1.18 cannot choose the primary itself)."""

import smtplib
import time

import pytest

from qmail_esmtpd.auth.passwords import context

from support import SERVER, Cluster, Pgbouncer, TcpServer

USER, PASSWORD = "alice", "correct horse battery staple"
ELSEWHERE = "someone@elsewhere.example.org"


@pytest.fixture
def primary():
    cluster = Cluster()
    yield cluster
    cluster.destroy()


def smtp(server: TcpServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=60)


def send(c: smtplib.SMTP, n: int) -> None:
    c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: %d\r\n\r\nx\r\n" % n)


def timed(what: str, call, *args):
    """call(*args) and how long the client waited, printed (pytest -s shows it)."""
    start = time.monotonic()
    result = call(*args)
    print(f"failover: {what}: {result!r} after {(time.monotonic() - start) * 1000:.0f} ms")
    return result


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
def test_frontend_follows_the_promoted_standby(primary, tmp_path, control, queue, route):
    db = primary.new_database()
    db.sql("INSERT INTO poppass (name, pw, sendlimit) VALUES (%s, %s, 3)",
           (USER, context().hash(PASSWORD)))
    db.close()
    standby = Cluster(primary=primary)
    bouncer = Pgbouncer(primary) if route == "pgbouncer" else None
    try:
        if bouncer is None:
            authdb = (f"host={primary.sock},{standby.sock} dbname={db.name} user=qmaild"
                      " target_session_attrs=read-write")
        else:
            authdb = bouncer.dsn(db.name)
        server = TcpServer(tmp_path, ":allow\n", {
            "QMAIL_CONTROL": str(control), **queue.env, "AUTHDB": authdb,
            "AUTHFAILDELAY": "0"}, [SERVER])
        try:
            with smtp(server) as before, smtp(server) as early:
                before.login(USER, PASSWORD)
                send(before, 1)
                early.login(USER, PASSWORD)  # authenticated while the primary was up
                early.mail("alice@client.test")
                early.rcpt(ELSEWHERE)

                primary.stop()  # fast shutdown: the standby has every WAL record
                with smtp(server) as c:  # no primary: a quick 454, the session goes on
                    c.ehlo()
                    code, _ = timed("AUTH during the outage", c.docmd, "AUTH PLAIN",
                                    _plain(USER, PASSWORD))
                    assert code == 454
                    assert c.noop()[0] == 250
                code, text = timed("end of DATA during the outage", early.data,
                                   b"Subject: outage\r\n\r\nx\r\n")
                assert code == 451, text  # not queued, so not counted either
                assert len(queue.queued()) == 1

                standby.promote()  # nothing changes on the frontend
                if bouncer is not None:
                    bouncer.point_at(standby)
                early.rset()
                send(early, 2)  # the session from before the outage goes on
                with smtp(server) as after:
                    after.login(USER, PASSWORD)
                    send(after, 3)
                    code, text = after.mail("alice@client.test")
                    assert code == 451 and b"daily sending limit" in text, text
        finally:
            server.stop()
        assert len(queue.queued()) == 3
        with standby.connect(db.name) as conn, conn.cursor() as cur:
            cur.execute("SELECT s.count FROM sendcounts s JOIN poppass p USING (id)"
                        " WHERE p.name = %s", (USER,))
            assert cur.fetchall() == [(3,)]
        log = server.log()
        assert "auth tempfail user=alice" in log and "sendlimit database:" in log
    finally:
        if bouncer is not None:
            bouncer.stop()
        standby.destroy()


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()
