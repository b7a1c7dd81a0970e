"""SMTP AUTH and the daily limit end to end: real PostgreSQL, real tcpserver, smtplib and swaks."""

import base64
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from qmail_esmtpd.auth.passwords import context

from conftest import Accounts
from harness.files import write_program
from harness.frontend import LOOPBACK
from harness.paths import FAKE_CHECKPASSWORD, FAKE_QUEUE, SERVER
from harness.postgres import Cluster
from harness.processes import imported_modules

ALICE, ALICE_PW = "alice", "correct horse battery staple"
ELSEWHERE = "someone@elsewhere.example.org"


def smtp(server) -> smtplib.SMTP:
    return smtplib.SMTP(LOOPBACK, server.port, local_hostname="client.test", timeout=60)


def login(c: smtplib.SMTP, user: str, password: str, mechanism: str = "PLAIN") -> None:
    c.ehlo()
    c.user, c.password = user, password
    c.auth(mechanism, getattr(c, "auth_" + mechanism.lower()))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_authenticated_client_may_relay_and_is_counted(db, tcpserver, queue, mechanism):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        c.ehlo()
        assert c.esmtp_features["auth"].strip() == "LOGIN PLAIN"
        login(c, ALICE, ALICE_PW, mechanism)
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: hi\r\n\r\nhello\r\n")
    (run,) = queue.queued()
    assert run["recipients"] == [ELSEWHERE]
    first, second = run["message"].split(b"\n")[:2]
    assert first == b"Received: from unknown (HELO client.test) (alice@%s)" % LOOPBACK.encode()
    assert second.startswith(b"  by localhost with ESMTPA; ")
    assert db.counts(ALICE) == (1, 1)


def test_relaying_needs_auth_and_failures_are_535(db, tcpserver, queue):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        c.ehlo()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail("a@client.test", [ELSEWHERE], b"Subject: x\r\n\r\nx\r\n")
        for user, password in ((ALICE, "wrong"), ("nobody-here", ALICE_PW)):
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                login(c, user, password)
            assert e.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail("a@client.test", [ELSEWHERE], b"Subject: x\r\n\r\nx\r\n")
    assert queue.queued() == [] and db.counts(ALICE) == (0, 0)


def test_swaks_auth(db, tcpserver, queue):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())

    def swaks(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["swaks", "--server", LOOPBACK, "--port", str(server.port),
                               "--from", "alice@client.test", "--to", ELSEWHERE,
                               "--auth-user", ALICE, *args], capture_output=True, timeout=60)

    ok = swaks("--auth", "LOGIN", "--auth-password", ALICE_PW)
    assert ok.returncode == 0, ok.stdout.decode(errors="replace")
    assert b"235 ok, go ahead" in ok.stdout
    bad = swaks("--auth", "PLAIN", "--auth-password", "nope")
    assert bad.returncode != 0 and b"535 authentication failed" in bad.stdout
    assert len(queue.queued()) == 1 and db.counts(ALICE) == (1, 1)


def test_limit_is_exact_under_concurrency(db, tcpserver, queue):
    db.add(ALICE, ALICE_PW, sendlimit=7)
    server = tcpserver(":allow\n", env=db.env())
    results, barrier = [], threading.Barrier(24)

    def session(n: int) -> None:
        try:
            with smtp(server) as c:
                login(c, ALICE, ALICE_PW)
                barrier.wait(timeout=60)
                c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: %d\r\n\r\nx\r\n" % n)
            results.append("sent")
        except smtplib.SMTPResponseException as e:
            results.append(e.smtp_code)
        except smtplib.SMTPSenderRefused as e:
            results.append(e.smtp_code)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results.count("sent") == 7, results
    assert sorted(r for r in results if r != "sent") == [451] * 17
    assert len(queue.queued()) == 7
    assert db.counts(ALICE) == (7, 7)


def test_limit_at_mail_time_says_so_and_rolls_over_at_midnight(db, tcpserver, queue):
    uid = db.add(ALICE, ALICE_PW, sendlimit=1)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: 1\r\n\r\nx\r\n")
        code, text = c.mail("alice@client.test")
        assert code == 451 and b"daily sending limit" in text
        db.sql("UPDATE sendcounts SET last_send = current_date - 1 WHERE id = %s", (uid,))
        c.rset()
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: 2\r\n\r\nx\r\n")
    assert db.sql("SELECT count, total_count, last_send = current_date FROM sendcounts"
                  " WHERE id = %s", (uid,)) == [(1, 2, True)]
    assert len(queue.queued()) == 2


def test_default_limit_from_control_and_environment(db, tcpserver, queue, control):
    db.add(ALICE, ALICE_PW)
    (control / "sendlimit").write_text("2\n")
    server = tcpserver(":allow\n", env=db.env(SENDLIMIT="1"))  # the variable wins
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: 1\r\n\r\nx\r\n")
        assert c.mail("alice@client.test")[0] == 451
    assert db.counts(ALICE) == (1, 1)


def test_queue_failure_refunds_the_charge(db, tcpserver, tmp_path):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(FAKEQUEUE_EXIT="71"))
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: x\r\n\r\nx\r\n")
        assert e.value.smtp_code == 451
    assert db.counts(ALICE) == (0, 0)


def test_inactive_user_and_odd_credentials_are_a_clean_535(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    db.add("sleepy", "pw", active=False)
    server = tcpserver(":allow\n", env=db.env(AUTHMAXFAIL="10"))
    attempts = [b"\0sleepy\0pw", b"\0alice\0" + ALICE_PW.encode() + b"\0extra",
                b"\0\xff\xfe\0pw", b"\0alice\0" + b"a" * 5000]
    with socket.create_connection((LOOPBACK, server.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        for plain in attempts:
            s.sendall(b"AUTH PLAIN " + base64.b64encode(plain) + b"\r\n")
            assert f.readline() == b"535 authentication failed (#5.7.1)\r\n", plain
        s.sendall(b"AUTH LOGIN\r\n!!notbase64\r\nQUIT\r\n")
        assert f.readline().startswith(b"334 ")
        assert f.readline() == b"501 malformed auth input (#5.5.4)\r\n"
        assert f.readline().startswith(b"221 ")


def test_sql_metacharacters_in_user_names(db, tcpserver):
    odd = "o'brien\"; DROP TABLE poppass; --"
    db.add(odd, "pw1")
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, odd, "pw1")
    with smtp(server) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(c, "' OR '1'='1", "pw1")
    assert db.sql("SELECT name FROM poppass") == [(odd,)]


@pytest.mark.parametrize("grant", [True, False])
def test_deprecated_hash_is_upgraded_on_login_where_granted(db, tcpserver, grant):
    old = context().handler("md5_crypt").hash(ALICE_PW)
    db.add(ALICE, ALICE_PW, pw=old)
    if grant:
        db.sql("GRANT UPDATE (pw) ON poppass TO qmaild")
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
    (stored,) = db.sql("SELECT pw FROM poppass WHERE name = %s", (ALICE,))[0]
    if grant:
        assert stored.startswith("$argon2id$") and context().verify(ALICE_PW, stored)
    else:
        assert stored == old
    log = server.wait_log("auth rehash")
    if grant:
        assert "auth rehash user=alice: md5_crypt -> argon2id m=19456,t=2,p=1" in log
    else:
        assert ("auth rehash skipped user=alice: md5_crypt kept, the database role lacks "
                "GRANT UPDATE (pw) ON poppass") in log
    assert log.count("auth rehash") == 1 and old not in log and "$argon2" not in log


def test_repeated_failures_are_slow_then_421(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILDELAY="1", AUTHMAXFAIL="2"))
    bad = base64.b64encode(b"\0alice\0wrong")
    with socket.create_connection((LOOPBACK, server.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        start = time.monotonic()
        s.sendall(b"AUTH PLAIN " + bad + b"\r\n")
        assert f.readline().startswith(b"535 ")
        assert time.monotonic() - start >= 1  # the delay is a floor, not a speed target
        s.sendall(b"AUTH PLAIN " + bad + b"\r\n")
        assert f.readline().startswith(b"421 ")
        assert f.readline() == b""


def test_log_lines_name_the_outcome_never_the_secret(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW, "LOGIN")
    with smtp(server) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(c, "mallory", "hunter2-secret")
    ok = f"auth ok user=alice ip={LOOPBACK} mech=LOGIN"
    fail = f"auth fail user=mallory ip={LOOPBACK} mech=PLAIN"
    log = server.wait_log(ok, fail)
    assert ok in log
    assert fail in log
    (stored,) = db.sql("SELECT pw FROM poppass")[0]
    for secret in (ALICE_PW, "hunter2-secret", stored, stored[-20:]):
        assert secret not in log


def test_unauthenticated_auth_parameter_does_not_reach_received(db, tcpserver, queue):
    server = tcpserver(":allow\n", env=db.env())
    with smtp(server) as c:
        c.ehlo()
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n",
                   mail_options=["AUTH=mallory@evil.example"])
    (run,) = queue.queued()
    assert b"mallory" not in run["message"] and b"(%s)" % LOOPBACK.encode() in run["message"]


def test_checkpassword_command_line(tcpserver, queue, tmp_path):
    import sys
    checker = write_program(tmp_path / "checkpassword",
                            f"#!/bin/sh\nexec {sys.executable} {FAKE_CHECKPASSWORD} \"$@\"\n")
    server = tcpserver(":allow\n", env={"AUTHFAILDELAY": "0"},
                       argv=[str(SERVER), str(checker), "/bin/true"])
    with smtp(server) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(c, "alice", "wrong")
        login(c, "alice", "wonderland", "LOGIN")
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: cp\r\n\r\nx\r\n")
    assert [r["recipients"] for r in queue.queued()] == [[ELSEWHERE]]


def test_database_down_means_454_and_the_session_goes_on(tcpserver, queue):
    cluster = Cluster()
    try:
        accounts = Accounts(cluster.new_database())
        accounts.add(ALICE, ALICE_PW)
        server = tcpserver(":allow\n", env=accounts.env())
        with smtp(server) as early, smtp(server) as c:
            login(early, ALICE, ALICE_PW)  # authenticated while the database was up
            early.mail("alice@client.test")
            early.rcpt(ELSEWHERE)
            accounts.database.close()
            cluster.stop()
            c.ehlo()
            code, text = c.docmd("AUTH PLAIN", base64.b64encode(
                b"\0alice\0" + ALICE_PW.encode()).decode())
            assert code == 454
            assert c.mail("a@client.test")[0] == 250
            assert c.rcpt("b@example.com")[0] == 250
            assert c.rcpt(ELSEWHERE)[0] == 553
            c.data(b"Subject: local\r\n\r\nstill works\r\n")
            code, text = early.data(b"Subject: counted?\r\n\r\nx\r\n")
            assert code == 451 and b"sending limit" in text  # not queued uncounted
        assert [r["recipients"] for r in queue.queued()] == [["b@example.com"]]
        log = server.logpath.read_text()
        assert "auth tempfail user=alice" in log and "database" in log
    finally:
        cluster.destroy()


def test_sessions_without_auth_never_load_the_database_or_hashing(db, control):
    db.add(ALICE, ALICE_PW)
    env = {"QMAIL_CONTROL": str(control), **db.env()}
    plain = imported_modules(env, b"EHLO x\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")
    heavy = {"psycopg2", "passlib", "passlib.context", "ssl", "email", "subprocess", "typing"}
    assert not plain & heavy, plain & heavy
    auth = base64.b64encode(b"\0alice\0" + ALICE_PW.encode())
    with_auth = imported_modules(env, b"EHLO x\r\nAUTH PLAIN " + auth + b"\r\nQUIT\r\n")
    assert {"psycopg2", "_argon2_cffi_bindings"} <= with_auth  # the check above can fail
    # an argon2id row needs neither passlib nor argon2-cffi's Python layer
    unwanted = {"passlib", "argon2", "importlib.metadata"} & with_auth
    assert not unwanted, unwanted


HASHERS = {
    "des_crypt": lambda pw: context().handler("des_crypt").hash(pw[:8]),
    "md5_crypt": lambda pw: context().handler("md5_crypt").hash(pw),
    "sha256_crypt": lambda pw: context().handler("sha256_crypt").using(rounds=5000).hash(pw),
    "sha512_crypt": lambda pw: context().handler("sha512_crypt").using(rounds=5000).hash(pw),
    "bcrypt": lambda pw: context().handler("bcrypt").using(rounds=4).hash(pw),
    "argon2": lambda pw: context().hash(pw),
}


def test_every_hash_family_of_old_tables_verifies(db, tcpserver):
    for scheme, make in HASHERS.items():
        password = "pw-" + scheme if scheme != "des_crypt" else "des-pw"
        db.add(scheme, password, pw=make(password))
    server = tcpserver(":allow\n", env=db.env())
    for scheme in HASHERS:
        password = "pw-" + scheme if scheme != "des_crypt" else "des-pw"
        with smtp(server) as c:
            login(c, scheme, password)
        with smtp(server) as c, pytest.raises(smtplib.SMTPAuthenticationError):
            login(c, scheme, password + "x")


@pytest.mark.parametrize("enabled", [False, True])
def test_plaintext_rows_only_when_enabled(db, tcpserver, enabled):
    db.add(ALICE, "", pw="plain-secret")
    db.sql("GRANT UPDATE (pw) ON poppass TO qmaild")
    server = tcpserver(":allow\n", env=db.env(AUTHPLAINTEXT="1" if enabled else "0"))
    with smtp(server) as c:
        if enabled:
            login(c, ALICE, "plain-secret")
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                login(c, ALICE, "plain-secret")
    (stored,) = db.sql("SELECT pw FROM poppass")[0]
    assert stored.startswith("$argon2id$") == enabled  # migrated on the first login


def test_qmail_queue_learns_the_user(db, tcpserver, queue, tmp_path):
    import sys
    db.add(ALICE, ALICE_PW)
    seen = tmp_path / "env.txt"
    wrapper = write_program(tmp_path / "env-queue", (
        f"#!/bin/sh\necho \"$TCPREMOTEINFO|${{RELAYCLIENT-unset}}\" >> {seen}\n"
        f"exec {sys.executable} {FAKE_QUEUE}\n"))
    server = tcpserver(":allow\n", env=db.env(QMAILQUEUE=str(wrapper)))
    with smtp(server) as c:
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: 1\r\n\r\nx\r\n")
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", [ELSEWHERE], b"Subject: 2\r\n\r\nx\r\n")
    assert seen.read_text().splitlines() == ["|unset", "alice|"]


@pytest.mark.parametrize("trouble", ["no such role", "no tables", "statement timeout"])
def test_database_trouble_is_a_454(pg, db, tcpserver, trouble):
    db.add(ALICE, ALICE_PW)
    if trouble == "no such role":
        conninfo = db.database.dsn("nosuchrole")
    elif trouble == "no tables":
        conninfo = pg.empty_database().dsn("qmaild")
    else:
        conninfo = db.database.dsn("qmaild")  # our own statement_timeout (5 s) ends it
        db.database.conn.autocommit = False
        db.sql("LOCK TABLE poppass IN ACCESS EXCLUSIVE MODE")  # held until rollback
    server = tcpserver(":allow\n", env=db.env(AUTHDB=conninfo))
    try:
        with smtp(server) as c:
            c.ehlo()
            plain = base64.b64encode(b"\0alice\0" + ALICE_PW.encode()).decode()
            code, text = c.docmd("AUTH PLAIN", plain)
            assert code == 454, text
            assert c.noop()[0] == 250  # the session goes on
    finally:
        if trouble == "statement timeout":
            db.database.conn.rollback()
    assert f"auth database: ip={LOOPBACK}: " in server.logpath.read_text()


def test_sender_bound_to_the_login(db, tcpserver, queue):
    uid = db.add("alice@example.org", ALICE_PW)
    db.sql("INSERT INTO sendas (id, address) VALUES (%s, 'alias@example.org')", (uid,))
    db.add("bob", "bob-pw")
    server = tcpserver(":allow\n", env=db.env(SENDERBINDING="1"))
    with smtp(server) as c:
        login(c, "alice@example.org", ALICE_PW)
        for sender in ("Alice@Example.ORG", "alias@example.org", ""):
            assert c.mail(sender)[0] == 250, sender
            c.rset()
        code, text = c.mail("boss@example.org")
        assert code == 553 and b"does not belong to the authenticated user" in text
        c.sendmail("alias@example.org", [ELSEWHERE], b"Subject: mine\r\n\r\nx\r\n")
    with smtp(server) as c:
        login(c, "bob", "bob-pw")  # not an address, and nothing listed: no sender at all
        assert c.mail("bob@example.org")[0] == 553 and c.mail("")[0] == 250
    with smtp(server) as c:  # unauthenticated clients are not bound
        c.ehlo()
        assert c.mail("boss@example.org")[0] == 250
    assert [r["sender"] for r in queue.queued()] == ["alias@example.org"]
