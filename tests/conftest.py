"""Fixtures: a control dir, a recording qmail-queue, the server under real
tcpserver, and one PostgreSQL cluster for the whole run.  The helpers they
use, shared with the benchmark, are in harness/."""

import base64
import json
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest

from qmail_esmtpd.auth.passwords import context

from harness.files import write_program
from harness.forkserver import ForkServer
from harness.paths import FAKE_QUEUE, FORKSERVER, SERVER
from harness.postgres import Cluster, Database
from harness.system_users import let_service_user_in, pop3_service_env
from harness.tcpserver import TcpServer


class Queue:
    """The conformance kit's fake qmail-queue, recording each run as JSON."""

    def __init__(self, directory: Path, exit_codes: str = "0") -> None:
        self.dir = directory / "queue"
        self.dir.mkdir()
        self.program = write_program(
            directory / "qmail-queue",
            f"#!/bin/sh\nexec {sys.executable} {FAKE_QUEUE}\n")
        self.env = {"QMAILQUEUE": str(self.program), "FAKEQUEUE_DIR": str(self.dir),
                    "FAKEQUEUE_EXIT": exit_codes}

    def runs(self) -> list:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            run = json.loads(path.read_text())
            run["message"] = base64.b64decode(run["message_b64"])
            out.append(run)
        return out

    def queued(self) -> list:
        return [r for r in self.runs() if r["envelope_complete"] and r["exit"] == 0]

    def wait_runs(self, count: int, timeout: float = 10) -> list:
        deadline = time.monotonic() + timeout
        while len(self.runs()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.runs()


@pytest.fixture
def control(tmp_path: Path) -> Path:
    d = tmp_path / "control"
    d.mkdir()
    (d / "me").write_text("mx.example.com\n")
    (d / "rcpthosts").write_text("example.com\n")
    (d / "authfailkey").write_text(secrets.token_hex(32) + "\n")  # as make install makes it
    return d


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path)


@pytest.fixture
def tcpserver(tmp_path: Path, control: Path, queue: Queue):
    """Factory: tcpserver(rules, env=..., argv=...) -> running TcpServer."""
    if not shutil.which("tcpserver"):
        pytest.fail("tcpserver (ucspi-tcp) is not installed; .ci/run installs it")
    servers = []

    def start(rules: str = ":allow\n", env: dict | None = None,
              argv: list | None = None) -> TcpServer:
        base = {"QMAIL_CONTROL": str(control), **queue.env, **(env or {})}
        server = TcpServer(tmp_path, rules, base, argv or [SERVER])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def forkserver(tmp_path: Path, control: Path, queue: Queue):
    """Factory: forkserver(rules, env=..., argv=..., options=...) -> running
    ForkServer, the `tcpserver` fixture's sibling (same rules, same control
    and queue).  As root, the sessions run as nobody: they get a way into the
    test's folders, a queue they may write, and the system interpreter for
    the Python stand-ins (the venv's may be under root's home)."""
    if not shutil.which("tcprules"):
        pytest.fail("tcprules (ucspi-tcp) is not installed; .ci/run installs it")
    let_service_user_in(tmp_path)
    queue.dir.chmod(0o777)
    if Path("/usr/bin/python3").exists():
        write_program(queue.program, f"#!/bin/sh\nexec /usr/bin/python3 {FAKE_QUEUE}\n")
    servers = []

    def start(rules: str = ":allow\n", env: dict | None = None, argv: list | None = None,
              options: list | None = None, wrapper: list | None = None,
              program: Path = FORKSERVER, host: str = "127.0.0.1",
              rules6: bool = False) -> ForkServer:
        base = {"QMAIL_CONTROL": str(control), **queue.env, **(env or {})}
        if "AUTHDB" in base and "host=/" in base["AUTHDB"]:  # the cluster's socket
            let_service_user_in(Path(base["AUTHDB"].split("host=")[1].split()[0]))
        server = ForkServer(tmp_path, rules, base, argv, options=options, wrapper=wrapper,
                            program=program, host=host, rules6=rules6)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:  # every suite run through it checks its workers too
        leaks = [line for line in server.log().splitlines() if "left open by the session" in line]
        assert not leaks, f"a session left a descriptor open in its worker: {leaks[:3]}"


@pytest.fixture(scope="session")
def pg():
    """One PostgreSQL cluster for the whole run."""
    cluster = Cluster()
    # what /var/run/postgresql is: reachable by every user (the POP3 program
    # started as root connects with the service user's uid)
    cluster.base.chmod(0o711)
    yield cluster
    cluster.destroy()


@pytest.fixture
def db(pg):
    """A fresh database with sql/ loaded; returns a helper bound to it."""
    return Accounts(pg.new_database())


class Accounts:
    """The users of one database, and the server's environment to check them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.sql = database.sql
        self.hash = context().hash

    def add(self, name: str, password: str, **columns) -> int:
        columns.setdefault("pw", self.hash(password))
        keys = ", ".join(["name", *columns])
        marks = ", ".join(["%s"] * (len(columns) + 1))
        return self.sql(f"INSERT INTO poppass ({keys}) VALUES ({marks}) RETURNING id",
                        (name, *columns.values()))[0][0]

    def counts(self, name: str) -> tuple:
        rows = self.sql("SELECT s.count, s.total_count FROM sendcounts s JOIN poppass p"
                        " USING (id) WHERE p.name = %s", (name,))
        return rows[0] if rows else (0, 0)

    def env(self, **extra) -> dict:
        return {"AUTHDB": self.database.dsn("qmaild"), "AUTHFAILDELAY": "0",
                **pop3_service_env(), **extra}
