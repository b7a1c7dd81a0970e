"""tests/pop3/qmail-popup, the stand-in for qmail's qmail-popup, against the
transcripts recorded from the real one (notqmail's, built from source) in
tests/pop3/golden/: what the client sees, what the checkpassword program gets
(its arguments, its fd 3), and the exit status.

Each scenario sends its client lines at once, closes the input and reads to
the end, so the transcript does not depend on timing.  The greeting's
`<pid.time@host>` is written as `<PID.TIME@host>`.

To record again with a real qmail-popup:

    python3 tests/test_popup.py --out tests/pop3/golden /path/to/qmail-popup

and `QMAIL_POPUP=/path/to/qmail-popup` makes this test check that one too.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "pop3"
STAND_IN = HERE / "qmail-popup"
FAKE_CHECKPASSWORD = HERE / "fake-checkpassword"
GOLDEN = HERE / "golden"
HOST = "pop.example.com"
DIGEST = "c4c9334bac560ecc979e58001b3e22fb"  # RFC 1939's example

# name -> (client lines, what the checkpassword program does)
SCENARIOS: dict[str, tuple[list[bytes], str]] = {
    "greeting-quit": ([b"QUIT\r\n"], "1"),
    "end-of-input": ([], "1"),
    "user-pass-ok": ([b"USER alice\r\n", b"PASS right one\r\n", b"STAT\r\n"], "0"),
    "user-pass-bad": ([b"USER alice\r\n", b"PASS wrong\r\n", b"QUIT\r\n"], "1"),
    "user-pass-111": ([b"USER alice\r\n", b"PASS secret\r\n"], "111"),
    "user-pass-2": ([b"USER alice\r\n", b"PASS secret\r\n"], "2"),
    "user-pass-crash": ([b"USER alice\r\n", b"PASS secret\r\n"], "crash"),
    "apop-bad": ([b"APOP alice " + DIGEST.encode() + b"\r\n"], "1"),
    "apop-ok": ([b"APOP alice " + DIGEST.encode() + b"\r\n"], "0"),
    "apop-syntax": ([b"APOP alice\r\n", b"APOP\r\n", b"QUIT\r\n"], "1"),
    "apop-extra-spaces": ([b"apop   alice  " + DIGEST.encode() + b"\r\n"], "1"),
    "before-login": ([b"STAT\r\n", b"LIST\r\n", b"CAPA\r\n", b"RETR 1\r\n", b"NOOP\r\n",
                      b"noop x\r\n", b"QUIT\r\n"], "1"),
    "pass-first": ([b"PASS secret\r\n", b"USER\r\n", b"USER alice\r\n", b"PASS\r\n",
                    b"QUIT\r\n"], "1"),
    "second-user-wins": ([b"USER alice\r\n", b"USER bob\r\n", b"PASS secret\r\n"], "1"),
    "lowercase-lf-spaces": ([b"user  alice\n", b"pass   pass with  spaces \n"], "1"),
    "nul-in-line": ([b"USER al\0ice\r\n", b"PASS se\0cret\r\n"], "1"),
}


def escape(data: bytes) -> str:
    """Bytes as one printable line: backslash escapes for CR, LF, NUL and others."""
    out = []
    for byte in data:
        char = chr(byte)
        if char == "\\":
            out.append("\\\\")
        elif char in "\r\n\0":
            out.append({"\r": "\\r", "\n": "\\n", "\0": "\\0"}[char])
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def normalised(text: str) -> str:
    return re.sub(r"<\d+\.\d+@", "<PID.TIME@", text)


def play(popup: str, name: str) -> str:
    """One scenario against `popup`: its transcript."""
    lines, status = SCENARIOS[name]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "checkpassword.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAKECP_LOG": str(log),
               "FAKECP_STATUS": status}
        done = subprocess.run([popup, HOST, str(FAKE_CHECKPASSWORD), "subprogram", "Maildir"],
                              input=b"".join(lines), capture_output=True, env=env, timeout=60,
                              cwd=tmp)
        runs = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
    out = [f"# scenario: {name}", f"# checkpassword: {status}"]
    out += [f"C: {escape(line)}" for line in lines]
    out += [f"S: {escape(line)}" for line in done.stdout.splitlines(keepends=True)]
    for run in runs:
        out.append(f"A: {' '.join(run['argv'])}")
        out.append(f"F: {escape(run['fd3'].encode('latin-1'))}")
    out.append(f"exit: {done.returncode}")
    return normalised("\n".join(out) + "\n")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_stand_in_says_what_qmail_popup_said(name):
    assert play(str(STAND_IN), name) == (GOLDEN / f"{name}.txt").read_text()


@pytest.mark.skipif("QMAIL_POPUP" not in os.environ, reason="QMAIL_POPUP names no real one")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_real_qmail_popup_still_says_it(name):
    assert play(os.environ["QMAIL_POPUP"], name) == (GOLDEN / f"{name}.txt").read_text()


def test_the_greeting_carries_a_fresh_timestamp():
    """<pid.time@host>: the pid of the process, the time now (APOP digests use it)."""
    done = subprocess.run([str(STAND_IN), HOST, "/bin/false"], input=b"", capture_output=True,
                          timeout=60)
    found = re.fullmatch(rb"\+OK <(\d+)\.(\d+)@pop\.example\.com>\r\n", done.stdout)
    assert found, done.stdout


def test_no_arguments_is_a_usage_error():
    for argv in ([], [HOST]):
        done = subprocess.run([str(STAND_IN), *argv], input=b"", capture_output=True,
                              timeout=60)
        assert done.stdout == b"-ERR usage: popup hostname subprogram\r\n"
        assert done.returncode == 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--out":
        sys.exit("usage: test_popup.py --out DIR QMAIL-POPUP")
    folder = Path(sys.argv[2])
    folder.mkdir(exist_ok=True)
    for scenario in sorted(SCENARIOS):
        (folder / f"{scenario}.txt").write_text(play(sys.argv[3], scenario))
