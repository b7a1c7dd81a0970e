"""The conformance kit itself (tests/conformance): the runner must be able to fail,
must read and show bytes exactly, and the qmail-queue and checkpassword stand-ins
must answer like the programs they replace.  The real conformance run is
`make conformance`."""

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.files import write_program
from harness.paths import FAKE_CHECKPASSWORD, FAKE_QUEUE, ROOT

KIT = ROOT / "tests" / "conformance"
SCENARIO = KIT / "scenarios" / "001-greeting-default.scn"


def load_runner():
    spec = importlib.util.spec_from_file_location("conformance_dialog", KIT / "dialog.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dialog = load_runner()


def run_dialog(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT / "dialog.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# A server that gets the protocol right but names the wrong host.
WRONG_SERVER = """#!/bin/sh
printf '220 wrong.example.org ESMTP\\r\\n'
while read -r line; do
    case $line in
        QUIT*) printf '221 wrong.example.org\\r\\n'; exit 0 ;;
        *) printf '250 wrong.example.org\\r\\n' ;;
    esac
done
"""

# Just enough SMTP to queue one message through $QMAILQUEUE, with a Received line.
QUEUEING_SERVER = """#!{python}
import os, subprocess, sys, time
def say(text):
    sys.stdout.write(text + "\\r\\n"); sys.stdout.flush()
say("220 tiny.example ESMTP")
rcpts, sender = [], ""
for line in sys.stdin:
    verb = line.strip()
    if verb.startswith("MAIL FROM:"):
        sender = verb[11:-1]; say("250 ok")
    elif verb.startswith("RCPT TO:"):
        rcpts.append(verb[9:-1]); say("250 ok")
    elif verb == "DATA":
        say("354 go ahead")
        body = "".join(iter(lambda: sys.stdin.readline().replace("\\r\\n", "\\n"), ".\\n"))
        stamp = time.strftime("%d %b %Y %H:%M:%S", time.gmtime())
        received = "Received: from tiny\\n  by tiny.example with SMTP; " + stamp + " -0000\\n"
        read, write = os.pipe()
        queue = subprocess.Popen([os.environ["QMAILQUEUE"]], stdin=subprocess.PIPE, stdout=read)
        os.close(read)
        queue.stdin.write((received + body).encode()); queue.stdin.close()
        envelope = "F" + sender + "\\0" + "".join("T" + r + "\\0" for r in rcpts) + "\\0"
        os.write(write, envelope.encode()); os.close(write)
        queue.wait()
        say("250 ok %d qp %d" % (time.time(), os.getpid()))
    elif verb == "QUIT":
        say("221 tiny.example"); sys.exit(0)
    else:
        say("250 ok")
"""

QUEUEING_SCENARIO = """title: one message
> HELO client.example.net
> MAIL FROM:<a@client.example.net>
> RCPT TO:<b@example.com>
> DATA
| Subject: x
|
| body
> .
> QUIT
"""


def test_a_wrong_server_fails_the_check(tmp_path: Path):
    server = write_program(tmp_path / "wrong-server", WRONG_SERVER)
    result = run_dialog("--check", KIT / "golden", SCENARIO, "--", server)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "DIFFER  001-greeting-default" in lines
    assert "-S: 220 mx.example.com ESMTP" in lines
    assert "+S: 220 wrong.example.org ESMTP" in lines
    assert lines[-1] == "1 scenario(s), 1 failed"


def test_a_missing_golden_transcript_fails(tmp_path: Path):
    server = write_program(tmp_path / "wrong-server", WRONG_SERVER)
    result = run_dialog("--check", tmp_path, SCENARIO, "--", server)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["MISSING 001-greeting-default",
                                          "1 scenario(s), 1 failed"]


def test_a_recorded_transcript_checks_clean_and_normalises_times(tmp_path: Path):
    server = write_program(tmp_path / "tiny-server", QUEUEING_SERVER.format(python=sys.executable))
    (tmp_path / "scn").mkdir()
    (tmp_path / "scn" / "one.scn").write_text(QUEUEING_SCENARIO)
    recorded = run_dialog("--out", tmp_path / "golden", tmp_path / "scn", "--", server)
    assert recorded.returncode == 0, recorded.stderr
    text = (tmp_path / "golden" / "one.txt").read_text()
    assert "S: 250 ok <TIME> qp <PID>" in text.splitlines()
    assert text.endswith("== qmail-queue run 1: exit 0\nQ: F <a@client.example.net>\n"
                         "Q: T <b@example.com>\nM: Received: from tiny\n"
                         "M:   by tiny.example with SMTP; <DATE> -0000\nM: Subject: x\nM:\n"
                         "M: body\n")
    checked = run_dialog("--check", tmp_path / "golden", tmp_path / "scn", "--", server)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines() == ["ok      one", "1 scenario(s), 0 failed"]


def test_usage_errors_exit_2():
    assert run_dialog(SCENARIO).returncode == 2  # no `--`
    assert run_dialog(SCENARIO, "--").returncode == 2  # no server command


@pytest.mark.parametrize("text, data", [
    (r"plain ü", "plain ü".encode()),
    (r"\r\n\t\0\\", b"\r\n\t\0\\"),
    (r"\x41\xfF", b"A\xff"),
    (r"<\{3:ab\x7d}>", b"<ab}ab}ab}>"),
    (r"\{2:\r\n}", b"\r\n\r\n"),
    (r"\{0:x}", b""),
])
def test_unescape(text, data):
    assert dialog.unescape(text) == data


@pytest.mark.parametrize("text", ["\\", r"\q", r"\x4", r"\{x:a}", r"\{3:abc"])
def test_unescape_rejects(text):
    with pytest.raises(dialog.ScenarioError):
        dialog.unescape(text)


@pytest.mark.parametrize("data, shown", [
    (b"HELO x", "HELO x"),
    (b"a  ", "a \\x20"),
    (b"\\\x00\x7f\xe9", "\\\\\\0\\x7f\\xe9"),
    (b"n" * 15, "n" * 15),
    (b"<" + b"n" * 16 + b">", "<\\{16:n}>"),
    (b"}" * 20, "\\{20:\\x7d}"),
    (b" " * 20, "\\{20: }"),
])
def test_show(data, shown):
    assert dialog.show(data) == shown
    if "\\{" in shown or data.isascii() and data.isalpha():
        assert dialog.unescape(shown) == data  # what is shown can be sent back


def test_line_endings_stay_visible():
    pieces = dialog.split_lines(b"a\r\nb\nc\r")
    assert pieces == [(b"a", b"\r\n"), (b"b", b"\n"), (b"c\r", b"")]
    assert [dialog.transcript_line("S", *p) for p in pieces] == ["S: a", "S: b\\n", "S~ c\\r"]
    assert dialog.transcript_line("C", b"", b"\r\n") == "C:"
    assert dialog.message_line(b"x", b"\r\n") == "M: x\\r"


def test_repeats_are_folded_from_three():
    lines = ["a", "a", "b", "b", "b", "b"]
    folded = ["a", "a", "b", "  ... previous line repeated 3 more times"]
    assert dialog.fold_repeats(lines) == folded


def test_normalisation_accepts_only_times_within_the_run():
    now = time.time()
    window = dialog.Window(now, now)
    assert dialog.normalise_reply(b"250 ok %d qp 77" % now, window) == b"250 ok <TIME> qp <PID>"
    bad = b"250 ok <BAD-TIME:1000> qp <PID>"
    assert dialog.normalise_reply(b"250 ok 1000 qp 77", window) == bad
    assert dialog.normalise_reply(b"250 ok 1000 qp 77 ", window) == b"250 ok 1000 qp 77 "
    stamp = time.strftime("%d %b %Y %H:%M:%S", time.gmtime(now)).encode()
    message = b"Received: x\n  by mx; " + stamp + b" -0000\n  by mx; " + stamp + b" -0000\n"
    assert dialog.normalise_message(message, window) == (
        b"Received: x\n  by mx; <DATE> -0000\n  by mx; " + stamp + b" -0000\n")
    old = b"Received: x\n  by mx; 1 Jan 2001 00:00:00 -0000\n"
    assert b"<BAD-DATE:1 Jan 2001 00:00:00>" in dialog.normalise_message(old, window)


def test_scenario_parsing(tmp_path: Path):
    path = tmp_path / "x.scn"
    path.write_text("# comment\ntitle:  spaced  \n>  two blanks\n>~ raw\n|\n< 2\nclose\n"
                    "env A=\\x01\nunset B\ncontrol me a\ncontrol me b\nnocontrol rcpthosts\n"
                    "control-raw c x\\0\nqueue-exit 1,2\narg {checkpassword}\nsleep 0.5\n")
    scenario = dialog.parse_scenario(path)
    assert scenario.name == "x" and scenario.title == "spaced"
    assert scenario.steps == [("send", b" two blanks\r\n"), ("read", 1), ("send", b"raw"),
                              ("read", 1), ("send", b"\r\n"), ("read", 2), ("close", None),
                              ("sleep", 0.5)]
    assert scenario.env == {"A": b"\x01"} and scenario.unset == {"B"}
    assert scenario.control == {"me": b"a\nb\n", "rcpthosts": None, "c": b"x\0"}
    assert scenario.queue_exit == "1,2" and scenario.args == ["{checkpassword}"]
    for bad in (">no blank", "frobnicate", "< many"):
        path.write_text(bad + "\n")
        with pytest.raises(dialog.ScenarioError, match="x.scn:1"):
            dialog.parse_scenario(path)


def fake_queue(tmp_path: Path, message: bytes, envelope: bytes, **env: str):
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "envelope").write_bytes(envelope)
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir(exist_ok=True)
    with open(tmp_path / "message", "rb") as fd0, open(tmp_path / "envelope", "rb") as fd1:
        status = subprocess.run([sys.executable, str(FAKE_QUEUE)], stdin=fd0, stdout=fd1,
                                env={**os.environ, "FAKEQUEUE_DIR": str(queue_dir), **env},
                                timeout=30).returncode
    newest = sorted(queue_dir.glob("*.json"))[-1]
    return status, json.loads(newest.read_text())


@pytest.mark.parametrize("envelope, status, sender, recipients", [
    (b"Fa@x\0Tb@y\0Tc@z\0\0", 0, "a@x", ["b@y", "c@z"]),
    (b"F\0Tb@y\0\0", 0, "", ["b@y"]),
    (b"", 54, None, []),
    (b"Fa@x", 54, None, []),
    (b"Fa@x\0Tb@y\0", 54, "a@x", ["b@y"]),
    (b"Fa@x\0Tb@", 54, "a@x", []),
    (b"Xa@x\0\0", 91, None, []),
    (b"Fa@x\0Tb@y\0Xc\0\0", 91, "a@x", ["b@y"]),
])
def test_fake_queue_judges_envelopes_like_qmail_queue(tmp_path, envelope, status, sender,
                                                      recipients):
    got, record = fake_queue(tmp_path, b"Subject: s\n\nhi\n", envelope, FAKEQUEUE_EXIT="0")
    assert got == status and record["exit"] == status
    assert record["envelope_complete"] is (status == 0)
    assert (record["sender"], record["recipients"]) == (sender, recipients)
    assert base64.b64decode(record["message_b64"]) == b"Subject: s\n\nhi\n"
    assert base64.b64decode(record["envelope_b64"]) == envelope


def test_fake_queue_takes_one_exit_status_per_run(tmp_path: Path):
    runs = [fake_queue(tmp_path, b"m\n", b"Fa\0Tb\0\0", FAKEQUEUE_EXIT="0, 71,81")
            for _ in range(4)]
    assert [(status, record["seq"]) for status, record in runs] == [(0, 1), (71, 2), (81, 3),
                                                                     (81, 4)]


def checkpassword(tmp_path: Path, request: bytes | None, *program: str, **env: str) -> int:
    """Run the stand-in with request on fd 3 (None: no fd 3 at all)."""
    (tmp_path / "request").write_bytes(request or b"")
    redirect = '3<"$REQUEST"' if request is not None else "3<&-"
    command = f'exec "$0" "$@" {redirect}'
    return subprocess.run(["sh", "-c", command, sys.executable, str(FAKE_CHECKPASSWORD),
                           *program], env={**os.environ, "REQUEST": str(tmp_path / "request"),
                                           **env}, timeout=30).returncode


def test_fake_checkpassword(tmp_path: Path):
    assert checkpassword(tmp_path, b"alice\0wonderland\0\0", "/bin/true") == 0
    assert checkpassword(tmp_path, b"bob@example.com\0s3cret\0\0") == 0
    assert checkpassword(tmp_path, b"alice\0wonderland\0\0", "/bin/false") == 1
    assert checkpassword(tmp_path, b"alice\0Wonderland\0\0", "/bin/true") == 1
    assert checkpassword(tmp_path, b"carol\0x\0\0", "/bin/true") == 1
    assert checkpassword(tmp_path, b"alice\0wonderland", "/bin/true") == 2
    assert checkpassword(tmp_path, None, "/bin/true") == 2
    assert checkpassword(tmp_path, b"carol\0x\0\0", "/bin/true", FAKEAUTH_USERS="carol:x") == 0
    challenge = b"<1.2@mx.example.com>"
    digest = hmac.new(b"wonderland", challenge, hashlib.md5).hexdigest().upper().encode()
    assert checkpassword(tmp_path, b"alice\0" + digest + b"\0" + challenge + b"\0") == 0
    assert checkpassword(tmp_path, b"alice\0wonderland\0" + challenge + b"\0") == 1
