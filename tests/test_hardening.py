"""AUTH hardening end to end (real PostgreSQL, real tcpserver): locked rows,
timing, the cross-connection throttle, a limit that counts recipients and
follows the account as it is now, no idle database connections, bounded
database calls, the authorization identity, legacy bcrypt."""

import base64
import os
import signal
import smtplib
import socket
import statistics
import time

import bcrypt
import pytest
from test_auth import ALICE, ALICE_PW, ELSEWHERE, login, smtp

from qmail_esmtpd.auth import passwords
from qmail_esmtpd.auth.throttle import source_of

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


def plain(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(authzid + b"\0" + user + b"\0" + password) + b"\r\n"


def answer(port: int, line: bytes, source: str = "127.0.0.1") -> bytes:
    """One AUTH line on a fresh connection; the reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(source, 0)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(line)
        return f.readline()


# -- 1. locked rows never open ------------------------------------------------
@pytest.mark.parametrize("stored", ["*", "!", "", "!$6$salt$hash", "*LK*"])
def test_disabled_markers_never_verify_even_with_plaintext_allowed(stored):
    for password in (stored, stored[1:], "x"):
        assert passwords.check(password.encode(), stored, plaintext=True) == (False, False)


def test_our_marker_rule_is_passlibs():
    from passlib.handlers.misc import unix_disabled

    for stored in ("*", "!", "", "!$6$x$y", "$6$x$y", "secret", "x*", "$argon2id$"):
        assert passwords.is_disabled(stored) == bool(unix_disabled.identify(stored)), stored


def test_locked_rows_refuse_their_marker_over_smtp(db, tcpserver):
    db.add("star", "", pw="*")
    db.add("bang", "", pw="!$6$rounds=5000$salt$abc")
    db.add("plain", "", pw="opensesame")
    server = tcpserver(":allow\n", env=db.env(AUTHPLAINTEXT="1", AUTHFAILLIMIT="0"))
    assert answer(server.port, plain(b"star", b"*")).startswith(b"535")
    assert answer(server.port, plain(b"bang", b"!$6$rounds=5000$salt$abc")).startswith(b"535")
    assert answer(server.port, plain(b"plain", b"opensesame")).startswith(b"235")


def test_the_dummy_hash_has_the_current_parameters():
    assert passwords.DUMMY_HASH.startswith(passwords.CURRENT)
    fresh = passwords.new_hash(b"x")
    assert fresh.startswith(passwords.CURRENT) and passwords.check(b"x", fresh) == (True, False)
    assert len(fresh) == len(passwords.DUMMY_HASH)


# -- 2. timing does not tell who exists ---------------------------------------
def test_unknown_and_wrong_cost_the_same(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="100000", AUTHNAMELIMIT="0"))
    times: dict[bytes, list[float]] = {b"nobody": [], ALICE.encode(): []}
    for _ in range(40):  # interleaved, so machine load drifts alike for both
        for user in times:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                f = s.makefile("rb")
                f.readline()
                start = time.perf_counter()
                s.sendall(plain(user, b"wrong password"))
                assert f.readline().startswith(b"535")
                times[user].append(time.perf_counter() - start)
    unknown, wrong = (statistics.median(t) for t in times.values())
    print(f"median unknown {unknown * 1000:.1f} ms, wrong {wrong * 1000:.1f} ms")
    assert abs(unknown - wrong) <= 0.10 * wrong, (unknown, wrong)


# -- 3. the throttle ----------------------------------------------------------
def test_an_ip_that_failed_too_often_is_refused_unchecked_and_others_are_not(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="3"))
    for guess in (b"guess1", b"guess2", b"guess2", b"guess2", b"guess3"):  # 3 distinct
        assert answer(server.port, plain(b"alice", guess)).startswith(b"535")
    refused = answer(server.port, plain(b"alice", ALICE_PW.encode()))
    assert refused == b"454 too many failed logins from your network, try again later (#4.7.0)\r\n"
    log = server.wait_log("auth throttled")
    assert "auth throttled user=alice ip=127.0.0.1 mech=PLAIN source=127.0.0.1 failures=3" in log
    assert answer(server.port, plain(b"alice", ALICE_PW.encode()), "127.0.0.2").startswith(b"235")
    assert db.sql("SELECT count(*) FROM authfailures WHERE source = '127.0.0.1'") == [(3,)]


def test_a_stale_password_retried_counts_once(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="3"))
    for _ in range(6):  # a phone after a password change
        assert answer(server.port, plain(b"alice", b"last month's")).startswith(b"535")
    assert answer(server.port, plain(b"alice", ALICE_PW.encode())).startswith(b"235")


def test_the_failure_is_counted_before_the_delay(db, tcpserver):
    server = tcpserver(":allow\n", env=db.env(AUTHFAILDELAY="30"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.makefile("rb").readline()
        s.sendall(plain(b"alice", b"guess"))
        deadline = time.monotonic() + 10
        while db.sql("SELECT count(*) FROM authfailures") == [(0,)]:
            assert time.monotonic() < deadline, "not counted while the delay runs"
            time.sleep(0.05)
    # hung up before the 535: counted anyway


def test_trusted_networks_are_never_throttled(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver("127.0.0.1:allow,RELAYCLIENT=\"\"\n127.0.0.2:allow,AUTHTRUSTED=\"\"\n",
                       env=db.env(AUTHFAILLIMIT="1"))
    for source in ("127.0.0.1", "127.0.0.2"):
        for guess in (b"a", b"b", b"c"):
            assert answer(server.port, plain(b"alice", guess), source).startswith(b"535")
        assert answer(server.port, plain(b"alice", ALICE_PW.encode()), source).startswith(b"235")
    assert db.sql("SELECT count(*) FROM authfailures") == [(0,)]


def test_guessing_one_name_from_many_addresses_slows_it_without_locking_it(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    for n in range(5):  # five other networks already guessed at alice
        db.sql("INSERT INTO authfailures (source, name, attempt) VALUES (%s, 'alice', %s)",
               (f"192.0.2.{n}", n))
    server = tcpserver(":allow\n", env=db.env(AUTHNAMELIMIT="5", AUTHFAILDELAY="1"))
    assert answer(server.port, plain(b"alice", ALICE_PW.encode())).startswith(b"235")
    assert "slowed: 5 failures against this name lately" in server.wait_log("auth ok")


def test_old_failures_expire_and_the_window_is_at_most_a_day(db):
    from qmail_esmtpd.auth.db import Database
    from qmail_esmtpd.auth.throttle import RETENTION, Throttle

    db.sql("INSERT INTO authfailures (source, name, attempt, at) VALUES"
           " ('192.0.2.9', 'alice', 1, now() - interval '2 days'),"
           " ('192.0.2.9', 'alice', 2, now() - interval '1 hour')")
    server = Database(db.database.dsn("qmaild"))
    try:
        throttle = Throttle(server, "192.0.2.1", window=10**30)
        assert throttle.window == RETENTION
        throttle.failed("bob", b"guess")  # a new failure sweeps out what is over a day old
    finally:
        server.close()
    assert db.sql("SELECT attempt FROM authfailures WHERE name = 'alice'") == [(2,)]


@pytest.mark.parametrize("ip, source", [
    ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("unknown", None), ("", None),
])
def test_sources_are_ipv4_addresses_and_ipv6_slash_64s(ip, source):
    assert source_of(ip) == source


# -- 4, 5, 10. the limit counts recipients and follows the account -----------
def test_recipients_beyond_the_limit_get_452_and_the_rest_are_sent(db, tcpserver, queue):
    uid = db.add(ALICE, ALICE_PW, sendlimit=3)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.mail("alice@client.test")
        codes = [c.rcpt(f"r{n}@elsewhere.example.org")[0] for n in range(5)]
        assert codes == [250, 250, 250, 452, 452]
        assert c.data(MESSAGE)[0] == 250
        assert c.mail("alice@client.test")[0] == 451  # nothing left today
    assert len(queue.queued()[0]["recipients"]) == 3
    assert db.sql("SELECT count, total_count FROM sendcounts WHERE id = %s", (uid,)) == [(3, 3)]
    log = server.wait_log("at=MAIL")
    assert ("sendlimit refused user=alice ip=127.0.0.1 at=RCPT: 3 recipients accepted for this "
            "message, the next would pass the limit; 0 of 3 recipients a day already sent") in log
    assert ("sendlimit refused user=alice ip=127.0.0.1 at=MAIL: 3 of 3 recipients a day "
            "already sent") in log


def test_a_message_parallel_sessions_left_no_room_for_is_refused_whole(db, tcpserver, queue):
    db.add(ALICE, ALICE_PW, sendlimit=3)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as a, smtp(server) as b:
        for c in (a, b):
            login(c, ALICE, ALICE_PW)
            c.mail("alice@client.test")
            assert [c.rcpt(r)[0] for r in ("x@elsewhere.example", "y@elsewhere.example")] == [
                250, 250]
        assert a.data(MESSAGE)[0] == 250
        code, text = b.data(MESSAGE)
        assert code == 451 and b"daily sending limit" in text
    assert len(queue.queued()) == 1 and db.counts(ALICE) == (2, 2)
    assert ("sendlimit refused user=alice ip=127.0.0.1 at=DATA: 2 recipients would pass the "
            "daily limit: other sessions sent the rest meanwhile, or the limit was lowered or "
            "the account disabled") in server.wait_log("at=DATA")


def test_limit_and_account_changes_reach_open_sessions(db, tcpserver, queue):
    uid = db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", [ELSEWHERE], MESSAGE)
        db.sql("UPDATE poppass SET sendlimit = 2 WHERE id = %s", (uid,))
        c.sendmail("alice@client.test", [ELSEWHERE], MESSAGE)
        assert c.mail("alice@client.test")[0] == 451
        c.rset()
        db.sql("UPDATE poppass SET sendlimit = NULL, active = false WHERE id = %s", (uid,))
        assert c.mail("alice@client.test")[0] == 451
    assert len(queue.queued()) == 2
    assert "sendlimit refused user=alice ip=127.0.0.1 at=MAIL: account disabled" in server.wait_log(
        "account disabled")


def test_messages_per_day_on_request(db, tcpserver, queue):
    db.add(ALICE, ALICE_PW, sendlimit=2)
    server = tcpserver(":allow\n", env=db.env(SENDLIMITMESSAGES="1"))
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        for _ in range(2):
            c.sendmail("alice@client.test", [f"r{n}@elsewhere.example" for n in range(5)], MESSAGE)
        assert c.mail("alice@client.test")[0] == 451
    assert db.counts(ALICE) == (2, 2)


# -- 6. no database connection while the client thinks -----------------------
def backends(db, timeout: float = 5) -> int:
    """Our backends in pg_stat_activity, once there are none or at the deadline
    (a backend leaves the view a moment after its client hung up)."""
    deadline = time.monotonic() + timeout
    while True:
        count = db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                       " 'qmail-esmtpd' AND datname = current_database()")[0][0]
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_idle_sessions_hold_no_database_connection(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as failed, smtp(server) as working:
        failed.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(failed, ALICE, "wrong")
        login(working, ALICE, ALICE_PW)
        assert working.mail("alice@client.test")[0] == 250
        assert working.rcpt(ELSEWHERE)[0] == 250
        assert backends(db) == 0
        assert working.data(MESSAGE)[0] == 250
        assert backends(db) == 0


# -- 7. a stalled database costs seconds and a 4xx ---------------------------
def test_a_stopped_postmaster_is_a_quick_454(pg, db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    postmaster = pg.postmaster()
    os.kill(postmaster, signal.SIGSTOP)
    try:
        start = time.monotonic()
        reply = answer(server.port, plain(b"alice", ALICE_PW.encode()))
        waited = time.monotonic() - start
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert reply.startswith(b"454"), reply
    print(f"stopped postmaster: 454 after {waited:.1f} s")
    assert "no answer from the database" in server.wait_log("no answer")


def test_a_locked_sendcounts_row_is_a_451_even_with_options_in_the_conninfo(db, tcpserver,
                                                                             queue):
    uid = db.add(ALICE, ALICE_PW)
    db.sql("INSERT INTO sendcounts (id) VALUES (%s)", (uid,))
    conninfo = db.database.dsn("qmaild") + " options='-c statement_timeout=0'"
    server = tcpserver(":allow\n", env=db.env(AUTHDB=conninfo))
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.mail("alice@client.test")
        c.rcpt(ELSEWHERE)
        db.database.conn.autocommit = False
        db.sql("SELECT * FROM sendcounts WHERE id = %s FOR UPDATE", (uid,))
        try:
            code, text = c.data(MESSAGE)
        finally:
            db.database.conn.rollback()
            db.database.conn.autocommit = True
        assert code == 451 and b"temporary failure checking the sending limit" in text
        assert c.noop()[0] == 250
    assert queue.queued() == [] and db.counts(ALICE) == (0, 0)
    assert "statement timeout" in server.wait_log("statement timeout")


# -- 8. the authorization identity --------------------------------------------
def test_authzid_must_be_empty_or_the_login_name(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    pw = ALICE_PW.encode()
    assert answer(server.port, plain(b"alice", pw, authzid=b"bob")).startswith(b"535")
    assert answer(server.port, plain(b"alice", pw, authzid=b"alice")).startswith(b"235")
    assert "authzid=bob: not the login name" in server.wait_log("authzid=bob")


# -- 9. legacy bcrypt beyond 72 bytes -----------------------------------------
def test_long_bcrypt_passwords_verify_as_they_were_made_and_are_rehashed(db, tcpserver):
    long_password = b"p" * 70 + b"tail that crypt_blowfish never read"
    old = bcrypt.hashpw(long_password[:72], bcrypt.gensalt(rounds=4)).decode()
    db.add("legacy", "", pw=old)
    db.sql("GRANT UPDATE (pw) ON poppass TO qmaild")
    server = tcpserver(":allow\n", env=db.env())
    assert answer(server.port, plain(b"legacy", long_password)).startswith(b"235")
    (stored,) = db.sql("SELECT pw FROM poppass WHERE name = 'legacy'")[0]
    assert stored.startswith(passwords.CURRENT)
    assert answer(server.port, plain(b"legacy", long_password)).startswith(b"235")
    assert answer(server.port, plain(b"legacy", long_password[:72])).startswith(b"535")


@pytest.mark.parametrize("params, hosts", [
    ({"host": "/run/a,/run/b", "port": "5432"},
     [{"host": "/run/a", "port": "5432"}, {"host": "/run/b", "port": "5432"}]),
    ({"host": "db1,db2", "port": "5432,6432"},
     [{"host": "db1", "port": "5432"}, {"host": "db2", "port": "6432"}]),
    ({"host": "db1"}, [{}]),
    ({}, [{}]),
    ({"host": "a,b", "port": "1,2,3"}, [{}]),  # libpq refuses it, and says why
])
def test_each_host_of_a_list_gets_its_own_attempt(params, hosts):
    from qmail_esmtpd.auth.db import each_host

    assert each_host(params) == hosts
