"""End to end: qmail-esmtpd under real tcpserver, driven by smtplib, swaks and raw sockets."""

import re
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.files import write_program
from harness.frontend import LOOPBACK, RELAY_LOCALHOST
from harness.paths import SERVER
from harness.processes import talk

REPLY_LINE = re.compile(rb"^\d{3}[ -]")


def smtp(server) -> smtplib.SMTP:
    return smtplib.SMTP(LOOPBACK, server.port, local_hostname="client.test", timeout=30)


def test_a_rule_variable_with_an_empty_name_does_not_stop_delivery(tcpserver, queue):
    """tcprules takes `:allow,="x"` and tcpserver passes `=x` on; Python will not
    hand such a variable to qmail-queue, so it is left out, not every DATA lost."""
    server = tcpserver(':allow,="x",RELAYCLIENT=""\n')
    with smtp(server) as c:
        assert c.sendmail("a@client.test", ["b@elsewhere.org"], b"Subject: x\r\n\r\nx\r\n") == {}
    assert [m["recipients"] for m in queue.queued()] == [["b@elsewhere.org"]]
    assert "internal error" not in server.log() and "session failed" not in server.log()


def test_relaying_allowed_by_a_relayclient_rule(tcpserver, queue):
    server = tcpserver(RELAY_LOCALHOST)
    with smtp(server) as c:
        refused = c.sendmail("a@client.test", ["b@elsewhere.org"], b"Subject: relay\r\n\r\nhi\r\n")
    assert refused == {}
    (run,) = queue.queued()
    assert run["sender"] == "a@client.test" and run["recipients"] == ["b@elsewhere.org"]
    header = run["message"].split(b"\n")[:2]
    assert header[0] == b"Received: from unknown (HELO client.test) (%s)" % LOOPBACK.encode()
    assert header[1].startswith(b"  by localhost with SMTP; ")


def test_relaying_refused_without_a_rule(tcpserver, queue):
    server = tcpserver(":allow\n")
    with smtp(server) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("a@client.test", ["b@elsewhere.org"], b"Subject: x\r\n\r\nx\r\n")
        code, text = e.value.recipients["b@elsewhere.org"]
        assert code == 553 and b"allowed rcpthosts" in text
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: local\r\n\r\nx\r\n")
    assert [r["recipients"] for r in queue.queued()] == [["b@example.com"]]


def test_several_messages_in_one_session(tcpserver, queue):
    server = tcpserver(RELAY_LOCALHOST)
    with smtp(server) as c:
        for n in range(3):
            c.sendmail(f"s{n}@client.test", [f"r{n}@example.com", "x@y.org"],
                       f"Subject: {n}\r\n\r\n.leading dot {n}\r\n".encode())
    runs = queue.queued()
    assert [r["sender"] for r in runs] == ["s0@client.test", "s1@client.test", "s2@client.test"]
    assert all(r["message"].endswith(b"\n.leading dot %d\n" % n) for n, r in enumerate(runs))


def test_swaks(tcpserver, queue):
    server = tcpserver(RELAY_LOCALHOST)
    out = subprocess.run(
        ["swaks", "--server", LOOPBACK, "--port", str(server.port), "--from", "s@client.test",
         "--to", "r@elsewhere.org", "--helo", "swaks.test", "--header", "Subject: swaks"],
        capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode(errors="replace")
    assert re.search(rb"<- {2}250 ok \d+ qp \d+", out.stdout)
    (run,) = queue.queued()
    assert run["recipients"] == ["r@elsewhere.org"] and b"Subject: swaks" in run["message"]


SIZING_QUEUE = """#!{python}
# qmail-queue stand-in for big messages: counts bytes, and reads the peak
# memory (VmHWM) of its parent, qmail-esmtpd, once the message is in.
import hashlib, json, os
size, digest, head = 0, hashlib.sha256(), b""
while chunk := os.read(0, 1 << 20):
    size += len(chunk)
    digest.update(chunk)
    head = (head + chunk)[:4096] if len(head) < 4096 else head
with open("/proc/%d/status" % os.getppid()) as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
envelope = b""
while chunk := os.read(1, 65536):
    envelope += chunk
with open({out!r}, "w") as f:
    received = b"\\n".join(head.split(b"\\n")[:2]) + b"\\n"
    json.dump(dict(size=size, sha256=digest.hexdigest(), parent_hwm_kb=hwm,
                   received=received.decode("latin-1"),
                   envelope=envelope.decode("latin-1")), f)
"""


def test_50_mb_message_streams_with_bounded_memory(tcpserver, tmp_path):
    import hashlib
    import json
    result = tmp_path / "big.json"
    program = write_program(tmp_path / "sizing-queue",
                            SIZING_QUEUE.format(python=sys.executable, out=str(result)))
    server = tcpserver(RELAY_LOCALHOST, env={"QMAILQUEUE": str(program)})
    line = b"x" * 998 + b"\r\n"
    body = b"x" * 998 + b"\n"  # as queued
    count = 50 * 1024 * 1024 // len(body) + 1
    with socket.create_connection((LOOPBACK, server.port), timeout=60) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"MAIL FROM:<big@client.test>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        s.sendall(b"Subject: big\r\n\r\n")
        block = line * 64
        for _ in range(count // 64):
            s.sendall(block)
        s.sendall(line * (count % 64) + b".\r\n")
        final = f.readline()
    assert final.startswith(b"250 ok ")
    record = json.loads(result.read_text())
    received = record["received"].encode("latin-1")
    assert received.startswith(b"Received: from unknown (%s)\n  by localhost with SMTP; "
                               % LOOPBACK.encode())
    received += b"Subject: big\n\n"
    digest = hashlib.sha256(received)
    for _ in range(count):
        digest.update(body)
    assert record["size"] == len(received) + count * len(body) > 50 * 1024 * 1024
    assert record["sha256"] == digest.hexdigest()
    assert record["parent_hwm_kb"] < 40 * 1024, record  # streamed, not buffered
    assert record["envelope"] == "Fbig@client.test\0Tr@example.com\0\0"


def test_client_dropping_mid_data_queues_nothing(tcpserver, queue):
    server = tcpserver(RELAY_LOCALHOST)
    with socket.create_connection((LOOPBACK, server.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        s.sendall(b"Subject: cut\r\n\r\nhalf a message\r\n")
        s.shutdown(socket.SHUT_RDWR)  # the makefile() reference would keep it open
    runs = queue.wait_runs(1)
    assert len(runs) == 1, "qmail-queue should have run and seen no envelope"
    assert not runs[0]["envelope_complete"] and runs[0]["exit"] != 0
    assert queue.queued() == []


ABUSE = [
    bytes(range(256)) * 40 + b"\r\n",
    b"MAIL FROM:<" + b"\xff\xfe" * 3000 + b">\r\n",
    b"\0\0\0\r\n",
    b"HELO " + b"\xe2\x98\x83" * 1000 + b"\r\nMAIL FROM:<\x01@\x02>\r\nRCPT TO:<\r\n",
    b"RCPT TO:<a@[999.999.999.999]>\r\nMAIL FROM:<a@[127.0.0.1]>\r\n",
    b"MAIL FROM:<a@b>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nbare\nlf\r\n",
]


@pytest.mark.parametrize("junk", ABUSE)
def test_bad_input_gets_smtp_replies_never_a_traceback(tcpserver, junk):
    server = tcpserver(RELAY_LOCALHOST)
    out = talk(server.port, junk + b"QUIT\r\n")
    assert b"Traceback" not in out and b"Error" not in out
    lines = out.split(b"\r\n")
    assert lines[-1] == b"" and lines[0].startswith(b"220 ")
    assert all(REPLY_LINE.match(line) for line in lines[:-1]), out[:500]


def test_unreadable_controls_give_421_not_a_traceback(tcpserver, control):
    (control / "me").unlink()
    (control / "me").mkdir()  # reading it fails with EISDIR
    server = tcpserver(RELAY_LOCALHOST)
    # nothing is sent: qmail-smtpd too dies before reading, and unread input means a RST
    assert talk(server.port, b"") == b"421 unable to read controls (#4.3.0)\r\n"


def test_missing_queue_program_gives_451(tcpserver, tmp_path):
    server = tcpserver(RELAY_LOCALHOST, env={"QMAILQUEUE": str(tmp_path / "nonexistent")})
    out = talk(server.port, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
                            b"Subject: x\r\n\r\n.\r\nQUIT\r\n")
    assert b"\r\n451 unable to exec qq (#4.3.0)\r\n221 " in out


def test_timeout_ends_the_session(tcpserver, control):
    (control / "timeoutsmtpd").write_text("1\n")
    server = tcpserver(RELAY_LOCALHOST)
    start = time.monotonic()
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        assert f.readline() == b"451 timeout (#4.4.2)\r\n"
        assert f.readline() == b""
    assert time.monotonic() - start < 5


def test_server_is_the_installed_launcher():
    first = Path(SERVER).read_text().splitlines()[0]
    assert first.endswith(" -IS") and "/shims/" not in first and "/env " not in first
