"""Two frontends, one database: tcpserver on 127.0.0.1 and on 127.0.0.2, both
with AUTHDB through one pgbouncer in transaction pool mode (service/pgbouncer.ini,
as README's "Running several frontends" advises), in front of the test cluster."""

import smtplib
import threading

import pytest

from qmail_esmtpd.auth.passwords import context

from support import SERVER, Pgbouncer, TcpServer

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


def smtp(server: TcpServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=60)


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
    # All of it went through pgbouncer, on no more backends than its pool holds.
    (pool,) = [p for p in bouncer.show("POOLS") if p["database"] == database.name]
    assert pool["pool_mode"] == "transaction"
    (stats,) = [s for s in bouncer.show("STATS") if s["database"] == database.name]
    assert stats["total_xact_count"] >= sessions
    backends = database.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                            " AND usename = 'qmaild'", (database.name,))[0][0]
    pool_size = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}["default_pool_size"]
    assert 0 < backends <= int(pool_size)
