"""qmail-spp plugins through real tcpserver, with plugins of the kind admins
run (tests/spp/: a greylisting plugin, an RCPT check in shell, a Python
plugin that adds a header) and the patch's commands one by one."""

import errno
import os
import secrets
import signal
import smtplib
import socket
import time
from pathlib import Path

import pytest
from test_auth import ALICE, ALICE_PW, login

from qmail_esmtpd import check_spp

from harness.files import write_program
from harness.frontend import LOOPBACK
from harness.processes import imported_modules, talk

PLUGINS = Path(__file__).resolve().parent / "spp"
MESSAGE = b"Subject: spp\r\n\r\nhello\r\n"


@pytest.fixture
def plugins(control: Path):
    """Write control/smtpplugins from text."""
    def write(text: str) -> Path:
        path = control / "smtpplugins"
        path.write_text(text)
        return path
    return write


def send(port: int, rcpts: list[str], sender: str = "a@example.net") -> dict:
    """One transaction: each RCPT's (code, text), and DATA's if any was accepted."""
    out = {}
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.ehlo("client.example.net")
        code, text = client.mail(sender)
        out["MAIL"] = (code, text)
        if code != 250:
            return out
        for rcpt in rcpts:
            out[rcpt] = client.rcpt(rcpt)
        if any(reply[0] == 250 for key, reply in out.items() if key != "MAIL"):
            out["DATA"] = client.data(MESSAGE)
    return out


def test_greylisting_plugin_defers_the_first_attempt_and_passes_the_retry(
        tcpserver, plugins, queue, tmp_path):
    state = tmp_path / "greylist"
    state.mkdir(mode=0o777)  # the warm server's sessions (test_forkserver_suites) run as nobody
    state.chmod(0o777)
    plugins(f"[rcpt]\n{PLUGINS / 'greylist'}\n")
    server = tcpserver(env={"GREYLIST_DIR": str(state), "GREYLIST_DELAY": "300"})
    first = send(server.port, ["u@example.com"])
    assert first["u@example.com"] == (451, b"greylisted, please try again later (#4.7.1)")
    assert "DATA" not in first
    assert send(server.port, ["u@example.com"])["u@example.com"][0] == 451  # too soon
    [triplet] = state.iterdir()
    triplet.write_text(f"{int(time.time()) - 301}\n")  # as if first seen 301 s ago
    retry = send(server.port, ["u@example.com"])
    assert retry["u@example.com"][0] == 250 and retry["DATA"][0] == 250
    assert send(server.port, ["v@example.com"])["v@example.com"][0] == 451  # another triplet
    assert [r["recipients"] for r in queue.queued()] == [["u@example.com"]]
    assert f"greylisted {LOOPBACK} <a@example.net> <u@example.com>" in server.log()  # its stderr


def test_rcpt_check_in_shell_refuses_and_redirects(tcpserver, plugins, queue, tmp_path):
    blocklist = tmp_path / "blocklist"
    blocklist.write_text("Blocked@example.com\n")
    plugins(f"[rcpt]\n{PLUGINS / 'rcpt-blocklist'}\n")
    server = tcpserver(env={"RCPT_BLOCKLIST": str(blocklist)})
    out = send(server.port, ["blocked@example.com", "abuse@example.com", "u@example.com",
                             "u@elsewhere.org"])
    assert out["blocked@example.com"] == (
        550, b"sorry, mail to <blocked@example.com> is blocked here (#5.7.1)")
    assert out["abuse@example.com"][0] == 250
    assert out["u@elsewhere.org"][0] == 553  # N: qmail's own rcpthosts still applies
    assert queue.queued()[0]["recipients"] == ["abuse-trap@example.com", "u@example.com"]
    assert f"blocked recipient <blocked@example.com> from {LOOPBACK}" in server.log()


def test_header_plugin_and_variables_reach_later_plugins_and_qmail_queue(
        tcpserver, plugins, queue, tmp_path):
    seen = queue.dir / "seen"  # a folder the sessions' user may write in
    wrapper = write_program(tmp_path / "queue-wrapper",
                            f'#!/bin/sh\necho "SPP_SEEN=$SPP_SEEN" > {seen}\n'
                            f'exec {queue.program}\n')
    plugins(f"[mail]\n{PLUGINS / 'add-header'}\n"
            '[data]\n:[ "$SPP_SEEN" = 1 ] && echo "HX-Seen-By-Data: yes"\n')
    server = tcpserver(env={"QMAILQUEUE": str(wrapper)})
    assert send(server.port, ["u@example.com"])["DATA"][0] == 250
    message = queue.queued()[0]["message"]
    lines = message.split(b"\n")
    assert lines[0].startswith(b"Received: from ") and lines[1].startswith(b"  by ")
    assert lines[2:5] == [b"X-Spp-Checked: helo=client.example.net from=<a@example.net> "
                          b"ip=" + LOOPBACK.encode(), b"X-Seen-By-Data: yes", b"Subject: spp"]
    assert seen.read_text() == "SPP_SEEN=1\n"


def test_the_commands_one_by_one(tcpserver, plugins, control):
    plugins("[helo]\n:[ \"$SMTPHELOHOST\" = bad ] && echo 'E550 bad helo'\n"
            "[mail]\n"
            ":case \"$SMTPMAILFROM\" in later@*) echo 'LD554 refused at DATA';;"
            " skip@*) echo O;; esac\n"
            "[rcpt]\n"
            ":case \"$SMTPRCPTTO\" in drop@*) echo 'R421 go away';; quiet@*) echo D;;"
            " ok@*) echo O;; count@*) echo \"E550 $SMTPRCPTCOUNT/$SMTPRCPTCOUNTALL/"
            "$SMTPRCPTHOSTSOK\";; talk@*) echo 'P250-first'; echo N;; off@*) echo A;; esac\n"
            "[rcpt]\n:echo 'E550 second plugin'\n")
    (control / "badmailfrom").write_text("skip@example.net\n")
    server = tcpserver()
    reply = talk(server.port, b"HELO bad\r\nHELO good\r\nMAIL FROM:<later@example.net>\r\n"
                 b"RCPT TO:<talk@example.com>\r\nDATA\r\nRSET\r\nMAIL FROM:<skip@example.net>\r\n"
                 b"RCPT TO:<count@example.com>\r\nRCPT TO:<ok@elsewhere.org>\r\n"
                 b"RCPT TO:<count@elsewhere.org>\r\nRCPT TO:<off@example.com>\r\n"
                 b"RCPT TO:<x@example.com>\r\nQUIT\r\n")
    assert reply.split(b"\r\n")[1:-1] == [
        b"550 bad helo", b"250 mx.example.com",
        b"250 ok",                      # MAIL later@ (its LD is kept for DATA)
        b"250-first", b"250 ok",        # P then N: no second plugin, qmail's 250
        b"554 refused at DATA",         # LD
        b"250 flushed",
        b"250 ok",                      # O at MAIL: badmailfrom not asked
        b"550 0/1/1",
        b"250 ok",                      # O: rcpthosts not asked
        b"550 1/3/0",
        b"250 ok",                      # A: plugins off for the session
        b"250 ok",
        b"221 mx.example.com"]
    assert talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<drop@example.com>\r\nNOOP\r\n"
                ).split(b"\r\n")[1:] == [b"250 ok", b"421 go away", b""]
    assert talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<quiet@example.com>\r\nNOOP\r\n"
                ).split(b"\r\n")[1:] == [b"250 ok", b""]


def test_a_nul_in_plugin_output_ends_the_line_as_in_the_patch(tcpserver, plugins):
    """A NUL ends a command where the patch's C string ends, so a variable name
    with one cannot reach posix_spawn (an internal error for the next plugin)."""
    plugins("[mail]\n:printf 'SV\\000W=1\\nHX-Nul: a\\000b\\n'\n"
            "[rcpt]\n:printf 'E550 no\\000pe\\n'\n")
    server = tcpserver()
    reply = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nNOOP\r\n")
    assert reply.split(b"\r\n")[1:] == [b"250 ok", b"550 no", b"250 ok", b""]
    assert "internal error" not in server.log()


def test_connect_plugins_can_replace_the_greeting_or_refuse(tcpserver, plugins):
    plugins(f"[connection]\n:[ \"$TCPREMOTEIP\" = {LOOPBACK} ] && echo 'R554 no service for you'\n")
    server = tcpserver()
    with socket.create_connection((LOOPBACK, server.port), timeout=20) as client:
        assert client.makefile("rb").read() == b"554 no service for you\r\n"


def test_a_plugin_that_cannot_run_hangs_or_floods_gets_451(tcpserver, plugins, control,
                                                           tmp_path):
    flood = write_program(tmp_path / "flood", "#!/bin/sh\nyes N | head -c 200000 | tr -d N\n"
                          "exec yes PXXXXXXXXXXXXXXXX\n")
    reader = write_program(tmp_path / "reader", "#!/bin/sh\nif read line; then echo \"E550 "
                           "read $line\"; else echo 'E550 stdin closed'; fi\n")
    plugins(f"[rcpt]\n:case \"$SMTPRCPTTO\" in hang@*) sleep 30;; esac\n"
            f"{tmp_path / 'missing-plugin'}\n")
    server = tcpserver(env={"SPPTIMEOUT": "1"})
    started = time.monotonic()
    reply = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<hang@example.com>\r\n"
                 b"RCPT TO:<x@example.com>\r\nQUIT\r\n")
    assert time.monotonic() - started < 20  # bounded: the plugin's sleep was 30 s
    lines = reply.split(b"\r\n")
    assert lines[2] == b"451 qmail-spp failure: :case \"$SMTPRCPTTO\" in hang@*) sleep 30;; " \
                       b"esac: timed out (#4.3.0)"
    assert lines[3] == (b"451 qmail-spp failure: " + str(tmp_path / "missing-plugin").encode()
                        + b": can't execute (#4.3.0)")
    assert "spp plugin" in server.wait_log("can't execute")
    plugins(f"[rcpt]\n{flood}\n")
    assert b"451 qmail-spp failure: " in talk(server.port, b"MAIL FROM:<a@b>\r\n"
                                               b"RCPT TO:<x@example.com>\r\nQUIT\r\n")
    plugins(f"[rcpt]\n{reader}\n")
    assert b"550 stdin closed\r\n" in talk(server.port, b"MAIL FROM:<a@b>\r\n"
                                            b"RCPT TO:<x@example.com>\r\nsecret\r\nQUIT\r\n")


def test_nospp_and_no_file_mean_no_plugins(tcpserver, plugins):
    plugins("[rcpt]\n:echo 'E550 plugin ran'\n")
    server = tcpserver(rules=':allow,NOSPP=""\n')
    assert b"550 plugin ran" not in talk(server.port, b"MAIL FROM:<a@b>\r\n"
                                         b"RCPT TO:<x@example.com>\r\nQUIT\r\n")


def test_plugins_in_a_file_named_by_sppconffile(tcpserver, tmp_path):
    conf = tmp_path / "other-plugins"
    conf.write_text("[mail]\n:echo 'E553 from SPPCONFFILE'\n")
    server = tcpserver(env={"SPPCONFFILE": str(conf)})
    assert b"553 from SPPCONFFILE" in talk(server.port, b"MAIL FROM:<a@b>\r\nQUIT\r\n")


def test_a_session_without_plugins_loads_none_of_their_code(control, plugins):
    env = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true"}
    session = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"
    assert "qmail_esmtpd.check_spp" not in imported_modules(env, session)
    plugins("[rcpt]\n:true\n")
    assert "qmail_esmtpd.check_spp" in imported_modules(env, session)


def processes_with(marker: str) -> list[int]:
    """Live processes with `marker` in their argv (a zombie's is empty)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return pids


def left_running(marker: str, grace: float = 2) -> list[int]:
    """The processes with `marker` still alive after `grace` seconds."""
    deadline = time.monotonic() + grace
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def test_a_plugin_ends_with_its_process_group(tcpserver, plugins, queue):
    """dash forks for `sleep; echo`: the timeout killed the shell alone and the
    sleep ran on (five sessions reached qmaild's process limit); a child sent
    to the background kept the pipe open, and the session waited the whole
    timeout for it."""
    hang, background, detached = (f"{n}.{secrets.randbelow(10**6):06d}" for n in (57, 58, 59))
    plugins("[rcpt]\n"
            f":case \"$SMTPRCPTTO\" in hang@*) sleep {hang}; echo N;;"
            f" bg@*) (sleep {background}; echo late) & echo 'HX-Before-Exit: yes'; echo N;;"
            f" detach@*) setsid -w sh -c 'sleep {detached} >/dev/null &'; echo N;; esac\n")
    server = tcpserver(env={"SPPTIMEOUT": "4"})
    try:
        started = time.monotonic()
        reply = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<bg@example.com>\r\nDATA\r\n"
                     b"Subject: bg\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert time.monotonic() - started < 2  # the plugin's exit, not the 4 s timeout
        assert reply.split(b"\r\n")[1:4] == [b"250 ok", b"250 ok", b"354 go ahead"]
        assert b"X-Before-Exit: yes\n" in queue.queued()[0]["message"]  # what it wrote
        assert left_running(background) == []  # its group ended with it
        reply = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<hang@example.com>\r\nQUIT\r\n")
        assert reply.split(b"\r\n")[2].endswith(b": timed out (#4.3.0)")
        assert left_running(hang) == []  # the shell's sleep too, not the shell alone
        reply = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<detach@example.com>\r\nQUIT\r\n")
        assert reply.split(b"\r\n")[2] == b"250 ok"
        assert len(processes_with(detached)) == 1  # as README says a plugin detaches work
    finally:
        for pid in processes_with(hang) + processes_with(background) + processes_with(detached):
            os.kill(pid, signal.SIGKILL)


def test_without_a_pidfd_the_plugins_exit_is_looked_for(monkeypatch):
    """Where Linux's pidfd is missing (an old kernel, a seccomp filter) the
    same bounds hold, by looking every POLL_SECONDS."""
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "no pidfd_open")
    monkeypatch.setattr(check_spp.posix, "pidfd_open", no_pidfd)
    background, hang = (f"{n}.{secrets.randbelow(10**6):06d}" for n in (57, 58))
    env = {b"PATH": os.environ["PATH"].encode()}
    try:
        started = time.monotonic()
        assert check_spp.run_program(b":(sleep %s) & echo N" % background.encode(), env,
                                     4) == (b"N\n", None)
        assert time.monotonic() - started < 2
        assert check_spp.run_program(b":sleep %s; echo N" % hang.encode(), env,
                                     1) == (b"", "timed out")
        assert left_running(background) == left_running(hang) == []
    finally:
        for pid in processes_with(background) + processes_with(hang):
            os.kill(pid, signal.SIGKILL)


def test_a_header_from_a_plugin_never_carries_a_carriage_return(tcpserver, plugins, queue):
    """The patch queues the client's CR inside a plugin's header line: a HELO
    with one, through `HX-Helo: $SMTPHELOHOST`, became a Bcc: header."""
    plugins('[mail]\n:echo "HX-Helo: $SMTPHELOHOST"; printf \'HX-Tab:\\ta\\v\\f\\033b\\n\'\n')
    server = tcpserver()
    talk(server.port, b"HELO foo\rBcc: victim@example.org\r\nMAIL FROM:<a@b>\r\n"
         b"RCPT TO:<u@example.com>\r\nDATA\r\nSubject: cr\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    head = queue.queued()[0]["message"].split(b"\n\n")[0].split(b"\n")
    assert head[2:] == [b"X-Helo: foo?Bcc: victim@example.org", b"X-Tab:\ta???b",
                        b"Subject: cr"]
    assert head[0].startswith(b"Received: from unknown (HELO foo?Bcc:?victim@")  # qmail's `?`
    log = server.wait_log("X-Tab")
    assert "spp plugin :echo" in log and "X-Helo:\\x20foo\\x0dBcc" in log


def test_plugins_after_auth_see_relayclient_and_tcpremoteinfo(db, tcpserver, plugins, queue):
    """As the AUTH patch sets them in qmail-smtpd's environment: a plugin that
    lets authenticated senders through (${RELAYCLIENT+...}) works."""
    db.add(ALICE, ALICE_PW)
    plugins('[rcpt]\n:if [ -z "${RELAYCLIENT+set}" ]; then echo "E550 not for you"; else'
            ' echo "HX-Auth: [$RELAYCLIENT] [$TCPREMOTEINFO]"; fi\n')
    server = tcpserver(env=db.env())
    with smtplib.SMTP(LOOPBACK, server.port, local_hostname="client.test", timeout=60) as c:
        c.ehlo()
        c.mail("a@client.test")
        assert c.rcpt("u@example.com") == (550, b"not for you")
        c.rset()
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", ["u@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    message = queue.queued()[0]["message"]
    assert message.split(b"\n")[2] == b"X-Auth: [] [alice]"
