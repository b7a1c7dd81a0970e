"""The README's database set-up, run as written: its sh blocks, in order, as root,
against a fresh throwaway cluster, with only the cluster's socket and the install's
PREFIX put in for /var/run/postgresql and /var/qmail.  Then alice logs in."""

import base64
import os
import re
import shutil
import subprocess

import pytest

from support import ROOT, Cluster, TcpServer, installed_prefix, talk

SECTION = "### Setting up the database"
PASSWORD = "readme-Pa55word"


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n#", start + len(SECTION))
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.M | re.S)


@pytest.fixture
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the README's steps are run as root")
    fresh = Cluster()  # its own: the steps create the role qmaild and the database mail
    yield fresh
    fresh.destroy()


def test_the_section_has_the_three_steps():
    assert len(readme_blocks()) == 3


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
    shutil.rmtree(prefix / "control")
