"""The README's steps, run as written, as root, against fresh throwaway clusters.

The quick start: its sh blocks in order (make install, the database, the
service), with /var/qmail, /etc/tcp.smtp and the cluster's socket in temporary
folders; then the copied run script, started as svscan would but on a high
port, takes the swaks line's message: accepted, authenticated, queued.

The database set-up: its sh blocks, with only the cluster's socket and the
install's PREFIX put in for /var/run/postgresql and /var/qmail.  Then alice logs
in: over SMTP, and over POP3 through the README's qmail-popup run script under
tcpserver, with the cluster switched to Debian's peer authentication."""

import base64
import json
import os
import poplib
import pwd
import re
import shutil
import signal
import subprocess
import time

import pytest

from harness.install import as_printed, installed_prefix, wheel_folder
from harness.paths import FAKE_QUEUE, ROOT
from harness.postgres import Cluster, Database
from harness.processes import StartError, end_group, free_port, talk, wait_listening
from harness.system_users import pop3_service_env, pop3_service_user, world_readable_dir
from harness.tcpserver import TcpServer

SECTION = "### Setting up the database"
QUICK_START = "## Quick start"
POP3_SECTION = "### Under qmail-popup"
PASSWORD = "readme-Pa55word"
STAND_INS = ROOT / "tests" / "pop3"
SYSUSER = "nobody"


def readme_blocks(section: str = SECTION) -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(section)
    end = re.compile(r"\n#+ ").search(text, start + len(section)).start()
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.M | re.S)


@pytest.fixture
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the README's steps are run as root")
    fresh = Cluster()  # its own: the steps create the role qmaild and the database mail
    yield fresh
    fresh.destroy()


def test_the_quick_start_has_its_steps_in_order():
    install, database, service, switch, check = readme_blocks(QUICK_START)
    assert install == "make install\n"
    assert database.splitlines()[:4] == "".join(readme_blocks()[0]).splitlines()
    assert service.startswith("make cdb\n") and "/service/qmail-esmtpd" in switch
    assert check.startswith("swaks --server 127.0.0.1 --auth PLAIN --auth-user alice ")


def test_quick_start_as_written(cluster: Cluster, tmp_path):
    """The four steps, then a message through AUTH into the queue."""
    install, database, service, _switch, check = readme_blocks(QUICK_START)
    prefix = world_readable_dir("qmail-esmtpd-quickstart-")
    rules = world_readable_dir("qmail-esmtpd-quickstart-etc-") / "tcp.smtp"
    queued = world_readable_dir("qmail-esmtpd-quickstart-queue-")
    queued.chmod(0o777)
    try:
        # qmail's own, there before the steps: its home, control/me, qmail-queue
        for sub in ("control", "bin"):
            (prefix / sub).mkdir()
        (prefix / "control" / "me").write_text("mx.example.com\n")
        shutil.copy(FAKE_QUEUE, prefix / "bin" / "qmail-queue")  # records what it is given
        (prefix / "bin" / "qmail-queue").chmod(0o755)
        env = {"PATH": os.environ["PATH"], "PGHOST": str(cluster.sock), "LANG": "C",
               # make's variables: the temporary PREFIX, no network, the rules' source
               "PREFIX": str(prefix), "WHEELS": str(wheel_folder()), "SMTPRULES": str(rules)}

        def run_steps(script: str, stdin: str = "") -> str:
            script = script.replace("/var/run/postgresql", str(cluster.sock))
            script = script.replace("/var/qmail", str(prefix))
            done = subprocess.run(["sh", "-exc", script], input=stdin, cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        assert "installed " in run_steps(install)
        assert "added alice" in run_steps(database, PASSWORD + "\n")
        run_steps(service)
        assert rules.with_name("tcp.smtp.cdb").exists()
        supervised = prefix / "supervise" / "qmail-esmtpd"
        assert (supervised / "log" / "run").read_text() == \
            (prefix / "lib" / "qmail-esmtpd" / "service" / "log" / "run").read_text()

        # step 4 is svscan's: start the run script as it would, on a high port
        os.chmod(cluster.base, 0o711)  # what /var/run/postgresql is: reachable by everyone
        port = free_port()
        run = (supervised / "run").read_text()
        assert "\n        -u \"$QMAILDUID\" -g \"$NOFILESGID\" 0 smtp \\\n" in run
        run = as_printed(run, rules.with_name("tcp.smtp.cdb"))
        (supervised / "run").write_text(run.replace(" 0 smtp \\", f" 127.0.0.1 {port} \\"))
        log = tmp_path / "service.log"
        with log.open("wb") as out:
            started = subprocess.Popen(["./run"], cwd=supervised, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True,
                                       env={"PATH": os.environ["PATH"],
                                            "FAKEQUEUE_DIR": str(queued)})
        try:
            try:
                wait_listening(port, started, "the copied run script", timeout=30)
            except StartError as e:
                raise AssertionError(f"{e}: {log.read_text()}") from None
            sent = subprocess.run(
                ["sh", "-c", check.replace("--server 127.0.0.1 ", f"--server 127.0.0.1:{port} ")],
                input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
            said = wait_for(log, "auth ok user=alice")
        finally:
            end_group(started)
        assert sent.returncode == 0, sent.stdout + sent.stderr + said
        assert "<-  235 ok, go ahead (#2.0.0)" in sent.stdout, sent.stdout
        assert "auth ok user=alice ip=127.0.0.1" in said and PASSWORD not in said, said
        (record,) = [json.loads(path.read_text()) for path in queued.glob("*.json")]
        assert record["exit"] == 0 and record["recipients"] == ["postmaster@example.com"]
        message = base64.b64decode(record["message_b64"]).decode()
        assert "(alice@127.0.0.1)" in message and "by mx.example.com with ESMTPA" in message, \
            message
    finally:
        for path in (prefix, rules.parent, queued):
            shutil.rmtree(path, ignore_errors=True)


def test_the_section_has_the_three_steps():
    assert len(readme_blocks()) == 3


def test_the_pop3_section_has_the_run_script():
    (script,) = readme_blocks(POP3_SECTION)
    assert script.startswith("#!/bin/sh\n") and "qmail-esmtpd-checkpassword" in script


def test_readme_database_steps_as_written(cluster: Cluster):
    prefix = installed_prefix()
    (prefix / "control").mkdir(exist_ok=True)
    (prefix / "control" / "me").write_text("mx.example.com\n")
    script = "\n".join(readme_blocks())
    script = script.replace("/var/run/postgresql", str(cluster.sock))
    script = script.replace("/var/qmail", str(prefix))
    env = {"PATH": os.environ["PATH"], "PGHOST": str(cluster.sock), "LANG": "C"}
    # the password `add` reads: one line on stdin, as from a pipe
    done = subprocess.run(["sh", "-exc", script], input=PASSWORD + "\n", cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "added alice" in done.stdout and "limit for alice: 200" in done.stdout
    assert "limit:    200" in done.stdout

    # The server as nobody, with nothing but PREFIX's control files: alice logs in.
    os.chmod(cluster.base, 0o711)  # what /var/run/postgresql is: reachable by everyone
    queue = prefix / "bin" / "qmail-queue"
    queue.write_text("#!/bin/sh\ncat >/dev/null && cat <&1 >/dev/null\n")
    queue.chmod(0o755)
    server = TcpServer(prefix, ":allow\n", {},
                       ["setuidgid", "nobody", prefix / "bin" / "qmail-esmtpd"])
    try:
        token = base64.b64encode(f"\0alice\0{PASSWORD}".encode())
        said = talk(server.port, b"EHLO x\r\nAUTH PLAIN " + token + b"\r\nQUIT\r\n")
    finally:
        server.stop()
    assert b"\r\n235 " in said, said + server.log().encode()
    try:
        pop3_login_through_the_run_script(cluster, prefix)
    finally:
        shutil.rmtree(prefix / "control")
        shutil.rmtree(prefix / "pop3d", ignore_errors=True)


def peer_authentication(cluster: Cluster) -> None:
    """Debian's pg_hba.conf for local connections: peer (the system user is the
    role).  The harness itself still connects as postgres from root."""
    (cluster.data / "pg_hba.conf").write_text(
        "local all postgres trust\nlocal all all peer map=local\n")
    # without a system user qmaild, POPDBUSER names nobody, who may be role qmaild
    (cluster.data / "pg_ident.conf").write_text(
        "local /^(.*)$ \\1\n"
        + ("" if pop3_service_user() == "qmaild" else "local nobody qmaild\n"))
    with Database(cluster, "postgres") as admin:
        admin.sql("SELECT pg_reload_conf()")


def pop3_login_through_the_run_script(cluster: Cluster, prefix) -> None:
    """The README's run script, as printed but for paths and port: tcpserver as
    root, qmail-popup (the stand-in, or $QMAIL_POPUP), the program connecting
    as qmaild by peer authentication, qmail-pop3d (a stand-in, or $QMAIL_POP3D)."""
    peer_authentication(cluster)
    home = world_readable_dir("qmail-esmtpd-readme-pop3-") / "alice"
    nobody = pwd.getpwnam(SYSUSER)
    for sub in ("", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"):
        (home / sub).mkdir()
        os.chown(home / sub, nobody.pw_uid, nobody.pw_gid)
    with Database(cluster, "mail") as mail:
        mail.sql("UPDATE poppass SET sysuser = %s, dir = %s WHERE name = 'alice'",
                 (SYSUSER, str(home)))
    for name, stand_in in (("qmail-popup", "QMAIL_POPUP"), ("qmail-pop3d", "QMAIL_POP3D")):
        shutil.copy(os.environ.get(stand_in) or STAND_INS / name, prefix / "bin" / name)
    # the script needs no env folder: POPDBUSER, where this host has no qmaild,
    # as its control file (the README's other place for it)
    for name, value in pop3_service_env().items():
        (prefix / "control" / name.lower()).write_text(value + "\n")
    (prefix / "pop3d").mkdir(exist_ok=True)
    port = free_port()
    (script,) = readme_blocks(POP3_SECTION)
    script = script.replace("/var/qmail", str(prefix)).replace(" 0 110 ", f" 127.0.0.1 {port} ")
    assert f"127.0.0.1 {port}" in script
    run = prefix / "pop3d" / "run"
    run.write_text(script)
    run.chmod(0o755)
    log = prefix / "pop3d" / "log"
    with log.open("wb") as out:
        service = subprocess.Popen([str(run)], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={"PATH": os.environ["PATH"]})
    try:
        try:
            wait_listening(port, service, "the pop3d run script")
        except StartError as e:
            raise AssertionError(f"{e}: {log.read_text()}") from None
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        try:
            assert client.getwelcome().startswith(b"+OK <")
            client.user("alice")
            assert client.pass_(PASSWORD).startswith(b"+OK"), log.read_text()
            assert client.stat() == (0, 0)
            if "QMAIL_POP3D" not in os.environ:  # the stand-in says who runs it
                who = client._shortcmd("XWHO").decode()
                assert who == f"+OK uid={nobody.pw_uid} dir={home} args=Maildir", who
            client.quit()
        finally:
            client.close()
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        try:
            client.user("alice")
            try:
                client.pass_("not " + PASSWORD)
                raise AssertionError("a wrong password logged in")
            except poplib.error_proto as e:
                assert e.args[0] == b"-ERR authorization failed"
        finally:
            client.close()
        text = wait_for(log, "login fail user=alice")
        assert f"login ok user=alice ip=127.0.0.1 sysuser={SYSUSER} dir={home}" in text, text
        assert "login fail user=alice ip=127.0.0.1: wrong password" in text, text
        assert PASSWORD not in text
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        end_group(service, signalled=True)
        shutil.rmtree(home.parent, ignore_errors=True)


def wait_for(path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in (found := path.read_text(errors="replace")) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return found
