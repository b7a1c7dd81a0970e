"""Sessions through real tcpserver: a cheap raw-socket client and the server's CPU."""

import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.harness.tcpserver import TcpServer

from . import BenchError
from .pipes import CLIENT_TIMEOUT, children_cpu
from .session import COMMANDS, DATA_END, MESSAGE, QUIT
from .setup import Bench

Commands = tuple[tuple[bytes, bytes], ...]


class Reader:
    """Minimal reply reader: buffered recv, split on LF; cheaper than smtplib."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
                return line
            data = self.sock.recv(4096)
            if not data:
                raise BenchError(f"connection closed by server (pending {self.buf!r})")
            self.buf += data

    def reply(self, expect: bytes) -> bytes:
        """Read lines until the last one of a reply (4th char a space); check its code."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                break
        if not line.startswith(expect):
            raise BenchError(f"expected {expect.decode()}, got {line!r}")
        return line


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A plain blocking client socket, Nagle off (we wait for each reply anyway)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect((host, port))
    return sock


def tcp_session(port: int, commands: Commands = COMMANDS, host: str = "127.0.0.1") -> None:
    """The same session as on pipes, one command at a time."""
    with connect(port, host) as sock:
        reader = Reader(sock)
        reader.reply(b"220 ")
        transaction(sock, reader, commands)


def transaction(sock: socket.socket, reader: Reader, commands: Commands,
                accept: bytes = b"250 ok") -> None:
    """`commands` one at a time, then the message and QUIT, each reply checked
    (the message's against `accept`: qmail's "250 ok", Postfix's own)."""
    for command, code in commands:
        sock.sendall(command)
        reader.reply(code)
    sock.sendall(MESSAGE + DATA_END)
    reader.reply(accept)
    sock.sendall(QUIT)
    reader.reply(b"221 ")


@contextmanager
def tcpserver(bench: Bench, authdb: bool = False, host: str = "127.0.0.1",
              conninfo: str | None = None) -> Iterator[tuple[int, Callable[[], float]]]:
    """qmail-esmtpd under tcpserver (harness.tcpserver.TcpServer, `:allow` rules, no -v) on `host`.

    Yields the port and a function giving server-side CPU (tcpserver and
    everything it ran); that is only known once tcpserver has been reaped,
    so it is read after the block ends.  The start-up probe's session counts.
    `conninfo` (with `authdb`) replaces the cluster's own AUTHDB (pgbouncer's).
    """
    env = {k: v for k, v in bench.env(authdb).items() if not k.startswith("TCP")}
    if authdb and conninfo is not None:
        env["AUTHDB"] = conninfo
    server = TcpServer(bench.workdir, ":allow\n", env, [bench.launcher.path], verbose=False,
                       host=host)
    before = children_cpu()
    cpu = [0.0]
    try:
        yield server.port, lambda: cpu[0]
    finally:
        server.stop()
        cpu[0] = children_cpu() - before
    # A successful AUTH is logged on every AUTH session; anything else is news.
    text = "\n".join(line for line in server.log().strip().splitlines()
                     if not line.startswith("qmail-esmtpd: auth ok "))
    if text:
        print(f"note: tcpserver/qmail-esmtpd stderr:\n{text[-600:]}", file=sys.stderr)


def self_cpu() -> float:
    """user+sys seconds of this process (the client threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_threads(threads: "list[threading.Thread]") -> float:
    """Start every thread, wait for all of them: the wall seconds that took."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def run_clients(port: int, concurrency: int, sessions: int, commands: Commands = COMMANDS,
                host: str = "127.0.0.1") -> tuple[float, float]:
    """`sessions` sessions by `concurrency` threads: (sessions/s, client CPU ms/session)."""
    remaining = [sessions]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0 or errors:
                    return
                remaining[0] -= 1
            try:
                tcp_session(port, commands, host)
            except BaseException as e:  # reported below, after all threads stop
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    cpu_before = self_cpu()
    elapsed = run_threads(threads)
    client_cpu = self_cpu() - cpu_before
    if errors:
        raise BenchError(f"concurrency {concurrency}: {errors[0]!r}")
    return sessions / elapsed, client_cpu * 1000.0 / sessions


def banner_latencies(port: int, connections: int) -> list[float]:
    """ms from connect() to the complete `220 ... ESMTP` line, sequentially."""
    times = []
    for _ in range(connections):
        start = time.perf_counter()
        with connect(port) as sock:
            reader = Reader(sock)
            banner = reader.line()
            times.append((time.perf_counter() - start) * 1000.0)
            if not (banner.startswith(b"220 ") and banner.endswith(b" ESMTP\r\n")):
                raise BenchError(f"unexpected banner {banner!r}")
            sock.sendall(QUIT)
            reader.reply(b"221 ")
    return times
