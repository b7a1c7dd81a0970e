"""Two frontends, one database: tcpserver on 127.0.0.1 and on 127.0.0.2, both
with AUTHDB through one pgbouncer in transaction pool mode (service/pgbouncer.ini,
as README's "Running several frontends" advises), in front of the test cluster.
The limit and the AUTH throttle hold across both."""

import smtplib
import threading

import psycopg2
import pytest

from qmail_esmtpd.auth.passwords import context

from harness.paths import SERVER
from harness.pgbouncer import Pgbouncer
from harness.tcpserver import TcpServer

USER, PASSWORD = "alice", "correct horse battery staple"
ELSEWHERE = "someone@elsewhere.example.org"
HOSTS = ("127.0.0.1", "127.0.0.2")


@pytest.fixture
def database(pg):
    db = pg.new_database()
    yield db
    db.close()


@pytest.fixture
def bouncer(pg):
    bouncer = Pgbouncer(pg)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def frontends(tmp_path, control, queue, database, bouncer):
    """One qmail-esmtpd under tcpserver on each of HOSTS, both on the same pgbouncer."""
    env = {"QMAIL_CONTROL": str(control), **queue.env,
           "AUTHDB": bouncer.dsn(database.name), "AUTHFAILDELAY": "0"}
    servers: list[TcpServer] = []
    try:
        for host in HOSTS:
            servers.append(TcpServer(tmp_path, ":allow\n", env, [SERVER], host=host))
        yield servers
    finally:
        for server in servers:
            server.stop()


def smtp(server: TcpServer, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=60,
                        source_address=(source, 0))


def auth_reply(server: TcpServer, password: str, source: str = "127.0.0.1") -> int:
    """The code of one AUTH PLAIN on a fresh connection from `source`."""
    with smtp(server, source) as c:
        c.ehlo()
        c.user, c.password = USER, password
        try:
            return c.auth("PLAIN", c.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


def test_limit_is_exact_across_two_frontends_through_pgbouncer(database, bouncer, frontends,
                                                                queue):
    database.sql("INSERT INTO poppass (name, pw, sendlimit) VALUES (%s, %s, 7)",
                 (USER, context().hash(PASSWORD)))
    sessions = 20
    results: list = []
    barrier = threading.Barrier(sessions)

    def session(n: int) -> None:
        try:
            with smtp(frontends[n % 2]) as c:
                c.ehlo()
                c.login(USER, PASSWORD)
                barrier.wait(timeout=60)
                c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: %d\r\n\r\nx\r\n" % n)
            results.append("sent")
        except smtplib.SMTPResponseException as e:  # 451 at MAIL or at the end of DATA
            results.append(e.smtp_code)
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError) as e:
            results.append(repr(e))

    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results.count("sent") == 7, results
    refusals = [r for r in results if r != "sent"]
    assert len(refusals) == sessions - 7 and all(400 <= r < 500 for r in refusals), results
    assert len(queue.queued()) == 7
    assert database.sql("SELECT s.count FROM sendcounts s JOIN poppass p USING (id)"
                        " WHERE p.name = %s", (USER,)) == [(7,)]
    for server in frontends:  # both frontends authenticated (half the sessions each)
        assert server.log().count(f"auth ok user={USER} ") == sessions // 2
    # what an admin watches: one line per refusal, wherever it happened
    assert sum(server.log().count(f"sendlimit refused user={USER} ")
               for server in frontends) == sessions - 7
    # All of it went through pgbouncer, on no more backends than its pool holds.
    (pool,) = [p for p in bouncer.show("POOLS") if p["database"] == database.name]
    assert pool["pool_mode"] == "transaction"
    (stats,) = [s for s in bouncer.show("STATS") if s["database"] == database.name]
    assert stats["total_xact_count"] >= sessions
    backends = database.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                            " AND usename = 'qmaild'", (database.name,))[0][0]
    pool_size = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}["default_pool_size"]
    assert 0 < backends <= int(pool_size)


def test_failed_logins_on_one_frontend_count_on_the_other(database, frontends, control):
    database.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s)",
                 (USER, context().hash(PASSWORD)))
    (control / "authfaillimit").write_text("3\n")  # both frontends read the same controls
    first, second = frontends
    assert [auth_reply(first, "guess1"), auth_reply(second, "guess2"),
            auth_reply(first, "guess3")] == [535, 535, 535]
    # Three distinct failures from 127.0.0.1, split over both: refused on each,
    # the right password included, while another address still gets in.
    assert auth_reply(second, PASSWORD) == 454
    assert auth_reply(first, PASSWORD) == 454
    assert auth_reply(second, PASSWORD, source="127.0.0.3") == 235
    assert database.sql("SELECT count(*) FROM authfailures WHERE source = '127.0.0.1'") == [(3,)]
    for server in frontends:
        assert "auth throttled user=alice ip=127.0.0.1" in server.wait_log("auth throttled")


def test_statement_timeout_holds_through_pgbouncer_and_does_not_outlive_it(
        database, bouncer, frontends, queue):
    """Transaction pooling drops startup `options` and shares server sessions:
    the timeout must come with each statement and leave nothing behind."""
    uid = database.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s) RETURNING id",
                       (USER, context().hash(PASSWORD)))[0][0]
    database.sql("INSERT INTO sendcounts (id) VALUES (%s)", (uid,))
    with smtp(frontends[0]) as c:
        c.ehlo()
        c.login(USER, PASSWORD)
        assert c.mail("alice@client.test")[0] == 250
        assert c.rcpt(ELSEWHERE)[0] == 250
        database.conn.autocommit = False
        database.sql("SELECT * FROM sendcounts WHERE id = %s FOR UPDATE", (uid,))
        try:
            code, text = c.data(b"Subject: locked\r\n\r\nx\r\n")
        finally:
            database.conn.rollback()
            database.conn.autocommit = True
        assert code == 451, text
    assert queue.queued() == []
    assert "statement timeout" in frontends[0].wait_log("statement timeout")
    conn = psycopg2.connect(bouncer.dsn(database.name))  # the same pool, as qmaild
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for _ in range(3):
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone() == ("0",)
    finally:
        conn.close()
