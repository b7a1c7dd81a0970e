"""Shared fixtures: the installed server, a control dir, a recording qmail-queue,
and the server running under real tcpserver with a tcprules cdb."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "qmail-esmtpd"
FAKE_QUEUE = ROOT / "tests" / "conformance" / "fake-qmail-queue"
FAKE_CHECKPASSWORD = ROOT / "tests" / "conformance" / "fake-checkpassword"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_program(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


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
    return d


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path)


class TcpServer:
    """qmail-esmtpd under real tcpserver, with rules compiled by real tcprules."""

    def __init__(self, workdir: Path, rules: str, env: dict, argv: list) -> None:
        self.port = free_port()
        cdb = workdir / "tcp.smtp.cdb"
        subprocess.run(["tcprules", str(cdb), str(workdir / "tcp.smtp.tmp")],
                       input=rules.encode(), check=True)
        self.log = open(workdir / "tcpserver.log", "wb")
        self.proc = subprocess.Popen(
            ["tcpserver", "-v", "-R", "-H", "-l", "localhost", "-x", str(cdb),
             "127.0.0.1", str(self.port), *argv],
            env={"PATH": os.environ["PATH"], **env}, stdout=subprocess.DEVNULL,
            stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("tcpserver did not start") from None
                time.sleep(0.05)
        self.logpath = workdir / "tcpserver.log"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def tcpserver(tmp_path: Path, control: Path, queue: Queue):
    """Factory: tcpserver(rules, env=..., argv=...) -> running TcpServer."""
    if not shutil.which("tcpserver"):
        pytest.fail("tcpserver (ucspi-tcp) is not installed; .ci/run installs it")
    servers = []

    def start(rules: str = ":allow\n", env: dict | None = None,
              argv: list | None = None) -> TcpServer:
        base = {"QMAIL_CONTROL": str(control), **queue.env, **(env or {})}
        server = TcpServer(tmp_path, rules, base, argv or [str(SERVER)])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def pg():
    """One PostgreSQL cluster for the whole run."""
    from pgcluster import Cluster
    cluster = Cluster()
    yield cluster
    cluster.destroy()
