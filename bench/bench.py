"""Benchmark qmail-esmtpd's per-connection cost and print the figures.

tcpserver starts one qmail-esmtpd per connection, so what matters is the CPU
and latency of a whole short session compared with the floor for any Python
server: a bare interpreter start.  This script measures, in one run:

1. CPU per plain SMTP session on pipes, without and with $AUTHDB set (AUTH
   offered, never used), interleaved with a bare `python -I -S -c pass`, an
   import-only start, the qmail-queue sink alone and, less often, a session
   that authenticates with AUTH PLAIN against PostgreSQL;
2. where the CPU of an AUTH session goes (imports, argon2id, database);
3. which heavy modules a plain session imports, and what our imports cost;
4. sessions per second through real tcpserver at concurrency 1, 4 and 16,
   and for AUTH sessions at concurrency 4;
5. connect-to-banner latency through tcpserver.

It prints figures with their targets and asserts nothing; it stops with an
error only when the server misbehaves (so a broken server cannot look fast).
The AUTH figures start a throw-away PostgreSQL cluster (tests/pgcluster.py)
and need the virtualenv's psycopg2 and passlib; `--no-auth` leaves them out
and needs the standard library only.  Run from the repository root:
`make bench`.
"""

from __future__ import annotations

import argparse
import ast
import base64
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / ".venv" / "bin" / "qmail-esmtpd"

ME = "mx.example.com"
RCPTHOSTS = "example.com"
MESSAGE_SIZE = 4096
FORBIDDEN = ("psycopg2", "passlib", "ssl", "email", "subprocess", "re", "typing", "logging")
CONCURRENCY_LEVELS = (1, 4, 16)
AUTH_CONCURRENCY = 4
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

# The AUTH session: the same, but it authenticates first and relays to a
# domain outside rcpthosts, which only the AUTH allows.
AUTH_USER = "bench@example.com"
AUTH_PASSWORD = "correct horse battery staple"
AUTH_SENDLIMIT = 10**9  # not 0: with a limit the count is read at MAIL, as in production
AUTH_PLAIN = (b"AUTH PLAIN " + base64.b64encode(f"\0{AUTH_USER}\0{AUTH_PASSWORD}".encode())
              + b"\r\n")
AUTH_COMMANDS = (
    COMMANDS[0],
    (AUTH_PLAIN, b"235"),
    COMMANDS[1],
    (b"RCPT TO:<c@elsewhere.example>\r\n", b"250"),
    COMMANDS[3],
)
AUTH_SESSION_INPUT = b"".join(c for c, _ in AUTH_COMMANDS) + MESSAGE + DATA_END + QUIT
AUTH_EHLO = b"250 AUTH LOGIN PLAIN"


def check_session_output(out: bytes, status: int, what: str, auth_offered: bool = False,
                         auth_used: bool = False) -> None:
    """Refuse to count a session that did not greet, queue and say goodbye.

    `auth_offered`: EHLO must advertise AUTH; `auth_used`: AUTH must succeed.
    """
    lines = out.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    problems = []
    if status != 0:
        problems.append(f"exit status {status}")
    if not lines or not lines[0].startswith(b"220 "):
        problems.append("no 220 greeting")
    codes = [line[:4] for line in lines]
    if auth_offered and AUTH_EHLO not in lines:
        problems.append("EHLO does not offer AUTH")
    if not auth_offered and AUTH_EHLO in lines:
        problems.append("EHLO offers AUTH")
    if auth_used and b"235 " not in codes:
        problems.append("AUTH PLAIN failed (no 235)")
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


# --- the PostgreSQL cluster behind AUTH -------------------------------------


@dataclass
class AuthDB:
    """A running throw-away cluster holding one AUTH user."""

    conninfo: str  # what $AUTHDB gets: the least-privilege role qmaild
    backends: Backends


@contextmanager
def auth_database() -> Iterator[AuthDB]:
    """tests/pgcluster.py's cluster with the schema, grants and user; always destroyed."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    try:
        import pgcluster

        from qmail_esmtpd.passwords import context
    except ImportError as e:
        raise BenchError(f"the AUTH figures need psycopg2 and passlib ({e}): run with "
                         ".venv/bin/python, or pass --no-auth") from None
    try:
        cluster = pgcluster.Cluster()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        raise BenchError(f"cannot start PostgreSQL from {pgcluster.PGBIN} ($PGBIN): {e} "
                         "(--no-auth skips the AUTH figures)") from None
    try:
        name = cluster.new_database()
        conn = cluster.connect(name)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO poppass (name, pw, sendlimit) VALUES (%s, %s, %s)",
                            (AUTH_USER, context().hash(AUTH_PASSWORD), AUTH_SENDLIMIT))
                # Autovacuum workers would be counted as backend CPU.
                cur.execute("ALTER SYSTEM SET autovacuum = off")
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        yield AuthDB(cluster.dsn(name, "qmaild"), Backends(postmaster))
    finally:
        cluster.destroy()


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold blanks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


class Backends:
    """CPU of PostgreSQL backends, which are the postmaster's children, not ours.

    A backend exits when its client disconnects and the postmaster reaps it,
    so its CPU ends up in the postmaster's cutime+cstime.  The kernel reports
    those in clock ticks (usually 10 ms): only totals over many sessions mean
    something, and while they are taken nothing else may connect.
    """

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float | None:
        """Seconds of all reaped children so far; None where /proc cannot tell."""
        try:
            fields = proc_stat(self.postmaster)
            return (int(fields[13]) + int(fields[14])) / self.tick
        except (OSError, ValueError, IndexError):
            return None

    def busy(self) -> bool:
        """Is a client backend alive, or an exited child not reaped yet?"""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = proc_stat(int(entry.name))
                if int(fields[1]) != self.postmaster:
                    continue
                if fields[0] == "Z":
                    return True
                title = Path(entry.path, "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if b"[local]" in title:  # ps title of a client backend on the unix socket
                return True
        return False

    def settled_cpu(self) -> float | None:
        """cpu(), once every backend of a finished session has been reaped."""
        deadline = time.monotonic() + 5.0
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.cpu()


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


def auth_env(env: dict[str, str], auth: AuthDB) -> dict[str, str]:
    """The same client, on a server configured for AUTH against the cluster."""
    return {**env, "AUTHDB": auth.conninfo}


def measure_pipes(interpreter: str, paths: list[str], control: Path, sink: Path,
                  iterations: int, auth: AuthDB | None = None, auth_iterations: int = 0
                  ) -> tuple[dict[str, list[float]], float | None]:
    """Interleave the variants so drift and noise hit them all alike.

    With `auth`, a plain session with $AUTHDB set joins every iteration and
    the AUTH session, ten times dearer, `auth_iterations` of them spread
    evenly.  Returns the samples (ms) and the PostgreSQL backend CPU per AUTH
    session (ms; None if unknown): only AUTH sessions connect meanwhile.
    """
    env = server_env(control, sink)
    import_only = f"import sys; sys.path[:0] = {paths!r}; import qmail_esmtpd.cli"

    def session(stdin: bytes, run_env: dict[str, str], what: str, auth_offered: bool = False,
                auth_used: bool = False) -> Callable[[], float]:
        def run() -> float:
            cpu, status, out = run_measured([str(LAUNCHER)], stdin, run_env)
            check_session_output(out, status, what, auth_offered, auth_used)
            return cpu
        return run

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
        "session": session(SESSION_INPUT, env, "qmail-esmtpd on pipes"),
    }
    if auth is not None:
        variants["authdb"] = session(SESSION_INPUT, auth_env(env, auth),
                                     "qmail-esmtpd on pipes, AUTHDB set", auth_offered=True)
    variants.update({
        "bare": bare,
        "import": imports,
        "sink": lambda: run_sink_alone(sink, env),
    })
    sparse = 0
    if auth is not None and auth_iterations > 0:
        variants["auth"] = session(AUTH_SESSION_INPUT, auth_env(env, auth),
                                   "AUTH session on pipes", auth_offered=True, auth_used=True)
        sparse = min(auth_iterations, iterations)
    for run in variants.values():  # warm the page cache and __pycache__
        for _ in range(3):
            run()
    backend_before = auth.backends.settled_cpu() if sparse else None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(iterations):
        order = list(variants)
        if i % 2 and "authdb" in variants:  # neither plain variant always runs first
            order[0], order[1] = order[1], order[0]
        for name in order:
            if name == "auth" and (i + 1) * sparse // iterations == i * sparse // iterations:
                continue
            samples[name].append(variants[name]() * 1000.0)
    backend_ms = None
    if auth is not None and backend_before is not None:
        backend_after = auth.backends.settled_cpu()
        if backend_after is not None:
            backend_ms = (backend_after - backend_before) * 1000.0 / len(samples["auth"])
    return samples, backend_ms


# The split of an AUTH session: the server's own code paths, one step at a
# time, in a fresh interpreter started like the launcher; CPU per step.
SPLIT_STEPS = (
    ("qmail_esmtpd imports of a plain session", "import qmail_esmtpd.cli"),
    ("+ auth, authdb, limit modules",
     "from qmail_esmtpd import auth, authdb, limit, passwords, pgdb"),
    ("import psycopg2", "import psycopg2, psycopg2.extensions"),
    ("connect + SELECT poppass (client side)",
     "db = pgdb.Database(CONNINFO); row = db.query(authdb.USER_QUERY, (USER,))[0]"),
    ("import passlib.context", "import passlib.context"),
    ("passwords.context(): loads the handlers",
     "ctx = passwords.context()"),
    ("first verify_and_update (argon2id)",
     "ok, _ = ctx.verify_and_update(PASSWORD, row[1])"),
    ("sendcounts: today's count + charge",
     "sent = limit.DailyLimit(db, row[0], row[3], print); "
     "ok = ok and sent.allows() and bool(sent.charge())"),
    ("argon2id verify alone (a second call)",
     "ctx.verify_and_update(PASSWORD, row[1])"),
)


def measure_auth_split(interpreter: str, paths: list[str], auth: AuthDB, runs: int
                       ) -> dict[str, list[float]]:
    """CPU ms of each SPLIT_STEPS step (time.process_time), `runs` times."""
    lines = [
        "import sys, time",
        f"sys.path[:0] = {paths!r}",
        f"CONNINFO, USER, PASSWORD = {auth.conninfo!r}, {AUTH_USER!r}, "
        f"{AUTH_PASSWORD.encode()!r}",
        "marks = [time.process_time()]",
    ]
    for _, code in SPLIT_STEPS:
        lines += [code, "marks.append(time.process_time())"]
    lines += ["db.close()", "print(ok, [(b - a) * 1000.0 for a, b in zip(marks, marks[1:])])"]
    code = "\n".join(lines)
    samples: dict[str, list[float]] = {label: [] for label, _ in SPLIT_STEPS}
    for _ in range(runs):
        proc = subprocess.run([interpreter, "-I", "-S", "-c", code], capture_output=True,
                              text=True, check=False, timeout=CLIENT_TIMEOUT)
        ok, times = (proc.stdout.split(" ", 1) + [""])[:2]
        if proc.returncode != 0 or ok != "True":
            raise BenchError(f"AUTH split run failed ({proc.returncode}): "
                             f"{(proc.stdout + proc.stderr)[-600:]}")
        for (label, _), ms in zip(SPLIT_STEPS, ast.literal_eval(times), strict=True):
            samples[label].append(ms)
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
    self_ms: dict[str, float]  # every module imported: self ms


def measure_imports(interpreter: str, paths: list[str], control: Path, sink: Path,
                    auth: AuthDB | None = None) -> ImportReport:
    """Run the launcher's code under -X importtime (-I would ignore the env var).

    With `auth`, $AUTHDB is set: AUTH is offered, and must not cost imports.
    """
    env = server_env(control, sink)
    if auth is not None:
        env = auth_env(env, auth)
    code = (f"import sys; sys.path[:0] = {paths!r}; "
            "from qmail_esmtpd.cli import main; sys.exit(main())")
    proc = subprocess.run([interpreter, "-I", "-S", "-X", "importtime", "-c", code],
                          input=SESSION_INPUT, capture_output=True, env=env, check=False,
                          timeout=CLIENT_TIMEOUT)
    check_session_output(proc.stdout, proc.returncode, "qmail-esmtpd under -X importtime",
                         auth_offered=auth is not None)
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
        self_ms={r[0]: r[1] / 1000.0 for r in rows},
    )


@dataclass
class ImportNode:
    """One `-X importtime` row with the imports it triggered."""

    name: str
    cumulative_us: int
    children: list[ImportNode]


def import_tree(rows: list[tuple[str, int, int, int]]) -> list[ImportNode]:
    """The top-level imports as trees (importtime lists children before parents)."""
    pending: dict[int, list[ImportNode]] = {}
    for name, _, cumulative, depth in rows:
        node = ImportNode(name, cumulative, pending.pop(depth + 1, []))
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def foreign_imports(node: ImportNode) -> list[ImportNode]:
    """The first imports below `node` from outside its top-level package."""
    package = node.name.split(".")[0]
    found = []
    for child in node.children:
        if child.name.split(".")[0] == package:
            found += foreign_imports(child)
        else:
            found.append(child)
    return found


def heavy_auth_imports(interpreter: str, paths: list[str]) -> list[str]:
    """What the AUTH path imports beyond a plain session, heaviest first (wall ms).

    One `-X importtime` run of the imports SPLIT_STEPS makes, context()
    included (it imports the handlers); each top-level import is shown with
    the heaviest modules from other packages that it pulls in.
    """
    marker = "-- plain session above --"
    code = (f"import sys; sys.path[:0] = {paths!r}; import qmail_esmtpd.cli; "
            f"sys.stderr.write({marker!r} + '\\n'); "
            "from qmail_esmtpd import auth, authdb, limit, passwords; "
            "import psycopg2, psycopg2.extensions, passlib.context; passwords.context()")
    proc = subprocess.run([interpreter, "-I", "-S", "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=False, timeout=CLIENT_TIMEOUT)
    if proc.returncode != 0 or marker not in proc.stderr:
        raise BenchError(f"AUTH imports failed: {proc.stderr[-600:]}")
    roots = import_tree(parse_importtime(proc.stderr.partition(marker)[2]))
    found = []
    for root in sorted(roots, key=lambda n: n.cumulative_us, reverse=True):
        if root.cumulative_us < 1000:
            continue
        inner = sorted(foreign_imports(root), key=lambda n: n.cumulative_us, reverse=True)
        inner_text = ", ".join(f"{n.name} {n.cumulative_us / 1000.0:.1f}"
                               for n in inner[:3] if n.cumulative_us >= 1000)
        found.append(f"{root.name} {root.cumulative_us / 1000.0:.1f}"
                     + (f" (of which {inner_text})" if inner_text else ""))
    return found


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


def tcp_session(port: int, commands: tuple[tuple[bytes, bytes], ...] = COMMANDS) -> None:
    """The same session as on pipes, one command at a time."""
    with connect(port) as sock:
        reader = Reader(sock)
        reader.reply(b"220 ")
        for command, code in commands:
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
def tcpserver(control: Path, sink: Path, workdir: Path, auth: AuthDB | None = None
              ) -> Iterator[tuple[int, Callable[[], float]]]:
    """Run tcpserver in its own process group; always kill the whole group.

    Yields the port and a function giving server-side CPU so far; that is only
    known once tcpserver has been reaped, so it is read after the block ends.
    """
    port = free_port()
    log = workdir / f"tcpserver-{port}.log"
    env = {k: v for k, v in server_env(control, sink).items() if not k.startswith("TCP")}
    if auth is not None:
        env = auth_env(env, auth)
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
    # A successful AUTH is logged on every AUTH session; anything else is news.
    text = "\n".join(line for line in log.read_text(errors="replace").strip().splitlines()
                     if not line.startswith("qmail-esmtpd: auth ok "))
    if text:
        print(f"note: tcpserver/qmail-esmtpd stderr:\n{text[-600:]}", file=sys.stderr)


def self_cpu() -> float:
    """user+sys seconds of this process (the client threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_clients(port: int, concurrency: int, sessions: int,
                commands: tuple[tuple[bytes, bytes], ...] = COMMANDS) -> tuple[float, float]:
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
                tcp_session(port, commands)
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


@dataclass
class AuthFigures:
    """Everything measured about AUTH, for the report."""

    backend_pipes_ms: float | None  # PostgreSQL backend CPU per AUTH session on pipes
    split: dict[str, list[float]]  # SPLIT_STEPS label -> CPU ms per run
    heavy_imports: list[str]
    imports: ImportReport  # a plain session with $AUTHDB set
    tcp: tuple[float, float, float] | None = None  # sessions/s, server ms, client ms
    backend_tcp_ms: float | None = None


def print_plain_with_authdb(med: dict[str, float], pipes: dict[str, list[float]]) -> None:
    """Section 1's lines on the plain session with $AUTHDB set."""
    print("   with AUTHDB set (AUTH offered in EHLO, never used), interleaved:")
    print(f"   ratio with AUTHDB / bare   {med['authdb'] / med['bare']:6.2f}   (incl. sink)    "
          f"target <= {TARGET_RATIO}")
    print(f"   ratio with AUTHDB / bare   {(med['authdb'] - med['sink']) / med['bare']:6.2f}   "
          f"(excl. sink)    target <= {TARGET_RATIO}")
    paired = statistics.median(a - b for a, b in zip(pipes["authdb"], pipes["session"],
                                                     strict=True))
    print(f"   with / without AUTHDB      {med['authdb'] / med['session']:6.2f}   "
          f"(medians {med['authdb']:.2f} / {med['session']:.2f} ms; "
          f"paired difference {paired:+.2f} ms)")


def print_auth_section(med: dict[str, float], mean: dict[str, float], runs: int,
                       auth: AuthFigures) -> None:
    """Section 1b: the AUTH session on pipes and where its CPU goes."""
    print(f"1b. CPU per AUTH PLAIN session on pipes, {runs} runs interleaved with the above, ms")
    print("   EHLO, AUTH PLAIN (argon2id, default parameters), MAIL, RCPT outside rcpthosts,")
    print(f"   DATA {MESSAGE_SIZE} B, QUIT; AUTHDB = throw-away PostgreSQL over a unix socket")
    print(f"   {'':42} {'median':>8} {'mean':>8}")
    print(f"   {'AUTH session (incl. sink)':42} {med['auth']:8.2f} {mean['auth']:8.2f}")
    print(f"   {'over the plain session with AUTHDB set':42} {med['auth'] - med['authdb']:+8.2f}")
    print(f"   ratio AUTH session / bare  {med['auth'] / med['bare']:6.2f}")
    backend = auth.backend_pipes_ms
    print(f"   {'+ PostgreSQL backend (mean, not above)':42} "
          + (f"{'':8} {backend:8.2f}" if backend is not None else f"{'n/a':>17}"))
    print("     (the backend is the postmaster's child, not ours: from its cutime+cstime)")
    split = {label: statistics.median(v) for label, v in auth.split.items()}
    runs_split = len(next(iter(auth.split.values())))
    print(f"   where it goes: medians of {runs_split} runs of the server's code step by step")
    print("   (time.process_time in one interpreter started like the launcher)")
    steps = [label for label, _ in SPLIT_STEPS]
    rows = [("bare interpreter start (from above)", med["bare"])]
    rows += [(label, split[label]) for label in steps[:-1]]
    rows.append(("qmail-queue sink (from above)", med["sink"]))
    rest = med["auth"] - sum(ms for _, ms in rows)
    rows.append(("rest: protocol, DATA, exit (difference)", rest))
    for label, ms in rows:
        print(f"     {label:40} {ms:8.2f}  {ms * 100.0 / med['auth']:3.0f}%")
    imports_ms = med["bare"] + sum(split[label] for label in steps[:3] + steps[4:6])
    verify_ms = split[steps[6]]
    print(f"   = interpreter + imports {imports_ms:.1f}, password check {verify_ms:.1f},")
    print(f"     database client {split[steps[3]] + split[steps[7]]:.1f}, "
          f"sink and rest {med['sink'] + rest:.1f}")
    print(f"   {steps[8]:42} {split[steps[8]]:8.2f}")
    print(textwrap.fill("heaviest AUTH imports (-X importtime, wall ms): "
                        + "; ".join(auth.heavy_imports), width=78,
                        initial_indent="   ", subsequent_indent="     "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200,
                        help="interleaved runs of each pipe variant (default 200)")
    parser.add_argument("--auth-iterations", type=int, default=60,
                        help="of those, runs with an AUTH session (default 60)")
    parser.add_argument("--split-runs", type=int, default=20,
                        help="runs of the step-by-step AUTH split (default 20)")
    parser.add_argument("--sessions", type=int, default=300,
                        help="sessions per tcpserver concurrency level (default 300)")
    parser.add_argument("--auth-sessions", type=int, default=100,
                        help=f"AUTH sessions through tcpserver at concurrency {AUTH_CONCURRENCY}"
                             " (default 100, 0: none)")
    parser.add_argument("--connections", type=int, default=200,
                        help="sequential connections for banner latency (default 200)")
    parser.add_argument("--no-auth", action="store_true",
                        help="no PostgreSQL, no AUTH figures (standard library only)")
    args = parser.parse_args()
    # A plain kill must still stop PostgreSQL: SystemExit runs the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    interpreter, flags, paths = read_launcher(LAUNCHER)
    notes = []
    if os.path.realpath(interpreter) != interpreter or interpreter.endswith("/env"):
        notes.append(f"launcher shebang {interpreter} is not the real binary "
                     f"({os.path.realpath(interpreter)}): shims cost 85-140 ms")
    if "".join(flags).lstrip("-") not in ("IS", "SI"):
        notes.append(f"launcher flags are {flags}, expected -IS")
    started = time.monotonic()

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="qmail-esmtpd-bench.")))
        control, sink = write_fixture(workdir)
        db = None
        if not args.no_auth:
            print("[0/5] throw-away PostgreSQL cluster for AUTH ...", flush=True)
            db = stack.enter_context(auth_database())
        auth_runs = min(args.auth_iterations, args.iterations) if db else 0

        print(f"[1/5] CPU on pipes, {args.iterations} interleaved runs each"
              + (f" ({auth_runs} with AUTH)" if db else "") + " ...", flush=True)
        pipes, backend_pipes_ms = measure_pipes(interpreter, paths, control, sink,
                                                args.iterations, db, auth_runs)
        auth: AuthFigures | None = None
        if db is not None:
            print(f"[2/5] the AUTH session step by step, {args.split_runs} runs ...", flush=True)
            auth = AuthFigures(
                backend_pipes_ms=backend_pipes_ms,
                split=measure_auth_split(interpreter, paths, db, max(args.split_runs, 1)),
                heavy_imports=heavy_auth_imports(interpreter, paths),
                imports=measure_imports(interpreter, paths, control, sink, db),
            )
        print("[3/5] imports of a plain session ...", flush=True)
        imports = measure_imports(interpreter, paths, control, sink)

        print(f"[4/5] tcpserver throughput, {args.sessions} sessions per level"
              + (f", {args.auth_sessions} AUTH sessions" if auth and args.auth_sessions else "")
              + " ...", flush=True)
        throughput: list[tuple[int, float, float, float]] = []
        for level in CONCURRENCY_LEVELS:  # one tcpserver per level: server CPU per level
            with tcpserver(control, sink, workdir) as (port, server_cpu):
                rate, client_ms = run_clients(port, level, args.sessions)
            throughput.append((level, rate, server_cpu() * 1000.0 / args.sessions, client_ms))
        if db is not None and auth is not None and args.auth_sessions > 0:
            backend_before = db.backends.settled_cpu()
            with tcpserver(control, sink, workdir, db) as (port, server_cpu):
                rate, client_ms = run_clients(port, AUTH_CONCURRENCY, args.auth_sessions,
                                              AUTH_COMMANDS)
            auth.tcp = (rate, server_cpu() * 1000.0 / args.auth_sessions, client_ms)
            backend_after = db.backends.settled_cpu()
            if backend_before is not None and backend_after is not None:
                auth.backend_tcp_ms = ((backend_after - backend_before) * 1000.0
                                       / args.auth_sessions)
        print(f"[5/5] banner latency, {args.connections} connections ...", flush=True)
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
        ("authdb", "same, AUTHDB set (AUTH offered)"),
        ("bare", "bare python -I -S -c pass"),
        ("import", "python -I -S + import cli"),
        ("sink", "qmail-queue sink alone"),
    )
    for name, label in labels:
        if name in med:
            print(f"   {label:34} {med[name]:8.2f} {mean[name]:8.2f}")
    print(f"   {'session minus sink':34} {med['session'] - med['sink']:8.2f}")
    print(f"   imports over bare start    {med['import'] - med['bare']:6.2f} ms;  "
          f"session work over imports {med['session'] - med['sink'] - med['import']:6.2f} ms")
    print(f"   ratio qmail-esmtpd / bare  {ratio:6.2f}   (incl. sink)    target <= {TARGET_RATIO}")
    print(f"   ratio qmail-esmtpd / bare  {ratio_no_sink:6.2f}   (excl. sink)    "
          f"target <= {TARGET_RATIO}")
    if "authdb" in med:
        print_plain_with_authdb(med, pipes)
    if auth is not None and "auth" in med:
        print(rule)
        print_auth_section(med, mean, len(pipes["auth"]), auth)
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
    if auth is not None:
        with_db = auth.imports
        added = ", ".join(f"{name} {ms:.2f}" for name, ms in with_db.self_ms.items()
                          if name not in imports.self_ms) or "none"
        print("   with AUTHDB set: forbidden modules imported: "
              + (", ".join(with_db.forbidden) or "none"))
        print(textwrap.fill(f"modules beyond the plain session (ms self): {added}", width=78,
                            initial_indent="     ", subsequent_indent="       "))
    print(rule)
    print("3. sessions/s through tcpserver (raw-socket client threads in this process)")
    print(f"   {'concurrency':>11} {'sessions/s':>11} {'server CPU ms/session':>22}"
          f" {'client CPU ms/session':>22}")
    for level, rate, server_ms, client_ms in throughput:
        print(f"   {level:>11} {rate:>11.1f} {server_ms:>22.2f} {client_ms:>22.2f}")
    if auth is not None and auth.tcp is not None:
        rate, server_ms, client_ms = auth.tcp
        print(f"   {f'{AUTH_CONCURRENCY}, AUTH':>11} {rate:>11.1f} {server_ms:>22.2f}"
              f" {client_ms:>22.2f}   ({args.auth_sessions} sessions)")
        backend = auth.backend_tcp_ms
        print("   AUTH: + PostgreSQL backend CPU per session (mean, not in server CPU): "
              + (f"{backend:.2f} ms" if backend is not None else "n/a"))
    print(f"   (server CPU: tcpserver + qmail-esmtpd + sink; {os.cpu_count()} CPUs shared with"
          " the client" + (",\n    and with PostgreSQL for AUTH)" if auth and auth.tcp else ")"))
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
