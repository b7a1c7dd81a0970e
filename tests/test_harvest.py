"""Recipient harvesting across connections: the per-session log line and the
README's fail2ban filters, checked with real fail2ban-regex on lines a real
session wrote through tcpserver (stamped by daemontools' tai64n, as multilog
stamps them); the window per source in `unknownrcpts` on real PostgreSQL,
failing open when the database cannot answer."""

import os
import re
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from test_auth import ALICE, ALICE_PW, login

from harness.files import closed_library_server, compile_users
from harness.frontend import RELAY_LOCALHOST
from harness.paths import ROOT
from harness.postgres import Cluster
from harness.processes import imported_modules

KNOWN = "joe@example.com"
UNSEEN = "nosuch{}@example.com"  # qmail would bounce each: no mailbox
COUNT_LINE = "recipient unknown count ip="
DB_TROUBLE = "recipient harvesting database: ip=127.0.0.1: "


@pytest.fixture
def mailboxes(tmp_path: Path, control: Path) -> dict:
    """Recipient checking on, example.com local: users/assign has joe, and
    sends every other local part to a `.qmail-LOCAL` that does not exist."""
    (control / "locals").write_text("example.com\n")
    (control / "checkrecipients").write_text("1\n")
    home = tmp_path / "joe"
    home.mkdir()
    home.chmod(0o755)  # a home the user may enter: else qmail-local defers (accepted)
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "assign").write_text(
        f"=joe:joe:47001:47001:{home}:::\n+:joe:47001:47001:{home}:-::\n.\n")
    compile_users(tmp_path / "users" / "assign", tmp_path / "users" / "cdb")
    return {"QMAIL_HOME": str(tmp_path)}  # users/cdb under it


def rcpt_codes(server, addresses: list, source: str = "127.0.0.1", user: str | None = None
               ) -> list:
    """One session: MAIL, then RCPT for each address until the server hangs up."""
    codes = []
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30,
                      source_address=(source, 0)) as c:
        if user is not None:
            login(c, user, ALICE_PW)
        c.ehlo_or_helo_if_needed()
        c.mail("a@client.test")
        for address in addresses:
            code, _ = c.rcpt(address)
            codes.append(code)
            if code == 421:
                break
    return codes


def unseen(start: int, count: int) -> list:
    return [UNSEEN.format(i) for i in range(start, start + count)]


def wait_count(server, text: str, count: int, timeout: float = 15) -> str:
    """The log once `text` is in it `count` times (a session logs its count line
    as it ends, after the client has its 221)."""
    deadline = time.monotonic() + timeout
    while (log := server.log()).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return log


def rows(db) -> list:
    return db.sql("SELECT host(source), sum(unknown) FROM unknownrcpts"
                  " GROUP BY source ORDER BY source")


# -- the log line and the README's fail2ban filters ----------------------------
def readme() -> str:
    return (ROOT / "README.md").read_text()


def fail2ban_regex(log: str, tmp_path: Path, failregex: str, name: str) -> list:
    """The addresses real fail2ban-regex finds in `log` (stamped as multilog's
    `t` stamps it) with a filter file holding `failregex`, as an admin writes it."""
    if not shutil.which("fail2ban-regex") or not shutil.which("tai64n"):
        pytest.fail("fail2ban-regex (fail2ban) and tai64n (daemontools) are needed; "
                    "tools/install-deps installs them")
    stamped = subprocess.run(["tai64n"], input=log.encode(), capture_output=True, check=True,
                             timeout=30).stdout
    logfile = tmp_path / f"{name}.log"
    logfile.write_bytes(stamped)
    filterfile = tmp_path / f"{name}.conf"
    filterfile.write_text(f"[Definition]\nfailregex = {failregex}\n")
    out = subprocess.run(["fail2ban-regex", "--raw", "-o", "ip", str(logfile), str(filterfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def readme_filter(start: str) -> str:
    """The failregex line of the README that starts with `start`."""
    (line,) = [m for m in re.findall(r"failregex = ([^`\n]*)", readme()) if m.startswith(start)]
    return line


def test_a_session_that_named_unknown_recipients_logs_one_count_line(
        tcpserver, mailboxes, tmp_path):
    server = tcpserver(":allow\n", env=mailboxes)
    assert rcpt_codes(server, [KNOWN, *unseen(0, 3), KNOWN]) == [250, 550, 550, 550, 250]
    assert rcpt_codes(server, [KNOWN]) == [250]
    assert rcpt_codes(server, unseen(3, 11)) == [550] * 10 + [421]  # unknownrcptlimit
    log = wait_count(server, COUNT_LINE, 2)
    time.sleep(0.3)  # the known-only session, long over, logged nothing
    log = server.log()
    counts = re.findall(r"qmail-esmtpd: recipient unknown count ip=(\S+) unknown=(\d+)\n", log)
    assert counts == [("127.0.0.1", "3"), ("127.0.0.1", "11")], log
    # the README's filter, in a filter file, through real fail2ban-regex
    failregex = readme_filter("qmail-esmtpd: recipient unknown count")
    assert fail2ban_regex(log, tmp_path, failregex, "harvest") == ["127.0.0.1"] * 2


def test_the_readme_auth_filter_matches_real_auth_failures(db, tcpserver, tmp_path):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="1"))
    for password in ("wrong", ALICE_PW):  # the second is throttled: 1 failure is the limit
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
            with pytest.raises(smtplib.SMTPException):
                login(c, ALICE, password)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30,
                      source_address=("127.0.0.2", 0)) as c:
        login(c, ALICE, ALICE_PW)  # another address: in
    log = server.wait_log("auth fail user=alice ip=127.0.0.1 mech=PLAIN",
                          "auth throttled user=alice ip=127.0.0.1 mech=PLAIN",
                          "auth ok user=alice ip=127.0.0.2 mech=PLAIN")
    failregex = readme_filter("qmail-esmtpd: auth")
    assert fail2ban_regex(log, tmp_path, failregex, "auth") == ["127.0.0.1"] * 2
    # the line as the README writes it (its trailing space kept), on the command line
    stamped = tmp_path / "auth.log"
    out = subprocess.run(["fail2ban-regex", "--raw", "-o", "ip", str(stamped), failregex],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["127.0.0.1"] * 2, out


# -- the window per source in the database -------------------------------------
def test_a_source_past_the_window_limit_gets_421_in_later_connections(
        db, tcpserver, mailboxes, control):
    (control / "unknownrcptwindowlimit").write_text("5\n")
    server = tcpserver(":allow\n", env={**db.env(), **mailboxes})
    assert rcpt_codes(server, unseen(0, 3)) == [550, 550, 550]
    wait_count(server, COUNT_LINE, 1)
    assert rows(db) == [("127.0.0.1", 3)]
    # 3 earlier + 2 = 5, the limit; the next one is past it, in this session
    assert rcpt_codes(server, [*unseen(3, 2), KNOWN, *unseen(5, 3)]) == [550, 550, 250, 421]
    wait_count(server, COUNT_LINE, 2)
    # and in a new connection: known recipients still fine, the first unknown one is 421
    assert rcpt_codes(server, [KNOWN, *unseen(8, 2)]) == [250, 421]
    log = wait_count(server, COUNT_LINE, 3)
    assert "recipient harvesting ip=127.0.0.1 unknown=3 lately=6: closing" in log
    assert "recipient harvesting ip=127.0.0.1 unknown=1 lately=7: closing" in log
    assert rows(db) == [("127.0.0.1", 7)]  # the refused ones count: probing keeps it shut
    # another source is judged on its own
    assert rcpt_codes(server, unseen(10, 2), source="127.0.0.2") == [550, 550]
    wait_count(server, COUNT_LINE, 4)
    # once the window has passed, the source is judged afresh
    db.sql("UPDATE unknownrcpts SET at = at - interval '3601 seconds'")
    assert rcpt_codes(server, unseen(12, 2)) == [550, 550]
    assert "Traceback" not in server.log()


def test_the_window_and_limit_come_from_the_environment_too(db, tcpserver, mailboxes):
    rules = '127.0.0.2:allow,UNKNOWNRCPTWINDOWLIMIT="0"\n:allow\n'  # a host never remembered
    server = tcpserver(rules, env={**db.env(), **mailboxes, "UNKNOWNRCPTWINDOWLIMIT": "2",
                                   "UNKNOWNRCPTWINDOW": "60"})
    db.sql("INSERT INTO unknownrcpts (source, unknown, at) VALUES"
           " ('127.0.0.1', 5, now() - interval '61 seconds'),"  # outside the window
           " ('127.0.0.2', 5, now())")
    assert rcpt_codes(server, unseen(0, 4)) == [550, 550, 421]
    assert rcpt_codes(server, unseen(0, 4), source="127.0.0.2") == [550] * 4
    wait_count(server, COUNT_LINE, 2)
    assert rows(db) == [("127.0.0.1", 8), ("127.0.0.2", 5)]


def test_relaying_and_authenticated_clients_are_never_counted(db, tcpserver, mailboxes):
    db.add(ALICE, ALICE_PW)
    db.sql("INSERT INTO unknownrcpts (source, unknown) VALUES ('127.0.0.1', 100)")
    env = {**db.env(), **mailboxes, "CHECKRELAYEDRECIPIENTS": "1"}
    relaying = tcpserver(RELAY_LOCALHOST, env=env)
    assert rcpt_codes(relaying, unseen(0, 3)) == [550, 550, 550]  # checked, never 421
    plain = tcpserver(":allow\n", env=env)
    assert rcpt_codes(plain, unseen(0, 3), user=ALICE) == [550, 550, 550]
    not_asked = tcpserver(RELAY_LOCALHOST, env={**db.env(), **mailboxes})
    assert rcpt_codes(not_asked, unseen(0, 3)) == [250, 250, 250]
    time.sleep(0.3)
    for server in (relaying, plain, not_asked):
        log = server.log()
        assert COUNT_LINE not in log and "harvesting" not in log, log
    assert rows(db) == [("127.0.0.1", 100)]
    # the same client, not authenticated, is past the limit
    assert rcpt_codes(plain, unseen(0, 1)) == [421]


def test_ipv6_clients_are_counted_by_their_64(db, mailboxes, control):
    from qmail_esmtpd.config import Controls
    from qmail_esmtpd.harvest import open_memory

    env = {b"AUTHDB": db.database.dsn("qmaild").encode(), b"UNKNOWNRCPTWINDOWLIMIT": b"3"}
    controls = Controls(str(control).encode())
    first = open_memory(env, controls, b"2001:db8:1:2::7")
    assert first is not None and first.past_limit(1) is None
    first.finish(3)
    other = open_memory(env, controls, b"2001:db8:1:2:ffff::1")
    assert other is not None and other.past_limit(1) == 4
    elsewhere = open_memory(env, controls, b"2001:db8:1:3::7")  # the next /64
    assert elsewhere is not None and elsewhere.past_limit(1) is None
    assert open_memory({}, controls, b"192.0.2.7") is None  # no database: off
    assert open_memory(env, controls, b"unknown") is None  # not a client address: off
    assert rows(db) == [("2001:db8:1:2::", 4), ("2001:db8:1:3::", 1)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sessions run as nobody")
def test_the_warm_server_remembers_across_its_sessions(db, forkserver, mailboxes, tmp_path):
    """Its sessions cannot read the library (0700, root's): the memory, like every
    module a session loads lazily, is imported before privileges are dropped."""
    program = closed_library_server(tmp_path)
    server = forkserver(env={**db.env(), **mailboxes, "UNKNOWNRCPTWINDOWLIMIT": "2"},
                        program=program)
    assert rcpt_codes(server, [KNOWN, *unseen(0, 3)]) == [250, 550, 550, 421]
    wait_count(server, COUNT_LINE, 1)
    assert rcpt_codes(server, [KNOWN, *unseen(3, 1)]) == [250, 421]
    log = wait_count(server, COUNT_LINE, 2)
    assert "Traceback" not in log and "Error" not in log, log
    assert rows(db) == [("127.0.0.1", 4)]


# -- failing open --------------------------------------------------------------
TROUBLE = {
    "read-only role": "ALTER ROLE qmaild IN DATABASE {db} SET default_transaction_read_only = on",
    "no INSERT": "REVOKE INSERT ON unknownrcpts FROM qmaild",
    "no SELECT": "REVOKE SELECT ON unknownrcpts FROM qmaild",
    "no table": "DROP TABLE unknownrcpts",
    "stalled": "LOCK TABLE unknownrcpts IN ACCESS EXCLUSIVE MODE",  # held until rollback
}


@pytest.mark.parametrize("trouble", TROUBLE)
def test_database_trouble_judges_as_today_and_logs_once(db, tcpserver, mailboxes, trouble):
    db.sql("INSERT INTO unknownrcpts (source, unknown) VALUES ('127.0.0.1', 100)")
    if trouble == "stalled":
        db.database.conn.autocommit = False
    db.sql(TROUBLE[trouble].format(db=db.database.name))
    server = tcpserver(":allow\n", env={**db.env(), **mailboxes, "UNKNOWNRCPTLIMIT": "3"})
    try:
        start = time.monotonic()
        assert rcpt_codes(server, [*unseen(0, 3), KNOWN, *unseen(3, 2)]) == [
            550, 550, 550, 250, 421]  # today's verdicts, unknownrcptlimit included
        waited = time.monotonic() - start
    finally:
        if trouble == "stalled":
            db.database.conn.rollback()
            db.database.conn.autocommit = True
    log = wait_count(server, COUNT_LINE, 1)
    assert log.count(DB_TROUBLE) == 1, log
    assert "Traceback" not in log
    if trouble == "stalled":  # our own statement_timeout (5 s) ended the wait
        assert 4.5 < waited < 9, waited
        assert "statement timeout" in log
    else:
        assert waited < 3, waited


def test_a_database_that_is_down_judges_as_today_and_logs_once(tcpserver, mailboxes):
    cluster = Cluster()
    try:
        database = cluster.new_database()
        conninfo = database.dsn("qmaild")
        database.close()
        cluster.stop()
        server = tcpserver(":allow\n", env={**mailboxes, "AUTHDB": conninfo})
        assert rcpt_codes(server, [*unseen(0, 2), KNOWN]) == [550, 550, 250]
        log = wait_count(server, COUNT_LINE, 1)
        assert log.count(DB_TROUBLE) == 1 and "Traceback" not in log, log
    finally:
        cluster.destroy()


# -- what a session loads --------------------------------------------------------
def test_only_a_session_that_names_an_unknown_recipient_loads_the_memory(
        db, control, mailboxes):
    env = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true", "TCPREMOTEIP": "192.0.2.7",
           **mailboxes, **db.env()}
    start = b"EHLO x\r\nMAIL FROM:<a@b>\r\n"
    memory = {"qmail_esmtpd.harvest", "qmail_esmtpd.auth.db", "psycopg2"}
    known = imported_modules(env, start + b"RCPT TO:<joe@example.com>\r\nQUIT\r\n")
    assert "qmail_esmtpd.mailboxes" in known and not memory & known, memory & known
    unknown = imported_modules(env, start + b"RCPT TO:<nosuch@example.com>\r\nQUIT\r\n")
    assert memory <= unknown  # the check above can fail
    assert rows(db) == [("192.0.2.7", 1)]
    no_database = {key: value for key, value in env.items() if key != "AUTHDB"}
    alone = imported_modules(no_database, start + b"RCPT TO:<nosuch@example.com>\r\nQUIT\r\n")
    assert "qmail_esmtpd.harvest" in alone
    assert not {"qmail_esmtpd.auth.db", "psycopg2"} & alone
