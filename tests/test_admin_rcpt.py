"""`qmail-esmtpd-user rcpt ADDRESS`: the server's answer to RCPT with recipient
checking on, and qmail's rule, from the control files alone (no database)."""

import pwd
import subprocess

import pytest
from test_admin import COMMAND

from harness.files import compile_users


@pytest.fixture
def home(tmp_path):
    """A qmail home: example.com local, users/assign sending every local part to
    one home with a .qmail-sales, trap@ in badrcptto."""
    control = tmp_path / "control"
    control.mkdir()
    for name, text in (("me", "mx.example.com"), ("rcpthosts", "example.com"),
                       ("locals", "example.com"), ("badrcptto", "trap@example.com")):
        (control / name).write_text(text + "\n")
    mailbox = tmp_path / "joe"
    mailbox.mkdir()
    (mailbox / ".qmail-sales").write_text("./Maildir/\n")
    (tmp_path / "users").mkdir()
    nobody = pwd.getpwnam("nobody")  # qmail-lspawn never delivers as root
    (tmp_path / "users" / "assign").write_text(
        f"+joe-:joe:{nobody.pw_uid}:{nobody.pw_gid}:{mailbox}:-::\n.\n")
    compile_users(tmp_path / "users" / "assign", tmp_path / "users" / "cdb")
    return tmp_path


def rcpt(home, address: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, "rcpt", address], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "QMAIL_HOME": str(home)})


@pytest.mark.parametrize("address, status, reply, rule", [
    ("joe-sales@example.com", 0, "250 ok", "qmail: delivered"),
    ("joe-nothing@example.com", 1, "550 sorry, no mailbox here by that name (#5.1.1)",
     "qmail: unknown"),
    ("trap@example.com", 1, "553 sorry, mail to that recipient is not accepted (#5.7.1)",
     "qmail: "),
    ("someone@elsewhere.example", 1,
     "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", "qmail: remote"),
])
def test_the_reply_and_the_rule(home, address, status, reply, rule):
    out = rcpt(home, address)
    lines = out.stdout.splitlines()
    assert (out.returncode, lines[0]) == (status, reply), out
    assert lines[1].startswith(rule), out
    assert out.stderr == ""


def test_unreadable_controls_are_one_line_not_a_traceback(home):
    (home / "control" / "locals").unlink()
    (home / "control" / "locals").mkdir()
    out = rcpt(home, "joe@example.com")
    assert out.returncode == 2 and "unable to read controls" in out.stderr
    assert "Traceback" not in out.stderr
