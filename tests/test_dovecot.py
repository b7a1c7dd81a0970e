"""End to end: Debian's Dovecot with a `checkpassword` passdb pointing at
qmail-esmtpd-checkpassword, Python's poplib as the client.

The README's Dovecot section as printed: its sh block (the role `dovecot`
and the grants) against a fresh cluster with Debian's peer authentication
and a database `mail`, then `dovecot -F -c CONF` as root with the README's
configuration (the test checks that README and DOVECOT_CONF agree), with only
the install's PREFIX and the cluster's socket put in for /var/qmail and
/var/run/postgresql, and the test's own base_dir, log and loopback port.
Dovecot's auth service runs as its default user, `dovecot`, so the program
runs as that user (the installed one: its interpreter is one every user may
run).  The user is made with qmail-esmtpd-user (`add`, then `set` for its
sysuser and dir).
"""

import os
import poplib
import pwd
import re
import shutil
import subprocess
import time

import pytest
from test_admin import COMMAND as ADMIN
from test_pop3 import SYSUSER, new_home
from test_readme_steps import peer_authentication, readme_blocks

from harness.install import installed_prefix
from harness.paths import ROOT
from harness.postgres import Cluster, Database
from harness.processes import StartError, end_group, free_port, wait_listening
from harness.system_users import world_readable_dir

PASSWORD = "Dovecot-and-qmail 2026"
SECTION = "### As Dovecot's checkpassword passdb"

# The POP3 part of the configuration, as README.md shows it; the test puts in
# its own paths and adds its own base_dir, log_path and the listener's port.
DOVECOT_CONF = """\
protocols = pop3
listen = 127.0.0.1
mail_location = maildir:~/Maildir
# Dovecot clears the environment: the settings the program gets here are
# for POP3 only.  AUTHDB: its own connection string (no user=: the auth
# user's role); AUTHFAILDELAY=0: Dovecot waits auth_failure_delay itself
import_environment = $import_environment \
AUTHDB=postgresql:///mail?host=/var/run/postgresql AUTHFAILDELAY=0
passdb {
  driver = checkpassword
  args = /var/qmail/bin/qmail-esmtpd-checkpassword
}
userdb {
  driver = prefetch
}
"""


def readme_conf() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- dovecot.conf as tested -->\n+((?:    .*\n|\n)+)", text)
    assert found, "README.md lacks the Dovecot configuration"
    return "".join(line[4:] + "\n" for line in found.group(1).rstrip().splitlines())


class Dovecot:
    """dovecot -F with `conf` in a temp dir, listening on a loopback port."""

    def __init__(self, conf: str) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(binary):
            pytest.fail("dovecot is not installed; tools/install-deps installs dovecot-core")
        self.base = world_readable_dir("qmail-esmtpd-dovecot-")  # for dovenull, its logins
        self.port = free_port()
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


@pytest.fixture
def cluster():
    """A cluster of its own with a database `mail` (schema, grants, role qmaild)
    and Debian's peer authentication, reachable by every system user."""
    if os.geteuid() != 0:
        pytest.skip("dovecot switches users: run as root")
    fresh = Cluster()
    try:
        with Database(fresh, "postgres") as admin:
            admin.sql("CREATE DATABASE mail")
            admin.sql("CREATE ROLE qmaild LOGIN")
        with Database(fresh, "mail") as mail:
            mail.sql((ROOT / "sql" / "schema.sql").read_text())
            mail.sql((ROOT / "sql" / "grants.sql").read_text())
        peer_authentication(fresh)
        os.chmod(fresh.base, 0o711)  # what /var/run/postgresql is: reachable by everyone
        yield fresh
    finally:
        fresh.destroy()


@pytest.fixture
def dovecot(cluster, mailbox):
    """The README's steps run, alice added with `sysuser` and `dir`, and Dovecot
    running with the README's configuration."""
    (steps,) = readme_blocks(SECTION)
    done = subprocess.run(["sh", "-exc", steps], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "PGHOST": str(cluster.sock)},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    dsn = cluster.dsn("mail")
    added = subprocess.run([*ADMIN, "--db", dsn, "add", "alice"],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    columns = subprocess.run([*ADMIN, "--db", dsn, "set", "alice",
                              f"sysuser={SYSUSER}", f"dir={mailbox}"],
                             capture_output=True, text=True, timeout=60)
    assert columns.returncode == 0, columns.stderr
    prefix = installed_prefix()
    conf = readme_conf().replace("/var/qmail", str(prefix)).replace(
        "/var/run/postgresql", str(cluster.sock))
    server = Dovecot(conf)
    yield server
    server.stop()


def test_dovecot_pop3_login_through_the_checkpassword_passdb(cluster, mailbox, dovecot):
    client = poplib.POP3("127.0.0.1", dovecot.port, timeout=20)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            client.pass_("not " + PASSWORD)
    finally:
        client.close()
    log = dovecot.wait_log("login fail user=alice")
    assert "auth: Error: qmail-esmtpd-checkpassword: login fail user=alice " \
           "ip=127.0.0.1: wrong password" in log
    errors = [line for line in log.splitlines() if "Error" in line]

    client = poplib.POP3("127.0.0.1", dovecot.port, timeout=20)
    try:
        client.user("alice")
        assert client.pass_(PASSWORD).startswith(b"+OK"), dovecot.log()
        assert client.stat()[0] == 1
        _, lines, _ = client.retr(1)
        assert b"Subject: over POP3" in lines
        assert b"Delivered by qmail, read through Dovecot." in lines
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    log = dovecot.wait_log("Disconnected")
    assert "pop3-login: Info: Login: user=<alice>" in log, log
    # a success writes nothing Dovecot would log as an error
    assert [line for line in log.splitlines() if "Error" in line] == errors, log
    assert "login ok" not in log
    assert PASSWORD not in log
    # the POP3 session ran as the sysuser: what it wrote in the Maildir is nobody's
    owners = {path.stat().st_uid for path in (mailbox / "Maildir").rglob("*")}
    assert owners == {pwd.getpwnam(SYSUSER).pw_uid}
    # and the program connected as the auth user's own role, with its grants
    with Database(cluster, "mail") as mail:
        assert mail.sql("SELECT name FROM authfailures") == [("alice",)]


def test_while_the_database_cannot_write_no_login_is_checked(cluster, dovecot):
    """The right password too: the user sees a failed login (temporary), the
    log says why, and the guesser gets no free check."""
    with Database(cluster, "mail") as mail:
        mail.sql("REVOKE INSERT ON authfailures FROM dovecot")
    client = poplib.POP3("127.0.0.1", dovecot.port, timeout=20)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto,
                           match=r"^b'-ERR \[SYS/TEMP\] Temporary authentication failure"):
            client.pass_(PASSWORD)
    finally:
        client.close()
    log = dovecot.wait_log("login tempfail user=alice")
    assert ("qmail-esmtpd-checkpassword: login tempfail user=alice ip=127.0.0.1: not checked: "
            "the attempt cannot be recorded: permission denied") in log, log
    assert "Login: user=<alice>" not in log


def test_the_readme_shows_the_configuration_as_tested():
    assert readme_conf() == DOVECOT_CONF
