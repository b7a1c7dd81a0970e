"""qmail-esmtpd-server's workers (-m N): one process serves connection after
connection, and nothing of one session reaches the next.

Each test that matters here serves two different clients in a row through
one worker (-c 1: the second connection waits until the first session has
ended, and goes to the same, only worker; the `ok` lines show the pid), so
that it fails if anything carries over."""

import os
import re
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest
from test_auth import ALICE, ALICE_PW, login
from test_forkserver import env_queue, greeting, one_session, recorded, wait_count

from qmail_esmtpd.kept import SETTLED_NS
from qmail_esmtpd.replies import CONTROLS
from qmail_esmtpd.workers import Baseline

from harness.files import compile_users, self_signed_pem
from harness.system_users import let_service_user_in

OUTSIDE = "someone@outside.test"  # not in rcpthosts: relaying


def ok_pids(server, count: int) -> list[int]:
    """The pids of the `ok` lines, once there are `count` of them."""
    log = wait_count(server, ": ok ", count)
    return [int(pid) for pid in re.findall(r": ok (\d+) ", log)]


def recording_queue(tmp_path: Path) -> dict:
    """qmail-queue that writes its environment to ENVDIR/<TCPREMOTEIP>."""
    seen = tmp_path / "seen"
    seen.mkdir()
    seen.chmod(0o777)
    let_service_user_in(tmp_path)
    return {"QMAILQUEUE": str(env_queue(tmp_path)), "ENVDIR": str(seen)}


def relays(port: int, source: str, user: tuple[str, str] | None = None,
           tls: bool = False) -> bool:
    """Whether a client from `source` may send to an outside address (queued)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo("client.test")
        if user:
            login(client, *user)
        try:
            client.sendmail("a@example.com", [OUTSIDE], b"Subject: x\r\n\r\nx\r\n")
        except smtplib.SMTPRecipientsRefused:
            return False
    return True


def test_a_relay_client_then_a_stranger(forkserver, tmp_path):
    """The first rule's RELAYCLIENT and variable are gone for the second client."""
    env = recording_queue(tmp_path)
    server = forkserver('127.0.0.2:allow,RELAYCLIENT="",FIRST="yes"\n:allow\n',
                        env=env, options=["-c", "1"])
    assert relays(server.port, "127.0.0.2")
    assert not relays(server.port, "127.0.0.3")
    assert one_session(server.port, "127.0.0.3") == "queued"
    first, second, third = ok_pids(server, 3)
    assert first == second == third  # one worker served all three
    seen = Path(env["ENVDIR"])
    assert recorded(seen, "127.0.0.2")["FIRST"] == "yes"
    stranger = recorded(seen, "127.0.0.3")
    assert stranger["TCPREMOTEIP"] == "127.0.0.3"
    assert "FIRST" not in stranger and "RELAYCLIENT" not in stranger, stranger


def test_an_authenticated_user_then_an_anonymous_one(db, forkserver, tmp_path, control):
    """AUTH (over STARTTLS) lets the first relay; the next client in the same
    worker is a stranger again: no relaying, no TCPREMOTEINFO."""
    db.add(ALICE, ALICE_PW)
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    env = {**db.env(), **recording_queue(tmp_path)}
    server = forkserver(":allow\n", env=env, options=["-c", "1"])
    assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW), tls=True)
    worker = ok_pids(server, 1)[0]
    wait_count(server, ": end ", 1)  # the worker answers once it has put its fds back
    sockets = [os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")]
    # its channel, and the database connection it keeps (test below: it carries nothing)
    assert len([s for s in sockets if s.startswith("socket:")]) == 2, sockets
    assert not relays(server.port, "127.0.0.3", tls=True)
    assert not relays(server.port, "127.0.0.3")
    assert set(ok_pids(server, 3)) == {worker}
    seen = Path(tmp_path / "seen")
    assert recorded(seen, "127.0.0.2")["TCPREMOTEINFO"] == ALICE
    assert not (seen / "127.0.0.3").exists()  # nothing of theirs was queued


def test_plugin_variables_stay_with_their_session(forkserver, tmp_path):
    """A qmail-spp plugin's S line sets a variable for its own session's qmail-queue only."""
    plugin = tmp_path / "setvar"
    plugin.write_text('#!/bin/sh\n[ "$TCPREMOTEIP" = 127.0.0.2 ] && echo SPLUGGED=first\n'
                      "exit 0\n")
    plugin.chmod(0o755)
    conf = tmp_path / "smtpplugins"
    conf.write_text(f"[mail]\n{plugin}\n")
    conf.chmod(0o644)
    env = {**recording_queue(tmp_path), "SPPCONFFILE": str(conf)}
    server = forkserver(":allow\n", env=env, options=["-c", "1"])
    assert one_session(server.port, "127.0.0.2") == "queued"
    assert one_session(server.port, "127.0.0.3") == "queued"
    assert len(set(ok_pids(server, 2))) == 1
    seen = tmp_path / "seen"
    assert recorded(seen, "127.0.0.2").get("PLUGGED") == "first"
    assert "PLUGGED" not in recorded(seen, "127.0.0.3")


def test_what_a_session_reads_is_read_again_for_the_next(forkserver, control):
    """control files, the certificate and the rules, changed between two
    sessions of one worker, count from the next session."""
    server = forkserver(":allow\n", options=["-c", "1"])
    first = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert b"mx.example.com" in greeting(first)
    first.close()
    (control / "smtpgreeting").write_text("changed.example.com\n")
    second = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert b"changed.example.com" in greeting(second)
    second.close()
    names = []
    for host in ("one.test", "two.test"):
        self_signed_pem(control / "servercert.pem", host).chmod(0o644)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.starttls(context=context)
            assert client.sock is not None
            cert = ssl.DER_cert_to_PEM_cert(client.sock.getpeercert(binary_form=True))
            names.append(cert)
    assert names[0] != names[1]
    server.compile_rules(":deny\n")
    assert one_session(server.port, "127.0.0.1") == "denied"
    assert len(set(ok_pids(server, 4))) == 1


def rcpt_replies(port: int, recipients: list[bytes]) -> list[bytes]:
    """One session: each RCPT's reply line; [the greeting] when it is not 220."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        replies = sock.makefile("rb")
        first = replies.readline()
        if not first.startswith(b"220 "):
            return [first]
        sock.sendall(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\n"
                     + b"".join(b"RCPT TO:<%s>\r\n" % r for r in recipients) + b"QUIT\r\n")
        lines = [replies.readline() for _ in range(len(recipients) + 3)]
    return lines[2:-1]


def assign(users: Path, name: str, home: Path, rest: Path) -> None:
    """users/assign of one user and a catch-all (whose home has no .qmail
    file: what it catches is unknown), compiled as qmail-newu does."""
    uid = os.getuid() or 1000
    (users / "assign").write_text(f"={name}:{name}:{uid}:{uid}:{home}:-:{name}:\n"
                                  f"+:rest:{uid}:{uid}:{rest}:-::\n.\n")
    compile_users(users / "assign", users / "cdb")


def test_the_recipient_checks_files_are_read_again_when_changed(forkserver, control, tmp_path):
    """A worker uses what it kept of the check's files (control files,
    users/cdb) only while each is unchanged: a file that appears, users/cdb
    rewritten in place with its size and modification time kept, a control
    file made unreadable (421, as a fresh process says) and an unreadable
    users/cdb (accepted unchecked, as always) all count from the next
    session of the same worker."""
    home, rest = tmp_path / "home", tmp_path / "rest"
    for folder in (home, rest):
        folder.mkdir()
        folder.chmod(0o755)
    for name in ("anna", "bert"):
        (home / f".qmail-{name}").write_text("./Maildir/\n")
    users = tmp_path / "qmail" / "users"
    users.mkdir(parents=True)
    assign(users, "bert", home, rest)
    other = users.parent / "cdb-bert"
    other.write_bytes((users / "cdb").read_bytes())
    assign(users, "anna", home, rest)
    assert other.stat().st_size == (users / "cdb").stat().st_size
    (control / "checkrecipients").write_text("1\n")
    time.sleep(SETTLED_NS / 1e9 + 0.2)  # old enough to be kept (kept.settled_stamp)
    server = forkserver(":allow\n", env={"QMAIL_HOME": str(users.parent)},
                        options=["-c", "1"])
    anna, bert, nosuch = b"anna@example.com", b"bert@example.com", b"nosuch@example.com"
    assert [r[:3] for r in rcpt_replies(server.port, [anna, nosuch])] == [b"250", b"250"]
    (control / "locals").write_text("example.com\n")  # was missing: example.com is remote
    assert [r[:3] for r in rcpt_replies(server.port, [anna, nosuch])] == [b"250", b"550"]
    cdb = users / "cdb"
    before = cdb.stat()
    with cdb.open("r+b") as f:  # in place: the same inode and size
        f.write(other.read_bytes())
    os.utime(cdb, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert [r[:3] for r in rcpt_replies(server.port, [anna, bert])] == [b"550", b"250"]
    switch = control / "checkrecipients"
    switch.chmod(0)
    assert rcpt_replies(server.port, [bert]) == [CONTROLS]
    switch.chmod(0o644)
    cdb.chmod(0)
    assert [r[:3] for r in rcpt_replies(server.port, [nosuch])] == [b"250"]
    assert (f"recipient accepted unchecked ip=127.0.0.1 rcpt={nosuch.decode()} "
            "(users/cdb: Permission denied)") in server.wait_log("users/cdb: Permission denied")
    assert len(set(ok_pids(server, 5))) == 1


def test_max_use_idle_and_memory_retire_workers(forkserver):
    """-m 2: a third connection goes to a new worker; -W 1: an idle worker
    exits; -M 0: a worker that grew at all is retired after its session."""
    server = forkserver(":allow\n", options=["-c", "1", "-m", "2", "-W", "1"])
    for _ in range(3):
        assert one_session(server.port, "127.0.0.1") == "queued"
    first, second, third = ok_pids(server, 3)
    assert first == second != third
    deadline = time.monotonic() + 10
    while Path(f"/proc/{third}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{third}").exists()  # idle for a second: gone
    assert one_session(server.port, "127.0.0.1") == "queued"
    grown = forkserver(":allow\n", options=["-c", "1", "-M", "0"])
    for _ in range(2):
        assert one_session(grown.port, "127.0.0.1") == "queued"
    one, two = ok_pids(grown, 2)
    assert one != two
    assert re.search(rf"worker {one} retired: memory grew", grown.log())


def test_memory_stays_bounded_over_auth_and_tls_sessions(db, forkserver, control, tmp_path):
    """One worker, 30 sessions with STARTTLS and AUTH (an argon2id verify of
    19 MiB each): it is not retired, its resident memory levels off after
    the first verifies and stays well within the 64 MB -M allows by default."""
    db.add(ALICE, ALICE_PW)
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    server = forkserver(":allow\n", env=db.env(), options=["-c", "1"])
    assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW), tls=True)
    worker = ok_pids(server, 1)[0]

    def resident() -> int:
        status = Path(f"/proc/{worker}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024

    after_one = resident()
    for _ in range(9):
        assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW), tls=True)
    after_ten = resident()
    for _ in range(20):
        assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW), tls=True)
    assert set(ok_pids(server, 30)) == {worker}
    # argon2's 19 MiB stay in the heap once glibc has raised its mmap
    # threshold (that is what makes the next verify warm); then no growth
    assert resident() - after_one < 32 << 20
    assert resident() - after_ten < 4 << 20
    assert "retired" not in server.log()


def test_a_hung_or_killed_session_takes_only_its_worker(forkserver):
    server = forkserver(":allow\n")
    hung = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert greeting(hung).startswith(b"220 ")
    (hung_pid,) = ok_pids(server, 1)
    assert one_session(server.port, "127.0.0.1") == "queued"  # another worker
    assert ok_pids(server, 2)[1] != hung_pid
    os.kill(hung_pid, signal.SIGKILL)
    assert hung.recv(1) == b""
    assert f"end {hung_pid} status 9" in server.wait_log(f"end {hung_pid}")
    assert one_session(server.port, "127.0.0.1") == "queued"


def test_workers_are_not_dumpable_and_not_root(forkserver):
    if os.geteuid() != 0:
        pytest.skip("needs root: the sessions' user is nobody")
    server = forkserver(":allow\n")
    client = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert greeting(client).startswith(b"220 ")
    (pid,) = ok_pids(server, 1)
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"Uid:\s+(.*)", status).group(1).split()
    assert "0" not in uids
    assert os.stat(f"/proc/{pid}/mem").st_uid == 0  # not dumpable: /proc says root's
    client.close()


def test_sighup_replaces_the_workers_without_dropping_a_session(forkserver):
    server = forkserver(":allow\n")
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=20)
    client.ehlo("client.test")
    (before,) = ok_pids(server, 1)
    server.signal(signal.SIGHUP)
    server.wait_log("SIGHUP")
    client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert client.quit()[0] == 221
    assert one_session(server.port, "127.0.0.1") == "queued"
    assert ok_pids(server, 2)[1] != before
    deadline = time.monotonic() + 10
    while Path(f"/proc/{before}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{before}").exists()


def test_a_stray_descriptor_retires_the_worker(tmp_path):
    """Baseline's own check, in this process: a descriptor the session did
    not close is a reason not to serve another connection."""
    baseline = Baseline(64 << 20)
    assert baseline.why_retire() is None
    stray = os.open(tmp_path, os.O_RDONLY)
    try:
        assert "descriptors left open" in (baseline.why_retire() or "")
    finally:
        os.close(stray)
    assert baseline.why_retire() is None


def test_fork_per_connection_stays_available(forkserver):
    server = forkserver(":allow\n", options=["-m", "0", "-c", "1"])
    for _ in range(2):
        assert one_session(server.port, "127.0.0.1") == "queued"
    first, second = ok_pids(server, 2)
    assert first != second


def backends(db) -> list:
    """The sessions' backends: (pid, state, open transaction?, user, application_name)."""
    return db.sql("SELECT pid, state, xact_start IS NOT NULL, usename, application_name "
                  "FROM pg_stat_activity WHERE application_name LIKE 'qmail-esmtpd%'")


def test_the_kept_database_connection_carries_nothing(db, forkserver, tmp_path):
    """A worker keeps one connection between sessions: idle, no transaction
    open, the service role; a backend terminated meanwhile is noticed and
    replaced, and a client whose rule names another database gets its own."""
    db.add(ALICE, ALICE_PW)
    other = db.env()["AUTHDB"] + " application_name=qmail-esmtpd-other"
    server = forkserver(f'127.0.0.4:allow,AUTHDB="{other}"\n:allow\n', env=db.env(),
                        options=["-c", "1"])
    assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW))
    (kept,) = backends(db.database)
    pid, state, in_transaction, user, name = kept
    assert (state, in_transaction, user, name) == ("idle", False, "qmaild", "qmail-esmtpd")
    assert relays(server.port, "127.0.0.3", (ALICE, ALICE_PW))  # the next client: the same one
    assert [row[0] for row in backends(db.database)] == [pid]
    db.database.sql("SELECT pg_terminate_backend(%s)", (pid,))
    assert relays(server.port, "127.0.0.3", (ALICE, ALICE_PW))  # a new connection, no 454
    (fresh,) = backends(db.database)
    assert fresh[0] != pid
    assert relays(server.port, "127.0.0.4", (ALICE, ALICE_PW))  # its rule's AUTHDB
    assert [row[4] for row in backends(db.database)] == ["qmail-esmtpd-other"]
    assert len(set(ok_pids(server, 4))) == 1
    assert "auth tempfail" not in server.log()


def test_no_tls_session_outlives_its_connection(forkserver, control):
    """The worker's contexts issue no session ticket (TLS 1.3, or 1.2): there is
    no ticket key, and nothing a later client of the worker could resume."""
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    server = forkserver(":allow\n", options=["-c", "1"])
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = version
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.starttls(context=context)
            assert client.noop()[0] == 250  # a TLS 1.3 ticket would have come by now
            assert client.sock is not None
            assert client.sock.version() == ("TLSv1.3" if version == ssl.TLSVersion.TLSv1_3
                                             else "TLSv1.2")
            assert not client.sock.session.has_ticket
    assert len(set(ok_pids(server, 2))) == 1


def test_auth_settings_follow_their_files_from_session_to_session(db, forkserver, control):
    """A worker reads AUTH's control files as it keeps files (only while a
    stat() shows them unchanged): a sendlimit rewritten between two sessions
    counts at the next one, in the same worker."""
    db.add(ALICE, ALICE_PW)
    limit = control / "sendlimit"
    limit.write_text("1\n")
    time.sleep(2.1)  # settled (kept.SETTLED_NS): the worker keeps it
    server = forkserver(":allow\n", env=db.env(), options=["-c", "1"])

    def sends() -> bool:
        try:
            return relays(server.port, "127.0.0.2", (ALICE, ALICE_PW))
        except smtplib.SMTPSenderRefused:
            return False

    assert sends()
    assert not sends()  # the day's one message was sent
    limit.write_text("3\n")  # the same size
    assert sends() and sends()  # the second and third of the day
    assert not sends()
    assert len(set(ok_pids(server, 5))) == 1
    assert "Traceback" not in server.log()


def test_a_client_that_never_reads_ends_its_session_in_timeoutsmtpd(forkserver, control):
    """A session blocked writing to a client that never reads ends at
    timeoutsmtpd, as under tcpserver (exit 1, qmail's write timeout), and the
    worker's next client is served."""
    import threading

    (control / "timeoutsmtpd").write_text("2\n")
    server = forkserver(":allow\n", options=["-c", "1"])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and we never read
        s.connect(("127.0.0.1", server.port))
        port = s.getsockname()[1]

        def send_until_refused() -> None:
            try:
                s.sendall(b"RCPT\r\n" * 2_000_000)
            except OSError:
                pass

        threading.Thread(target=send_until_refused, daemon=True).start()
        log = server.wait_log(f"::{port}\n")
        (pid,) = re.findall(rf": ok (\d+) [^\n]*::{port}\n", log)
        log = server.wait_log(f"end {pid} status", timeout=30)
    assert f"end {pid} status 256" in log, log[-800:]
    assert one_session(server.port, "127.0.0.1") == "queued"
    log = server.log()
    assert "Traceback" not in log, log[-800:]


def test_a_locked_sendcounts_row_is_a_451_and_the_next_session_is_whole(db, forkserver):
    """A statement timeout on the kept connection (the sending limit's row
    locked elsewhere) is a 451 for that message alone; the worker keeps no
    connection in a transaction, and its next client is served and counted."""
    from test_hardening import sendcounts_row_locked

    uid = db.add(ALICE, ALICE_PW)
    db.sql("INSERT INTO sendcounts (id) VALUES (%s)", (uid,))
    server = forkserver(":allow\n", env=db.env(), options=["-c", "1"])
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.ehlo("client.test")
        login(c, ALICE, ALICE_PW)
        c.mail("alice@client.test")
        c.rcpt(OUTSIDE)
        with sendcounts_row_locked(db, uid):
            code, text = c.data(b"Subject: x\r\n\r\nx\r\n")
    assert code == 451 and b"temporary failure checking the sending limit" in text
    assert db.counts(ALICE) == (0, 0)
    wait_count(server, ": end ", 1)
    kept = backends(db.database)  # closed after the error, or kept idle
    assert all(row[1:4] == ("idle", False, "qmaild") for row in kept), kept
    assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW))
    assert db.counts(ALICE) == (1, 1)
    assert len(set(ok_pids(server, 2))) == 1


def test_a_stalled_kept_backend_is_a_454_and_then_replaced(db, forkserver):
    """The worker's kept connection whose backend stops answering (SIGSTOP):
    the AUTH gets a 454 in bounded time, as a stalled database does under
    tcpserver, and the next session works on a new connection."""
    from test_hardening import answer, plain

    db.add(ALICE, ALICE_PW)
    server = forkserver(":allow\n", env=db.env(), options=["-c", "1"])
    assert relays(server.port, "127.0.0.2", (ALICE, ALICE_PW))
    wait_count(server, ": end ", 1)
    (stalled,) = [row[0] for row in backends(db.database)]
    os.kill(stalled, signal.SIGSTOP)
    try:
        reply = answer(server.port, plain(ALICE.encode(), ALICE_PW.encode()), "127.0.0.3")
    finally:
        os.kill(stalled, signal.SIGCONT)
    assert reply.startswith(b"454 "), reply
    assert relays(server.port, "127.0.0.3", (ALICE, ALICE_PW))
    assert stalled not in [row[0] for row in backends(db.database)]
    assert len(set(ok_pids(server, 3))) == 1
    assert "Traceback" not in server.log()
