"""AUTH hardening end to end (real PostgreSQL, real tcpserver): locked rows,
timing, the cross-connection throttle (keyed, so guesses cannot be chosen
to share a count; checking nothing the database cannot record, on both
frontends and in the POP3 program), sessions their user's other processes
cannot read, a limit that counts recipients and follows the account as it
is now, no idle database connections, bounded database calls, the
authorization identity, legacy bcrypt and the log line of a hash upgrade."""

import base64
import contextlib
import itertools
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator

import bcrypt
import pytest
from test_auth import ALICE, ALICE_PW, ELSEWHERE, login, smtp

from qmail_esmtpd.auth import passwords
from qmail_esmtpd.auth.throttle import source_of

from harness.paths import ROOT
from harness.processes import run_with_fd3
from harness.system_users import service_python

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
        throttle.begin("bob", b"guess")  # a new attempt sweeps out what is over a day old
        throttle.settle(right=False)
    finally:
        server.close()
    assert db.sql("SELECT attempt FROM authfailures WHERE name = 'alice'") == [(2,)]


def timed(port: int, lines: list[bytes]) -> list[tuple[bytes, float]]:
    """Each AUTH line in one session: its reply's first line and how long it took
    (b"" once the server hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        f.readline()
        out = []
        for line in lines:
            start = time.monotonic()
            try:
                s.sendall(line)
                reply = f.readline()
            except OSError:  # reset: it hung up
                reply = b""
            out.append((reply, time.monotonic() - start))
        return out


def colliding_under_the_old_digest(count: int, values: int, source: str = "127.0.0.1",
                                   name: str = "alice") -> list[bytes]:
    """`count` passwords that the 16-bit unkeyed digest this throttle used to
    store (sha256 of source NUL name NUL password, first 2 bytes) maps onto
    only `values` values: what an attacker could compute offline."""
    import hashlib

    seed = hashlib.sha256(f"{source}\0{name}\0".encode())
    found = []
    for n in itertools.count():
        guess = f"word{n}".encode()
        digest = seed.copy()
        digest.update(guess)
        if int.from_bytes(digest.digest()[:2], "big") < values:
            found.append(guess)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def test_guesses_chosen_offline_cannot_share_a_count(db, tcpserver):
    import hashlib

    db.add(ALICE, ALICE_PW)
    chosen = colliding_under_the_old_digest(50, 5)
    old = {hashlib.sha256(b"127.0.0.1\0alice\0" + g).digest()[:2] for g in chosen}
    assert len(old) == 5  # the old scheme stored these 50 guesses as 5 attempts
    guesses = chosen + [f"dictionary{n}".encode() for n in range(50)]
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="10", AUTHMAXFAIL="1000"))
    replies = [reply for reply, _ in timed(
        server.port, [plain(b"alice", g) for g in guesses] + [plain(b"alice", ALICE_PW.encode())])]
    assert replies[:10] == [b"535 authentication failed (#5.7.1)\r\n"] * 10
    assert all(r.startswith(b"454 too many failed logins") for r in replies[10:]), replies
    log = server.wait_log("auth throttled user=alice")
    assert log.count("auth fail user=alice") == 10  # ten password checks, no more
    assert log.count("auth throttled user=alice") == 91
    assert db.sql("SELECT count(*) FROM authfailures") == [(10,)]


def test_the_stored_attempt_needs_the_key(tmp_path):
    from qmail_esmtpd.auth.throttle import Throttle
    from qmail_esmtpd.config import Controls

    def attempt(key: str, password: bytes, source: str = "192.0.2.1") -> int:
        (tmp_path / "authfailkey").write_text(key + "\n")
        throttle = Throttle(None, source, controls=Controls(str(tmp_path).encode()))  # type: ignore[arg-type]
        return throttle.attempt("alice", password)

    one, other = "a" * 64, "b" * 64
    assert attempt(one, b"guess") == attempt(one, b"guess")  # a retry is one attempt
    assert attempt(one, b"guess") != attempt(other, b"guess")
    assert attempt(one, b"guess") != attempt(one, b"guess2")
    assert attempt(one, b"guess") != attempt(one, b"guess", "192.0.2.2")
    values = {attempt(one, f"w{n}".encode()) for n in range(1000)}
    assert len(values) == 1000 and all(0 <= v < 2**63 for v in values)
    assert max(values) > 2**40  # wide, not 16 bits


@pytest.mark.parametrize("key", [None, "short"])
def test_without_a_usable_key_every_failure_counts_and_it_is_logged_once(
        db, tcpserver, control, key):
    db.add(ALICE, ALICE_PW)
    if key is None:
        (control / "authfailkey").unlink()
    else:
        (control / "authfailkey").write_text(key + "\n")
    server = tcpserver(":allow\n", env=db.env(AUTHFAILLIMIT="3", AUTHMAXFAIL="10"))
    replies = timed(server.port, [plain(b"alice", b"last month's")] * 4)
    assert [reply[:3] for reply, _ in replies] == [b"535", b"535", b"535", b"454"]
    log = server.wait_log("auth throttled")
    assert log.count("control/authfailkey") == 1, log
    why = "is missing" if key is None else "is shorter than 16 characters"
    assert f"auth throttle: control/authfailkey {why}: every failure counts" in log
    assert db.sql("SELECT count(*) FROM authfailures") == [(3,)]


def test_make_install_creates_the_key_once_and_keeps_it(tmp_path, monkeypatch):
    """0400 and the service user's: not its group's (qmaild's, nofiles, is
    qmaill's, qmailp's and alias's too)."""
    import pwd
    import stat

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from install import failure_key

    user = pwd.getpwnam("nobody") if os.getuid() == 0 else None
    said = failure_key(tmp_path / "control", user)
    key = tmp_path / "control" / "authfailkey"
    assert said == f"{key}: created (0400, readable by " + (
        "nobody alone)" if user else "this user alone)")
    text = key.read_text()
    assert len(text) == 65 and int(text, 16) and text.endswith("\n")
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    if user is not None:
        assert (key.stat().st_uid, key.stat().st_gid) == (user.pw_uid, 0)
    assert failure_key(tmp_path / "control", user) == f"{key}: kept as it is"
    assert key.read_text() == text
    assert failure_key(tmp_path / "other", user) != said  # a new one elsewhere
    assert (tmp_path / "other" / "authfailkey").read_text() != text


def test_make_install_takes_an_old_keys_group_away_and_keeps_the_key(tmp_path, monkeypatch):
    """A key an earlier install made (0640, root and the service user's group)
    becomes the user's alone; one the admin set otherwise is left as it is."""
    import pwd
    import stat

    if os.getuid() != 0:
        pytest.skip("chown: needs root")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from install import failure_key

    user = pwd.getpwnam("nobody")
    control = tmp_path / "control"
    control.mkdir()
    key = control / "authfailkey"
    key.write_text("an old key, kept as it is\n")
    os.chown(key, 0, user.pw_gid)
    key.chmod(0o640)
    said = failure_key(control, user)
    assert said == (f"{key}: kept, now 0400 and nobody's alone (it was readable by every "
                    "user of nobody's group)")
    assert key.read_text() == "an old key, kept as it is\n"
    assert (key.stat().st_uid, key.stat().st_gid, stat.S_IMODE(key.stat().st_mode)) == \
        (user.pw_uid, 0, 0o400)
    os.chown(key, 0, 0)
    key.chmod(0o644)  # the admin's own choice
    assert failure_key(control, user) == f"{key}: kept as it is"
    assert stat.S_IMODE(key.stat().st_mode) == 0o644


def test_an_old_database_gets_the_wide_column_and_keeps_its_rows(pg):
    database = pg.empty_database()
    with database:
        database.sql("CREATE TABLE authfailures (source inet NOT NULL, name text NOT NULL,"
                     " attempt integer NOT NULL, at timestamptz NOT NULL DEFAULT now(),"
                     " PRIMARY KEY (source, name, attempt))"
                     ";INSERT INTO authfailures (source, name, attempt)"
                     " VALUES ('192.0.2.1', 'alice', 65535)")
        schema = (ROOT / "sql" / "schema.sql").read_text()
        for _ in range(2):  # loaded again on each upgrade: idempotent
            database.sql(schema)
            database.sql((ROOT / "sql" / "grants.sql").read_text())
        assert database.sql("SELECT data_type FROM information_schema.columns WHERE"
                            " table_name = 'authfailures' AND column_name = 'attempt'"
                            ) == [("bigint",)]
        assert database.sql("SELECT attempt FROM authfailures") == [(65535,)]
    from qmail_esmtpd.auth.db import Database

    server = Database(database.dsn("qmaild"))
    try:
        server.query("INSERT INTO authfailures (source, name, attempt) VALUES"
                     " ('192.0.2.1', 'alice', %s)", (2**63 - 1,))
    finally:
        server.close()


# -- a database that reads but cannot write: nothing is checked -----------------
READ_ONLY = {
    "read-only role": "ALTER ROLE qmaild IN DATABASE {db} SET default_transaction_read_only = on",
    "no INSERT": "REVOKE INSERT ON authfailures FROM qmaild",
}
UNCHECKED = b"454 temporary authentication failure, try again later (#4.3.0)\r\n"
UNCHECKED_LOG = ("auth tempfail user=alice ip=127.0.0.1 mech=PLAIN refused unchecked: "
                 "failed logins cannot be recorded")


def cannot_record(db, how: str) -> None:
    db.sql(READ_ONLY[how].format(db=db.database.name))


def outcomes(server, word: str, count: int, timeout: float = 30) -> str:
    """The log once it holds `count` lines with `word` (each session's outcome)."""
    deadline = time.monotonic() + timeout
    while (log := server.log()).count(word) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def guesses_from_one_address(port: int, count: int = 30, parallel: int = 10) -> list[bytes]:
    """`count` connections from 127.0.0.1, `parallel` at a time, one AUTH
    PLAIN guess each, every one a new password: the replies."""
    from concurrent.futures import ThreadPoolExecutor

    lines = [plain(b"alice", f"guess{n}".encode()) for n in range(count)]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda line: answer(port, line), lines))


@pytest.mark.parametrize("frontend", ["tcpserver", "forkserver"])
@pytest.mark.parametrize("how", READ_ONLY)
def test_no_more_password_checks_from_one_address_than_the_limit(db, request, frontend, how):
    """The bound holds across connections whatever the database can do: an
    attempt that cannot be recorded is not checked."""
    db.add(ALICE, ALICE_PW)
    cannot_record(db, how)
    server = request.getfixturevalue(frontend)(":allow\n", env=db.env(AUTHFAILLIMIT="5"))
    replies = guesses_from_one_address(server.port)
    log = outcomes(server, "auth t", 30)  # tempfail, or throttled
    checked = log.count("auth fail user=alice")
    assert checked <= 5, f"{checked} passwords checked from one address"
    assert replies.count(UNCHECKED) == 30 - checked, replies
    assert log.count(UNCHECKED_LOG) == 30 - checked
    assert "Traceback" not in log
    # the right password in a new session is refused as well: it cannot be told apart
    assert answer(server.port, plain(b"alice", ALICE_PW.encode())) == UNCHECKED
    assert db.sql("SELECT count(*) FROM authfailures") == [(0,)]


@pytest.mark.parametrize("how", READ_ONLY)
def test_an_attempt_that_cannot_be_recorded_waits_and_ends_auth_for_the_session(
        db, tcpserver, how):
    db.add(ALICE, ALICE_PW)
    cannot_record(db, how)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILDELAY="2"))
    right = plain(b"alice", ALICE_PW.encode())
    replies = timed(server.port, [plain(b"alice", b"guess1"), right, right])
    assert [reply for reply, _ in replies] == [UNCHECKED] * 3
    assert min(waited for _, waited in replies) >= 1.9  # every answer waited authfaildelay
    log = outcomes(server, "auth tempfail", 3)
    assert "auth fail" not in log and "auth ok" not in log  # no password checked
    assert log.count("auth attempt not recorded source=127.0.0.1: ") == 1
    assert log.count(UNCHECKED_LOG) == 3
    assert "Traceback" not in log


def test_a_right_password_is_not_counted_and_a_wrong_one_is(db, tcpserver):
    db.add(ALICE, ALICE_PW)
    server = tcpserver(":allow\n", env=db.env())
    assert answer(server.port, plain(b"alice", ALICE_PW.encode())).startswith(b"235")
    assert db.sql("SELECT count(*) FROM authfailures") == [(0,)]
    assert answer(server.port, plain(b"alice", b"guess")).startswith(b"535")
    assert answer(server.port, plain(b"alice", ALICE_PW.encode())).startswith(b"235")
    assert db.sql("SELECT host(source), name FROM authfailures") == [("127.0.0.1", "alice")]


def pop3_env(db, control, **extra: str) -> dict:
    return {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(control), "TCPREMOTEIP": "192.0.2.7",
            **db.env(**extra)}


@pytest.mark.parametrize("how", READ_ONLY)
def test_pop3_does_not_check_what_it_cannot_record(db, control, how):
    from test_pop3 import ENTRY, login

    from harness.files import write_launcher

    db.add(ALICE, ALICE_PW, sysuser="nobody")
    cannot_record(db, how)
    program = write_launcher(control.parent / "qmail-esmtpd-checkpassword", ENTRY)
    for password in ("guess1", ALICE_PW):  # the right one as well
        start = time.monotonic()
        proc = run_with_fd3([str(program), "/bin/true"], login(ALICE, password),
                            env=pop3_env(db, control, AUTHFAILDELAY="2"),
                            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 111, proc.stderr
        assert time.monotonic() - start >= 1.9  # authfaildelay, as before a 454
        (line,) = proc.stderr.splitlines()
        assert line.startswith("qmail-esmtpd-checkpassword: login tempfail user=alice "
                               "ip=192.0.2.7: not checked: the attempt cannot be recorded: ")
    assert db.sql("SELECT count(*) FROM authfailures") == [(0,)]


@pytest.mark.parametrize("how", READ_ONLY)
def test_pop3_logins_from_one_address_check_no_more_than_the_limit(db, control, how):
    from concurrent.futures import ThreadPoolExecutor

    from test_pop3 import ENTRY, login

    from harness.files import write_launcher

    db.add(ALICE, ALICE_PW, sysuser="nobody")
    cannot_record(db, how)
    program = write_launcher(control.parent / "qmail-esmtpd-checkpassword", ENTRY)
    env = pop3_env(db, control, AUTHFAILLIMIT="5")

    def one(n: int) -> tuple[int, str]:
        proc = run_with_fd3([str(program), "/bin/true"], login(ALICE, f"guess{n}"), env=env,
                            capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stderr

    with ThreadPoolExecutor(10) as pool:
        runs = list(pool.map(one, range(30)))
    checked = sum("login fail user=alice" in stderr for _, stderr in runs)
    assert checked <= 5, f"{checked} passwords checked from one address"
    assert [status for status, _ in runs].count(111) == 30 - checked
    assert db.sql("SELECT count(*) FROM authfailures") == [(0,)]


QMAIL_POPUP = os.environ.get("QMAIL_POPUP", "/var/qmail/bin/qmail-popup")  # as test_popup.py


@pytest.mark.skipif(not os.path.exists(QMAIL_POPUP), reason="needs qmail's qmail-popup")
def test_pop3_under_qmail_popup_answers_only_after_the_delay(db, control, tcpserver):
    import poplib

    from test_pop3 import ENTRY

    from harness.files import write_launcher

    db.add(ALICE, ALICE_PW, sysuser="nobody")
    cannot_record(db, "read-only role")
    program = write_launcher(control.parent / "qmail-esmtpd-checkpassword", ENTRY)
    server = tcpserver(":allow\n", env=db.env(AUTHFAILDELAY="2"), argv=[
        QMAIL_POPUP, "pop.example.com", program, "/var/qmail/bin/qmail-pop3d", "Maildir"])
    client = poplib.POP3("127.0.0.1", server.port, timeout=30)
    try:
        client.user(ALICE)
        start = time.monotonic()
        with pytest.raises(poplib.error_proto):
            client.pass_(ALICE_PW)
        assert time.monotonic() - start >= 1.9
    finally:
        client.close()
    log = server.wait_log("login tempfail")
    assert ("login tempfail user=alice ip=127.0.0.1: not checked: the attempt cannot be "
            "recorded: ") in log


@pytest.mark.parametrize("ip, source", [
    ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("unknown", None), ("", None),
])
def test_sources_are_ipv4_addresses_and_ipv6_slash_64s(ip, source):
    assert source_of(ip) == source


# -- an AUTH session cannot be read by its user's other processes ---------------
def as_its_user(pid: int) -> list[str]:
    """The argv prefix that runs a command as the user of process `pid`."""
    owner = os.stat(f"/proc/{pid}")  # the directory keeps the process's own ids
    if owner.st_uid == os.geteuid():
        return []
    return ["setpriv", f"--reuid={owner.st_uid}", f"--regid={owner.st_gid}", "--clear-groups"]


def assert_unreadable_by_its_user(pid: int) -> None:
    """Its /proc entries belong to root (how the kernel shows a process that is
    not dumpable), and a process of its own user cannot open its memory."""
    assert os.stat(f"/proc/{pid}").st_uid != 0, "a session as root would prove nothing"
    for entry in ("mem", "environ", "maps", "status"):
        assert os.stat(f"/proc/{pid}/{entry}").st_uid == 0, f"/proc/{pid}/{entry}"
    probe = subprocess.run([*as_its_user(pid), service_python(), "-c",
                            f"open('/proc/{pid}/mem', 'rb')"],
                           capture_output=True, text=True, timeout=30)
    assert "PermissionError" in probe.stderr, probe.stderr


def session_pid(server, client: socket.socket) -> int:
    """The process of `client`'s session, from the frontend's `ok` line, which
    names the client's port (the newest `pid` line may be another's: the
    start-up probe's child can write its line after a later child)."""
    import re

    port = client.getsockname()[1]
    line = re.compile(rf" ok (\d+) \S+ \S*:127\.0\.0\.1::{port}\n")
    deadline = time.monotonic() + 10
    while not (found := line.search(server.log())) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert found, server.log()
    return int(found.group(1))


def auth_server(request, frontend: str, db, tmp_path):
    """The frontend with AUTH, its sessions as an ordinary user: the warm
    server's (nobody as root), or under tcpserver `setuidgid nobody` as root,
    as tcpserver -u runs them."""
    if frontend == "forkserver":
        return request.getfixturevalue("forkserver")(":allow\n", env=db.env())
    argv = None
    if os.geteuid() == 0:
        from harness.files import write_launcher
        from harness.system_users import let_service_user_in

        let_service_user_in(tmp_path)
        launcher = write_launcher(tmp_path / "qmail-esmtpd", "qmail_esmtpd.cli:run",
                                  interpreter=service_python())
        argv = ["setuidgid", "nobody", launcher]
    return request.getfixturevalue("tcpserver")(":allow\n", env=db.env(), argv=argv)


@pytest.mark.parametrize("frontend", ["tcpserver", "forkserver"])
def test_an_auth_session_is_unreadable_by_its_users_other_processes(db, request, tmp_path,
                                                                    frontend):
    """Made so at the AUTH command: before AUTH LOGIN's password is read, and
    after a login; the warm server's sessions are so from the fork (the server
    changed its uid), tcpserver's only from there."""
    db.add(ALICE, ALICE_PW)
    server = auth_server(request, frontend, db, tmp_path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"AUTH LOGIN\r\n")
        assert f.readline().startswith(b"334 ")
        s.sendall(base64.b64encode(ALICE.encode()) + b"\r\n")
        assert f.readline().startswith(b"334 ")  # the password is next
        pid = session_pid(server, s)
        assert_unreadable_by_its_user(pid)
        s.sendall(base64.b64encode(ALICE_PW.encode()) + b"\r\n")
        assert f.readline().startswith(b"235 ")
        assert_unreadable_by_its_user(pid)


def test_only_sessions_that_say_auth_load_what_prctl_needs(db, control):
    from harness.processes import imported_modules

    env = {"QMAIL_CONTROL": str(control), **db.env()}
    assert "_ctypes" not in imported_modules(env, b"EHLO x\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")
    auth = base64.b64encode(b"\0alice\0" + ALICE_PW.encode())
    assert "_ctypes" in imported_modules(env, b"EHLO x\r\nAUTH PLAIN " + auth + b"\r\nQUIT\r\n")


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


@contextlib.contextmanager
def sendcounts_row_locked(db, uid: int) -> "Iterator[None]":
    """The account's sendcounts row locked by another transaction meanwhile."""
    db.database.conn.autocommit = False
    db.sql("SELECT * FROM sendcounts WHERE id = %s FOR UPDATE", (uid,))
    try:
        yield
    finally:
        db.database.conn.rollback()
        db.database.conn.autocommit = True


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
        with sendcounts_row_locked(db, uid):
            code, text = c.data(MESSAGE)
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
    assert "authzid=bob ip=127.0.0.1: not the login name" in server.wait_log("authzid=bob")


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


@pytest.mark.parametrize("make, name", [
    (lambda pw: bcrypt.hashpw(pw, bcrypt.gensalt(rounds=4)).decode(), "bcrypt"),
    (lambda pw: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
     "argon2id m=65536,t=3,p=4"),
    (lambda pw: passwords.new_hash(pw), "argon2id m=19456,t=2,p=1"),
    (lambda pw: pw.decode(), "plaintext"),
    (lambda pw: "*", "disabled"),
])
def test_the_log_names_a_hash_by_its_scheme_only(make, name):
    stored = make(b"a secret")
    assert passwords.scheme(stored) == name
    for part in stored.split("$"):
        if len(part) > 8 and "=" not in part:  # salt, digest, the plaintext itself
            assert part not in passwords.scheme(stored)


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
