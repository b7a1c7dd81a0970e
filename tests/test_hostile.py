"""Hostile clients and hostile settings, through real tcpserver: every wait is
bounded, every odd number gets an SMTP reply, children start as under qmail."""

import base64
import pwd
import re
import socket
import sys
import threading
import time
from pathlib import Path

from harness.files import compile_users, write_program
from harness.frontend import RELAY_LOCALHOST
from harness.paths import FAKE_CHECKPASSWORD, FAKE_QUEUE, SERVER
from harness.processes import talk

HUGE = b"9" * 5000


def tcpserver_ended(log: Path, client_port: int, deadline: float) -> str | None:
    """The exit status tcpserver logged for the connection from `client_port`."""
    while time.monotonic() < deadline:
        text = log.read_text()
        pid = re.search(rf"tcpserver: ok (\d+) [^\n]* :127\.0\.0\.1::{client_port}\n", text)
        if pid:
            end = re.search(rf"tcpserver: end {pid.group(1)} status (\d+)", text)
            if end:
                return end.group(1)
        time.sleep(0.1)
    return None


SMALL_SEND_BUFFER = """#!{python}
# as on a host with a small tcp_wmem: the server's socket holds 16 KB of replies
import os, socket, sys
s = socket.socket(fileno=os.dup(1))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
s.detach()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_client_that_never_reads_cannot_outlast_timeoutsmtpd(tcpserver, control, tmp_path):
    """Each 64 KB of `RCPT` lines makes about 270 KB of 503 replies in one batch:
    far more than the socket takes, so the write must wait, and only that long."""
    (control / "timeoutsmtpd").write_text("2\n")
    wrapper = write_program(tmp_path / "small-sndbuf",
                            SMALL_SEND_BUFFER.format(python=sys.executable))
    server = tcpserver(RELAY_LOCALHOST, argv=[str(wrapper), str(SERVER)])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and we never read
        s.connect(("127.0.0.1", server.port))
        sender = threading.Thread(target=_send_until_refused, args=(s, b"RCPT\r\n" * 2_000_000),
                                  daemon=True)
        start = time.monotonic()
        sender.start()
        status = tcpserver_ended(server.logpath, s.getsockname()[1], start + 30)
        elapsed = time.monotonic() - start
    assert status == "256", server.logpath.read_text()[-500:]  # exit 1, as qmail's write timeout
    assert elapsed < 15, elapsed
    assert "Traceback" not in server.logpath.read_text()


def _send_until_refused(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass


def test_huge_numbers_get_replies_and_the_session_goes_on(tcpserver, control, tmp_path):
    (control / "timeoutsmtpd").write_text("99999999999\n")  # qmail takes it; select() must too
    (control / "databytes").write_text("1000\n")
    checker = write_program(tmp_path / "checkpassword",
                            f"#!/bin/sh\nexec {sys.executable} {FAKE_CHECKPASSWORD} \"$@\"\n")
    server = tcpserver(":allow\n", env={"AUTHFAILDELAY": HUGE.decode()},
                       argv=[str(SERVER), str(checker), "/bin/true"])
    out = talk(server.port, b"EHLO x\r\nMAIL FROM:<a@b> SIZE=" + HUGE + b"\r\n"
               b"MAIL FROM:<a@b>\r\nRCPT TO:<u@[127.0.0." + HUGE + b"]>\r\n"
               b"RCPT TO:<u@example.com>\r\nQUIT\r\n")
    assert out.split(b"\r\n")[-7:] == [
        b"250 AUTH LOGIN PLAIN",
        b"552 sorry, that message size exceeds my databytes limit (#5.3.4)",
        b"250 ok", b"555 syntax error (#5.5.4)", b"250 ok", b"221 mx.example.com", b""]
    assert "Traceback" not in server.logpath.read_text()


def test_huge_fail_delay_is_clamped_not_a_crash(tcpserver, tmp_path):
    checker = write_program(tmp_path / "checkpassword",
                            f"#!/bin/sh\nexec {sys.executable} {FAKE_CHECKPASSWORD} \"$@\"\n")
    server = tcpserver(":allow\n", env={"AUTHFAILDELAY": HUGE.decode()},
                       argv=[str(SERVER), str(checker), "/bin/true"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland") + b"\r\n")
        assert f.readline() == b"235 ok, go ahead (#2.0.0)\r\n"
        s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong") + b"\r\n")
        s.settimeout(1.5)
        try:
            answer = f.readline()
        except TimeoutError:
            answer = b"(still waiting: the delay holds)"
    assert answer in (b"(still waiting: the delay holds)",
                      b"503 you're already authenticated (#5.5.0)\r\n")
    assert "Traceback" not in server.logpath.read_text()


SIGNAL_REPORT = """#!/bin/sh
# the ignored-signal mask this program started with, then the real stand-in
grep '^SigIgn:' /proc/self/status >> {out}
exec {python} {program} "$@"
"""


def ignored(mask_line: str) -> set[int]:
    mask = int(mask_line.split()[1], 16)
    return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}


def test_children_start_with_default_sigpipe_and_sigxfsz(tcpserver, tmp_path):
    import signal

    seen = tmp_path / "sigign.txt"
    queue = write_program(tmp_path / "signal-queue", SIGNAL_REPORT.format(
        out=seen, python=sys.executable, program=FAKE_QUEUE))
    checker = write_program(tmp_path / "checkpassword", SIGNAL_REPORT.format(
        out=seen, python=sys.executable, program=FAKE_CHECKPASSWORD))
    server = tcpserver(":allow\n", env={"QMAILQUEUE": str(queue), "AUTHFAILDELAY": "0"},
                       argv=[str(SERVER), str(checker), "/bin/true"])
    out = talk(server.port, b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland") + b"\r\n"
               b"MAIL FROM:<a@b>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n")
    assert b"235 " in out and b"\r\n250 ok " in out
    lines = seen.read_text().splitlines()
    assert len(lines) == 2  # checkpassword, then qmail-queue
    for line in lines:
        assert not ignored(line) & {signal.SIGPIPE, signal.SIGXFSZ}, line


# -- issue 15, item 7: lines are bounded; DATA is not a line ------------------
PEAK_RSS = """#!{python}
# runs qmail-esmtpd as its child and writes the child's peak RSS (KB) to a file
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "a") as f:
    f.write(f"{{usage.ru_maxrss}}\\n")
os._exit(os.waitstatus_to_exitcode(status))
"""


def send_and_read(port: int, data: bytes, timeout: float = 60) -> bytes:
    """Send `data` from a thread (the server may stop reading it), read until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sender = threading.Thread(target=_send_until_refused, args=(s, data), daemon=True)
        sender.start()
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # our unread bytes made the server's close an RST
            pass
        sender.join(timeout)
    return b"".join(chunks)


def test_96_mb_without_lf_gets_500_and_the_session_stays_small(tcpserver, tmp_path):
    peaks = tmp_path / "peak-rss"
    wrapper = write_program(tmp_path / "peak-rss.py", PEAK_RSS.format(python=sys.executable))
    server = tcpserver(":allow\n", argv=[str(wrapper), str(peaks), str(SERVER)])
    out = send_and_read(server.port, b"EHLO x\r\nNOOP " + b"x" * (96 << 20))
    assert out.endswith(b"\r\n500 line too long, closing connection (#5.5.2)\r\n"), out[-200:]
    log = server.wait_log("command line too long")
    assert f"command line too long ip=127.0.0.1: over {128 * 1024} bytes" in log
    assert "Traceback" not in log and "MemoryError" not in log
    deadline = time.monotonic() + 10  # a line each: tcpserver's start-up probe, then ours
    while len(peaks.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    peak_kb = max(map(int, peaks.read_text().split()))
    assert peak_kb < 30 * 1024, f"peak RSS {peak_kb} KB"


def test_an_auth_answer_over_12288_bytes_ends_the_session(tcpserver, tmp_path):
    checker = write_program(tmp_path / "checkpassword",
                            f"#!/bin/sh\nexec {sys.executable} {FAKE_CHECKPASSWORD} \"$@\"\n")
    server = tcpserver(":allow\n", env={"AUTHFAILDELAY": "0"},
                       argv=[str(SERVER), str(checker), "/bin/true"])
    fits = base64.b64encode(b"alice").ljust(12288 - 2, b"=")  # not base64 any more: a 501
    out = send_and_read(server.port, b"AUTH LOGIN\r\n" + fits + b"\r\n"
                        b"AUTH LOGIN\r\n" + b"A" * 12289 + b"\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:] == [
        b"334 VXNlcm5hbWU6", b"501 malformed auth input (#5.5.4)", b"334 VXNlcm5hbWU6",
        b"500 auth exchange line too long, closing connection (#5.5.6)", b""]
    assert "auth line too long ip=127.0.0.1: over 12288 bytes" in server.wait_log("too long")


def test_pipelined_commands_and_a_data_line_longer_than_any_command(tcpserver, queue):
    """The bound is for commands: a message line of 1 MB (four times the
    command bound) streams through as before, and pipelining is unchanged."""
    server = tcpserver(RELAY_LOCALHOST)
    long_line = b"y" * (1 << 20)
    out = send_and_read(server.port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@example.com>\r\n"
                        b"DATA\r\n" + long_line + b"\r\n.\r\nNOOP " + b"n" * 100_000 + b"\r\n"
                        b"QUIT\r\n")
    assert re.search(rb"\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n250 ok \d+ qp \d+\r\n"
                     rb"250 ok\r\n221 mx.example.com\r\n$", out), out[-300:]
    (run,) = queue.queued()
    assert run["message"].endswith(b"\n" + long_line + b"\n")



def test_long_recipients_get_qmails_verdict(tcpserver, control, tmp_path):
    """Addresses just under qmail's 900 bytes, of dots and dashes: rcpthosts,
    virtualdomains, users/cdb and the .qmail search give qmail's answers
    (the search only asks for names that can exist; bench has the cost)."""
    (control / "rcpthosts").write_text("example.com\n.example.org\n")
    (control / "locals").write_text("example.com\n")
    (control / "virtualdomains").write_text("virt.example.org:joe\n")
    (control / "checkrecipients").write_text("1\n")
    home = tmp_path / "home"
    home.mkdir()
    users = tmp_path / "users"
    users.mkdir()
    nobody = pwd.getpwnam("nobody")  # qmail-lspawn defers a uid-0 entry: not for root
    (users / "assign").write_text(f"+:joe:{nobody.pw_uid}:{nobody.pw_gid}:{home}:-::\n.\n")
    compile_users(users / "assign", users / "cdb")
    server = tcpserver(":allow\n", env={"QMAIL_HOME": str(tmp_path)})  # users/cdb under it
    commands = (b"MAIL FROM:<a@b>\r\n"
                b"RCPT TO:<a@" + b"." * 890 + b">\r\n"
                b"RCPT TO:<a@" + b"x." * 440 + b"example.org>\r\n"
                b"RCPT TO:<a" + b"-" * 880 + b"@example.com>\r\n"
                b"RCPT TO:<a" + b"-x" * 430 + b"@virt.example.org>\r\nQUIT\r\n")
    unknown = b"550 sorry, no mailbox here by that name (#5.1.1)"
    assert talk(server.port, commands).split(b"\r\n")[1:] == [
        b"250 ok",
        b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        b"250 ok",  # ours by rcpthosts, neither local nor virtual: remote to qmail
        unknown, unknown,  # no .qmail file in the home matches
        b"221 mx.example.com", b""]
    (home / ".qmail-default").write_text("./Maildir/\n")  # the shortest candidate
    assert talk(server.port, commands).split(b"\r\n")[4:6] == [b"250 ok", b"250 ok"]
    assert "Traceback" not in server.log() and "internal error" not in server.log()
