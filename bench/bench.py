"""Benchmark qmail-esmtpd's per-connection cost and print the figures.

tcpserver starts one qmail-esmtpd per connection, so what matters is the CPU
and latency of a whole short session compared with the floor for any Python
server: a bare interpreter start.  This script measures, in one run:

1. CPU per plain SMTP session on pipes, interleaved with a bare
   `python -I -S -c pass`, an import-only start and the qmail-queue sink alone;
2. which heavy modules a plain session imports, and what our imports cost;
3. sessions per second through real tcpserver at concurrency 1, 4 and 16;
4. connect-to-banner latency through tcpserver.

It prints figures with their targets and asserts nothing; it stops with an
error only when the server misbehaves (so a broken server cannot look fast).
Standard library only.  Run from the repository root: `make bench`.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / ".venv" / "bin" / "qmail-esmtpd"

ME = "mx.example.com"
RCPTHOSTS = "example.com"
MESSAGE_SIZE = 4096
FORBIDDEN = ("psycopg2", "passlib", "ssl", "email", "subprocess", "re", "typing", "logging")
CONCURRENCY_LEVELS = (1, 4, 16)
CLIENT_TIMEOUT = 30.0

TARGET_RATIO = 1.25
TARGET_BANNER_MS = 15.0

# qmail-queue stand-in: one exec'd cat reads the message (fd 0) and then the
# envelope (fd 1, moved to fd 3) to EOF, so the server never sees a broken pipe.
SINK_SCRIPT = "#!/bin/sh\nexec /bin/cat /dev/stdin /dev/fd/3 3<&1 >/dev/null\n"


class BenchError(Exception):
    """The server under test misbehaved or the set-up failed: no figures."""


# --- the plain session ------------------------------------------------------


def build_message(size: int = MESSAGE_SIZE) -> bytes:
    """A CRLF message of exactly `size` bytes, no line starting with a dot."""
    head = (
        b"From: a@bench.example\r\nTo: b@example.com\r\nSubject: bench\r\n"
        b"Message-ID: <bench@bench.example>\r\n\r\n"
    )
    filler = b"x" * 70 + b"\r\n"
    lines = (size - len(head)) // len(filler) - 1
    body = head + filler * lines
    return body + b"y" * (size - len(body) - 2) + b"\r\n"


MESSAGE = build_message()
COMMANDS = (
    (b"EHLO bench.example\r\n", b"250"),
    (b"MAIL FROM:<a@bench.example>\r\n", b"250"),
    (b"RCPT TO:<b@example.com>\r\n", b"250"),
    (b"DATA\r\n", b"354"),
)
DATA_END = b".\r\n"
QUIT = b"QUIT\r\n"
SESSION_INPUT = b"".join(c for c, _ in COMMANDS) + MESSAGE + DATA_END + QUIT
ENVELOPE = b"Fa@bench.example\0Tb@example.com\0\0"


def check_session_output(out: bytes, status: int, what: str) -> None:
    """Refuse to count a session that did not greet, queue and say goodbye."""
    lines = out.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    problems = []
    if status != 0:
        problems.append(f"exit status {status}")
    if not lines or not lines[0].startswith(b"220 "):
        problems.append("no 220 greeting")
    codes = [line[:4] for line in lines]
    if b"354 " not in codes:
        problems.append("no 354 after DATA")
    elif not any(line.startswith(b"250 ok") for line in lines[codes.index(b"354 ") + 1:]):
        problems.append("message not accepted (no '250 ok' after DATA)")
    if not lines or not lines[-1].startswith(b"221 "):
        problems.append("does not end with 221")
    if problems:
        shown = out.decode("ascii", "replace")[-600:]
        raise BenchError(f"{what}: {', '.join(problems)}; output was:\n{shown}")


# --- set-up -----------------------------------------------------------------


def read_launcher(launcher: Path) -> tuple[str, list[str], list[str]]:
    """Interpreter, its flags and sys.path prefix, from the launcher's text.

    The bare-interpreter baseline must be the very binary tcpserver ends up
    running, not whatever `python3` is on PATH.
    """
    try:
        lines = launcher.read_text().splitlines()
    except OSError as e:
        raise BenchError(f"cannot read {launcher}: {e} (run `make venv`)") from None
    if not lines or not lines[0].startswith("#!"):
        raise BenchError(f"{launcher}: no shebang line")
    interpreter, *flags = lines[0][2:].split()
    paths: list[str] = []
    for line in lines[1:]:
        if line.startswith("sys.path[:0]"):
            paths = ast.literal_eval(line.split("=", 1)[1].strip())
    return interpreter, flags, paths


def write_fixture(directory: Path) -> tuple[Path, Path]:
    """Control files and the qmail-queue sink in a throw-away directory."""
    control = directory / "control"
    control.mkdir()
    (control / "me").write_text(ME + "\n")
    (control / "rcpthosts").write_text(RCPTHOSTS + "\n")
    sink = directory / "qmail-queue-sink"
    sink.write_text(SINK_SCRIPT)
    sink.chmod(0o755)
    return control, sink


def server_env(control: Path, sink: Path) -> dict[str, str]:
    """What tcpserver would give a plain, non-relaying client on localhost."""
    return {
        "PATH": "/usr/bin:/bin",
        "QMAIL_CONTROL": str(control),
        "QMAILQUEUE": str(sink),
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "25",
        "TCPLOCALHOST": "localhost",
        "TCPREMOTEIP": "127.0.0.1",
        "TCPREMOTEPORT": "40000",
    }


# --- 1. CPU on pipes --------------------------------------------------------


def children_cpu() -> float:
    """user+sys seconds of all reaped children (and their reaped children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(argv: list[str], stdin: bytes | None, env: dict[str, str]
                 ) -> tuple[float, int, bytes]:
    """Run one child to completion: (CPU seconds incl. its children, status, stdout)."""
    before = children_cpu()
    stdin_kind = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=stdin_kind, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        out, _ = proc.communicate(stdin, timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"{argv[0]} did not finish within {CLIENT_TIMEOUT:g} s") from None
    return children_cpu() - before, proc.returncode, out


def run_sink_alone(sink: Path, env: dict[str, str]) -> float:
    """CPU of one qmail-queue sink run fed like qmail-esmtpd feeds it."""
    envelope_r, envelope_w = os.pipe()
    before = children_cpu()
    try:
        proc = subprocess.Popen([str(sink)], stdin=subprocess.PIPE, stdout=envelope_r,
                                stderr=subprocess.DEVNULL, env=env)
    finally:
        os.close(envelope_r)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"Received: from bench.example (HELO bench.example) (127.0.0.1)\n"
                         b"  by mx.example.com with SMTP; 1 Jan 2026 00:00:00 -0000\n")
        proc.stdin.write(MESSAGE.replace(b"\r\n", b"\n"))
        proc.stdin.close()
        os.write(envelope_w, ENVELOPE)
    finally:
        os.close(envelope_w)
    try:
        status = proc.wait(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError("qmail-queue sink hangs") from None
    if status != 0:
        raise BenchError(f"qmail-queue sink exited {status}")
    return children_cpu() - before


def measure_pipes(interpreter: str, paths: list[str], control: Path, sink: Path,
                  iterations: int) -> dict[str, list[float]]:
    """Interleave the four variants so drift and noise hit them all alike."""
    env = server_env(control, sink)
    import_only = f"import sys; sys.path[:0] = {paths!r}; import qmail_esmtpd.cli"

    def session() -> float:
        cpu, status, out = run_measured([str(LAUNCHER)], SESSION_INPUT, env)
        check_session_output(out, status, "qmail-esmtpd on pipes")
        return cpu

    def bare() -> float:
        cpu, status, _ = run_measured([interpreter, "-I", "-S", "-c", "pass"], None, env)
        if status != 0:
            raise BenchError(f"bare interpreter exited {status}")
        return cpu

    def imports() -> float:
        cpu, status, _ = run_measured([interpreter, "-I", "-S", "-c", import_only], None, env)
        if status != 0:
            raise BenchError(f"import-only start exited {status}")
        return cpu

    variants: dict[str, Callable[[], float]] = {
        "session": session,
        "bare": bare,
        "import": imports,
        "sink": lambda: run_sink_alone(sink, env),
    }
    for run in variants.values():  # warm the page cache and __pycache__
        for _ in range(3):
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(iterations):
        for name, run in variants.items():
            samples[name].append(run() * 1000.0)
    return samples


# --- 2. imports -------------------------------------------------------------


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, nesting depth) from `-X importtime` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), int(self_us), int(cumulative_us), depth))
    return rows


@dataclass
class ImportReport:
    """What a plain session imported, from one `-X importtime` run."""

    forbidden: list[str]
    package_modules: int
    package_total_ms: float  # our top-level imports incl. the stdlib they pull in
    package_self_ms: float  # our own modules only
    extra_stdlib: list[tuple[str, float]]  # (module, self ms) not in a bare start


def measure_imports(interpreter: str, paths: list[str], control: Path, sink: Path
                    ) -> ImportReport:
    """Run the launcher's code under -X importtime (-I would ignore the env var)."""
    env = server_env(control, sink)
    code = (f"import sys; sys.path[:0] = {paths!r}; "
            "from qmail_esmtpd.cli import main; sys.exit(main())")
    proc = subprocess.run([interpreter, "-I", "-S", "-X", "importtime", "-c", code],
                          input=SESSION_INPUT, capture_output=True, env=env, check=False,
                          timeout=CLIENT_TIMEOUT)
    check_session_output(proc.stdout, proc.returncode, "qmail-esmtpd under -X importtime")
    rows = parse_importtime(proc.stderr.decode("utf-8", "replace"))
    bare = subprocess.run([interpreter, "-I", "-S", "-X", "importtime", "-c", "pass"],
                          capture_output=True, env=env, check=False, timeout=CLIENT_TIMEOUT)
    bare_names = {row[0] for row in parse_importtime(bare.stderr.decode("utf-8", "replace"))}

    def is_forbidden(name: str) -> bool:
        return any(name == m or name.startswith(m + ".") for m in FORBIDDEN)

    ours = [r for r in rows if r[0] == "qmail_esmtpd" or r[0].startswith("qmail_esmtpd.")]
    # Top-level entries of our package carry everything they pulled in.
    package_total = sum(r[2] for r in ours if r[3] == 0)
    extra = [r for r in rows if r[0] not in bare_names and r not in ours]
    return ImportReport(
        forbidden=sorted({r[0] for r in rows if is_forbidden(r[0])}),
        package_modules=len(ours),
        package_total_ms=package_total / 1000.0,
        package_self_ms=sum(r[1] for r in ours) / 1000.0,
        extra_stdlib=[(r[0], r[1] / 1000.0) for r in extra],
    )


# --- 3 and 4. through tcpserver ----------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now (tiny race, fine for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def connect(port: int) -> socket.socket:
    """A plain blocking client socket, Nagle off (we wait for each reply anyway)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def tcp_session(port: int) -> None:
    """The same plain session as on pipes, one command at a time."""
    with connect(port) as sock:
        reader = Reader(sock)
        reader.reply(b"220 ")
        for command, code in COMMANDS:
            sock.sendall(command)
            reader.reply(code)
        sock.sendall(MESSAGE + DATA_END)
        reader.reply(b"250 ok")
        sock.sendall(QUIT)
        reader.reply(b"221 ")


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll with banner+QUIT connections until tcpserver answers (or give up)."""
    deadline = time.monotonic() + 10.0
    while True:
        if proc.poll() is not None:
            raise BenchError(f"tcpserver exited {proc.returncode}: {log.read_text()[-600:]}")
        try:
            with connect(port) as sock:
                reader = Reader(sock)
                reader.reply(b"220 ")
                sock.sendall(QUIT)
                reader.reply(b"221 ")
                return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise BenchError("tcpserver did not start listening within 10 s") from None
            time.sleep(0.02)


@contextmanager
def tcpserver(control: Path, sink: Path, workdir: Path
              ) -> Iterator[tuple[int, Callable[[], float]]]:
    """Run tcpserver in its own process group; always kill the whole group.

    Yields the port and a function giving server-side CPU so far; that is only
    known once tcpserver has been reaped, so it is read after the block ends.
    """
    port = free_port()
    log = workdir / f"tcpserver-{port}.log"
    env = {k: v for k, v in server_env(control, sink).items() if not k.startswith("TCP")}
    before = children_cpu()
    cpu = [0.0]
    argv = ["tcpserver", "-R", "-H", "-l", "localhost", "-c", "100", "127.0.0.1", str(port),
            str(LAUNCHER)]
    with log.open("wb") as log_file:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log_file, env=env, start_new_session=True)
        except OSError as e:
            raise BenchError(f"cannot start tcpserver: {e}") from None
    try:
        wait_until_listening(port, proc, log)
        yield port, lambda: cpu[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cpu[0] = children_cpu() - before
    text = log.read_text(errors="replace").strip()
    if text:
        print(f"note: tcpserver/qmail-esmtpd stderr:\n{text[-600:]}", file=sys.stderr)


def self_cpu() -> float:
    """user+sys seconds of this process (the client threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_clients(port: int, concurrency: int, sessions: int) -> tuple[float, float]:
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
                tcp_session(port)
            except BaseException as e:  # reported below, after all threads stop
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    cpu_before = self_cpu()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
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


# --- report -----------------------------------------------------------------


def p90(values: list[float]) -> float:
    """90th percentile: the tail a busy MX sees, which a median hides."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def interpreter_version(interpreter: str) -> str:
    """The launcher's interpreter version (may differ from the one running this)."""
    out = subprocess.run([interpreter, "-I", "-S", "-c", "import sys; print(sys.version)"],
                         capture_output=True, text=True, check=False).stdout
    return out.split()[0] if out else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200,
                        help="interleaved runs of each pipe variant (default 200)")
    parser.add_argument("--sessions", type=int, default=300,
                        help="sessions per tcpserver concurrency level (default 300)")
    parser.add_argument("--connections", type=int, default=200,
                        help="sequential connections for banner latency (default 200)")
    args = parser.parse_args()

    interpreter, flags, paths = read_launcher(LAUNCHER)
    notes = []
    if os.path.realpath(interpreter) != interpreter or interpreter.endswith("/env"):
        notes.append(f"launcher shebang {interpreter} is not the real binary "
                     f"({os.path.realpath(interpreter)}): shims cost 85-140 ms")
    if "".join(flags).lstrip("-") not in ("IS", "SI"):
        notes.append(f"launcher flags are {flags}, expected -IS")
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-bench.") as tmp:
        workdir = Path(tmp)
        control, sink = write_fixture(workdir)

        print(f"[1/4] CPU on pipes, {args.iterations} interleaved runs each ...", flush=True)
        pipes = measure_pipes(interpreter, paths, control, sink, args.iterations)
        print("[2/4] imports of a plain session ...", flush=True)
        imports = measure_imports(interpreter, paths, control, sink)

        print(f"[3/4] tcpserver throughput, {args.sessions} sessions per level ...", flush=True)
        throughput: list[tuple[int, float, float, float]] = []
        for level in CONCURRENCY_LEVELS:  # one tcpserver per level: server CPU per level
            with tcpserver(control, sink, workdir) as (port, server_cpu):
                rate, client_ms = run_clients(port, level, args.sessions)
            throughput.append((level, rate, server_cpu() * 1000.0 / args.sessions, client_ms))
        print(f"[4/4] banner latency, {args.connections} connections ...", flush=True)
        with tcpserver(control, sink, workdir) as (port, server_cpu):
            banners = banner_latencies(port, args.connections)
        banner_cpu_ms = server_cpu() * 1000.0 / (args.connections + 1)

    med = {name: statistics.median(v) for name, v in pipes.items()}
    mean = {name: statistics.fmean(v) for name, v in pipes.items()}
    ratio = med["session"] / med["bare"]
    ratio_no_sink = (med["session"] - med["sink"]) / med["bare"]

    rule = "-" * 78
    print()
    print("qmail-esmtpd benchmark")
    print(rule)
    print(f"date         {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"host         {platform.node()}  {os.cpu_count()} CPUs  {platform.release()}")
    version = interpreter_version(interpreter)
    print(f"interpreter  {interpreter} {' '.join(flags)}  (Python {version})")
    print(f"launcher     {LAUNCHER}")
    print(f"session      EHLO, MAIL, RCPT, DATA {MESSAGE_SIZE} B, QUIT; "
          "qmail-queue = /bin/sh sink (exec cat)")
    print(rule)
    print("1. CPU per plain session on pipes (user+sys incl. children), ms")
    print(f"   {'':34} {'median':>8} {'mean':>8}")
    labels = (
        ("session", "qmail-esmtpd session (incl. sink)"),
        ("bare", "bare python -I -S -c pass"),
        ("import", "python -I -S + import cli"),
        ("sink", "qmail-queue sink alone"),
    )
    for name, label in labels:
        print(f"   {label:34} {med[name]:8.2f} {mean[name]:8.2f}")
    print(f"   {'session minus sink':34} {med['session'] - med['sink']:8.2f}")
    print(f"   imports over bare start    {med['import'] - med['bare']:6.2f} ms;  "
          f"session work over imports {med['session'] - med['sink'] - med['import']:6.2f} ms")
    print(f"   ratio qmail-esmtpd / bare  {ratio:6.2f}   (incl. sink)    target <= {TARGET_RATIO}")
    print(f"   ratio qmail-esmtpd / bare  {ratio_no_sink:6.2f}   (excl. sink)    "
          f"target <= {TARGET_RATIO}")
    print(rule)
    forbidden = imports.forbidden
    print("2. imports in a plain session (-X importtime, wall time)")
    print(f"   forbidden modules imported: {', '.join(forbidden) if forbidden else 'none'}")
    print(f"   (checked: {', '.join(FORBIDDEN)})")
    print(f"   qmail_esmtpd: {imports.package_modules} modules, "
          f"{imports.package_total_ms:.2f} ms incl. what they import, "
          f"{imports.package_self_ms:.2f} ms own code")
    extra_text = ", ".join(f"{name} {ms:.2f}" for name, ms in imports.extra_stdlib) or "none"
    print(textwrap.fill(f"beyond a bare start (ms self): {extra_text}", width=78,
                        initial_indent="   ", subsequent_indent="     "))
    print(rule)
    print("3. sessions/s through tcpserver (raw-socket client threads in this process)")
    print(f"   {'concurrency':>11} {'sessions/s':>11} {'server CPU ms/session':>22}"
          f" {'client CPU ms/session':>22}")
    for level, rate, server_ms, client_ms in throughput:
        print(f"   {level:>11} {rate:>11.1f} {server_ms:>22.2f} {client_ms:>22.2f}")
    print(f"   (server CPU: tcpserver + qmail-esmtpd + sink; {os.cpu_count()} CPUs shared with"
          " the client)")
    print(rule)
    print(f"4. connect() to full banner through tcpserver, {args.connections} sequential")
    print(f"   median {statistics.median(banners):6.2f} ms   p90 {p90(banners):6.2f} ms"
          f"   target: median < {TARGET_BANNER_MS:g} ms")
    print(f"   server CPU per banner+QUIT connection (tcpserver incl.): {banner_cpu_ms:.2f} ms")
    print(rule)
    for note in notes:
        print(f"note: {note}")
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, subprocess.TimeoutExpired) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
