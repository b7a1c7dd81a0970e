"""End to end: Debian's Dovecot with a `checkpassword` passdb pointing at
qmail-esmtpd-checkpassword, Python's poplib as the client.

The test starts `dovecot -F -c CONF` as root with a throwaway configuration
(its own base_dir, log and loopback port) built from DOVECOT_CONF, the very
text README.md shows (the test checks they agree).  The user is made with
qmail-esmtpd-user (`add`, then `set` for its sysuser and dir).
"""

import os
import poplib
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_admin import COMMAND as ADMIN
from test_pop3 import ENTRY, SYSUSER, new_home

from support import (
    ROOT,
    StartError,
    end_group,
    free_port,
    wait_listening,
    world_readable_dir,
    write_launcher,
)

PASSWORD = "Dovecot-and-qmail 2026"

# The POP3 part of the configuration, as README.md shows it; the test adds
# only its own paths and port (base_dir, log_path, the listener's port).
DOVECOT_CONF = """\
protocols = pop3
listen = 127.0.0.1
mail_location = maildir:~/Maildir
# the program reads control/authdb from here (Dovecot clears the environment)
import_environment = $import_environment QMAIL_CONTROL=@CONTROL@
# Dovecot waits auth_failure_delay (2 s) itself: control/authfaildelay is 0
passdb {
  driver = checkpassword
  args = @PROGRAM@
}
userdb {
  driver = prefetch
}
# Dovecot's auth user runs the program: root in the test, whose interpreter
# and database socket only root may use
service auth {
  user = root
}
"""


def readme_conf() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- dovecot.conf as tested -->\n+((?:    .*\n|\n)+)", text)
    assert found, "README.md lacks the Dovecot configuration"
    return "".join(line[4:] + "\n" for line in found.group(1).rstrip().splitlines())


class Dovecot:
    """dovecot -F with DOVECOT_CONF in a temp dir, listening on a loopback port."""

    def __init__(self, program: Path, control: Path) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(binary):
            pytest.fail("dovecot is not installed; tools/install-deps installs dovecot-core")
        self.base = world_readable_dir("qmail-esmtpd-dovecot-")  # for dovenull, its logins
        self.port = free_port()
        conf = DOVECOT_CONF.replace("@PROGRAM@", str(program)).replace(
            "@CONTROL@", str(control))
        conf = (f"base_dir = {self.base}/run\nstate_dir = {self.base}/state\n"
                f"log_path = {self.base}/dovecot.log\nssl = no\n"
                "disable_plaintext_auth = no\n"
                + conf
                + "service pop3-login {\n  inet_listener pop3 {\n"
                f"    address = 127.0.0.1\n    port = {self.port}\n  }}\n}}\n")
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen([binary, "-F", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "stderr", "wb"),
                                     start_new_session=True)
        try:
            wait_listening(self.port, self.proc, "dovecot")
        except StartError as e:
            self.stop()
            raise StartError(f"{e}: {self.log()[-800:]}") from None

    def log(self) -> str:
        parts = []
        for name in ("dovecot.log", "stderr"):
            try:
                parts.append((self.base / name).read_text(errors="replace"))
            except OSError:
                pass
        return "".join(parts)

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log()

    def stop(self) -> None:
        end_group(self.proc)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def mailbox():
    """alice's home for the sysuser: a Maildir holding one message."""
    home = new_home()
    nobody = pwd.getpwnam(SYSUSER)
    message = home / "Maildir" / "new" / "1767225600.P1Q1.pop.example.com"
    message.write_bytes(b"From: bob@example.com\nTo: alice@example.com\n"
                        b"Subject: over POP3\n\nDelivered by qmail, read through Dovecot.\n")
    os.chown(message, nobody.pw_uid, nobody.pw_gid)
    yield home
    shutil.rmtree(home.parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dovecot switches users: run as root")
def test_dovecot_pop3_login_through_the_checkpassword_passdb(pg, tmp_path, mailbox):
    database = pg.new_database()
    added = subprocess.run([*ADMIN, "--db", database.dsn(), "add", "alice"],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    columns = subprocess.run([*ADMIN, "--db", database.dsn(), "set", "alice",
                              f"sysuser={SYSUSER}", f"dir={mailbox}"],
                             capture_output=True, text=True, timeout=60)
    assert columns.returncode == 0, columns.stderr
    control = tmp_path / "control"
    control.mkdir()
    (control / "authdb").write_text(database.dsn("qmaild") + "\n")
    (control / "authfaildelay").write_text("0\n")
    program = write_launcher(tmp_path / "qmail-esmtpd-checkpassword", ENTRY)
    dovecot = Dovecot(program, control)
    try:
        client = poplib.POP3("127.0.0.1", dovecot.port, timeout=20)
        try:
            client.user("alice")
            with pytest.raises(poplib.error_proto, match="Authentication failed"):
                client.pass_("not " + PASSWORD)
        finally:
            client.close()
        log = dovecot.wait_log("login fail user=alice")
        assert "qmail-esmtpd-checkpassword: login fail user=alice ip=127.0.0.1" in log

        client = poplib.POP3("127.0.0.1", dovecot.port, timeout=20)
        try:
            client.user("alice")
            assert client.pass_(PASSWORD).startswith(b"+OK")
            assert client.stat()[0] == 1
            _, lines, _ = client.retr(1)
            assert b"Subject: over POP3" in lines
            assert b"Delivered by qmail, read through Dovecot." in lines
            assert client.quit().startswith(b"+OK")
        finally:
            client.close()
        log = dovecot.wait_log("Disconnected")
        assert f"login ok user=alice ip=127.0.0.1 sysuser={SYSUSER} dir={mailbox}" in log
        assert PASSWORD not in log
        # the POP3 session ran as the sysuser: what it wrote in the Maildir is nobody's
        owners = {path.stat().st_uid for path in (mailbox / "Maildir").rglob("*")}
        assert owners == {pwd.getpwnam(SYSUSER).pw_uid}
    finally:
        dovecot.stop()
        database.close()


def test_the_readme_shows_the_configuration_as_tested():
    assert readme_conf() == DOVECOT_CONF
