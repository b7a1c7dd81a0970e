"""Figure 6: qmail-esmtpd-server beside Postfix, C qmail-smtpd, tcpserver mode, the floors.

The servers (servers()): C qmail-smtpd under tcpserver, from $QMAIL_SMTPD_C
(a binary built with conf-qmail = $QMAIL_SMTPD_C_HOME, by default two
folders up; the bench writes its control/me and rcpthosts; without it that
row is skipped); Postfix, an own instance on loopback (bench/postfix.py;
skipped, with a note, where it is not installed); qmail-esmtpd-server
forking per connection, and with workers that serve up to MAX_USE
connections each (its -m option; skipped, with a note, by a server that has
none); the floors of the two designs, fixed replies and nothing else:
bench/forkfloor.py (a fork per connection) and bench/reusefloor.py
(WORKERS pre-forked workers, MAX_USE connections each); and qmail-esmtpd
under tcpserver.  All but Postfix queue to the same static C stand-in for
qmail-queue (bench/queuesink.c), so the rows differ only in the servers.

The plain sessions/s and CPU side by side are bench/servers.py's.  Here:
CPU per STARTTLS session and per AUTH PLAIN over STARTTLS session (the
bench's own client, TLS 1.3, the bench's RSA-2048 certificate), counted
over the server's whole process tree (bench/proctree.py) between two
points after a warm-up; the argon2id verify alone, in this process; and
the memory of the qmail-esmtpd-server process with AUTH preloaded.
"""

import os
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.forkserver import ForkServer
from tests.harness.system_users import let_service_user_in
from tests.harness.tcpserver import TcpServer

from . import BenchError, postfix, progress
from .proctree import settled_cpu
from .session import AUTH_COMMANDS, AUTH_PASSWORD, COMMANDS, EHLO
from .setup import Bench
from .tcp import Reader, connect, transaction

MAX_USE = 100  # connections per worker: Postfix's default max_use
WORKERS = 4  # the reuse floor's pool

C_SMTPD = "C qmail-smtpd, tcpserver"
SERVER = "qmail-esmtpd-server -m 0"  # a fork per connection
WORKER_SERVER = f"qmail-esmtpd-server -m {MAX_USE}"  # workers (the default)
CHECKING_SERVER = f"{WORKER_SERVER}, checkrecipients"
FLOOR = "floor: fork, fixed replies"
REUSE_FLOOR = f"floor: {WORKERS} workers, fixed replies"
TCPSERVER = "qmail-esmtpd, tcpserver"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Floor:
    """bench/forkfloor.py or bench/reusefloor.py (`script` and its arguments)
    on a free port: TcpServer's .port, .proc, .stop."""

    def __init__(self, interpreter: str, env: dict, *script: str) -> None:
        self.proc = subprocess.Popen(
            [interpreter, "-I", "-S", str(Path(__file__).with_name(script[0])), *script[1:]],
            env={"PATH": "/usr/bin:/bin", **env}, stdout=subprocess.PIPE,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise BenchError(f"bench/{script[0]} did not start")
        self.port = int(line)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


Server = TcpServer | ForkServer | Floor | postfix.Postfix


def root_pid(server: Server) -> int:
    """The process whose tree is the server (Postfix's master is not our child)."""
    return server.pid if isinstance(server, postfix.Postfix) else server.proc.pid


def accepted(server: Server) -> bytes:
    """How the server's reply to the end of DATA starts."""
    return postfix.ACCEPTED if isinstance(server, postfix.Postfix) else b"250 ok"


@dataclass
class Lineup:
    """The servers running side by side (name -> server, in the order of the
    report) and why any row is missing."""

    servers: dict[str, Server] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def queue_sink(bench: Bench) -> tuple[Path, str | None]:
    """bench/queuesink.c built static in the workdir (once), or the /bin/sh
    sink and a note saying why not."""
    binary = bench.workdir / "queuesink"
    if not binary.exists():
        try:
            subprocess.run(["cc", "-static", "-O2", "-o", str(binary),
                            str(Path(__file__).with_name("queuesink.c"))],
                           check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            return bench.sink, f"qmail-queue stand-in is the /bin/sh sink (no static build: {e})"
    return binary, None


def start_server(bench: Bench, env: dict, max_use: int) -> ForkServer:
    """qmail-esmtpd-server with -m `max_use` (0: a fork per connection)."""
    return ForkServer(bench.workdir, ":allow\n", env, verbose=False,
                      options=["-m", str(max_use)])


@contextmanager
def servers(bench: Bench, authdb: bool = False, tls: bool = False) -> Iterator[Lineup]:
    """The servers side by side, started in the order of the report, all stopped after.

    Plain (neither `authdb` nor `tls`): every row.  `tls`: Postfix offers
    STARTTLS with the bench's certificate; no floors, no C qmail-smtpd.
    `authdb`: qmail-esmtpd's rows only.
    """
    env = {k: v for k, v in bench.env(authdb, tls).items() if not k.startswith("TCP")}
    sink, note = queue_sink(bench)
    env["QMAILQUEUE"] = str(sink)
    lineup = Lineup(notes=[note] if note else [])
    running = lineup.servers
    if os.geteuid() == 0:  # the sessions run as nobody (Postfix as postfix): let them in
        os.chmod(bench.workdir, 0o755)
        (bench.tls_control / "servercert.pem").chmod(0o644)
        if authdb and "host=/" in env["AUTHDB"]:  # the cluster's socket
            let_service_user_in(Path(env["AUTHDB"].split("host=")[1].split()[0]))
    try:
        c_program = os.environ.get("QMAIL_SMTPD_C")
        if c_program and not (authdb or tls):
            home = Path(os.environ.get("QMAIL_SMTPD_C_HOME",
                                       Path(c_program).resolve().parent.parent))
            (home / "control").mkdir(parents=True, exist_ok=True)
            for name in ("me", "rcpthosts"):
                (home / "control" / name).write_bytes((bench.control / name).read_bytes())
            running[C_SMTPD] = TcpServer(bench.workdir, ":allow\n", env, [c_program],
                                         verbose=False)
        elif not (authdb or tls):
            lineup.notes.append("no C row: set QMAIL_SMTPD_C to a qmail-smtpd binary")
        if not authdb:
            why = postfix.missing()
            if why:
                lineup.notes.append(f"no Postfix row: {why}")
            else:
                directory = Path(tempfile.mkdtemp(prefix="postfix.", dir=bench.workdir))
                directory.chmod(0o755)
                pem = bench.tls_control / "servercert.pem" if tls else None
                running[postfix.name()] = postfix.Postfix(directory, pem)
        running[SERVER] = start_server(bench, env, 0)
        running[WORKER_SERVER] = start_server(bench, env, MAX_USE)
        if not (authdb or tls):
            checking = {**env, "QMAIL_CONTROL": str(bench.rcptcheck_control)}  # users/cdb
            running[CHECKING_SERVER] = start_server(bench, checking, MAX_USE)
            running[FLOOR] = Floor(bench.launcher.interpreter, env, "forkfloor.py")
            running[REUSE_FLOOR] = Floor(bench.launcher.interpreter, env, "reusefloor.py",
                                         str(WORKERS), str(MAX_USE))
        running[TCPSERVER] = TcpServer(bench.workdir, ":allow\n", env,
                                       [bench.launcher.path], verbose=False)
        yield lineup
    finally:
        for server in running.values():
            server.stop()


def tls_session(port: int, commands: "tuple[tuple[bytes, bytes], ...]",
                context: ssl.SSLContext, accept: bytes = b"250 ok") -> None:
    """EHLO, STARTTLS, handshake, then `commands`, the message and QUIT inside TLS."""
    with connect(port) as sock:
        reader = Reader(sock)
        reader.reply(b"220 ")
        sock.sendall(EHLO[0])
        reader.reply(b"250")
        sock.sendall(b"STARTTLS\r\n")
        reader.reply(b"220 ")
        with context.wrap_socket(sock) as tls:
            transaction(tls, Reader(tls), commands, accept)


def cpu_per_session(server: Server, commands: "tuple[tuple[bytes, bytes], ...]",
                    sessions: int) -> float:
    """ms of CPU of the server's whole process tree per TLS session, after a warm-up of 3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(3):
        tls_session(server.port, commands, context, accepted(server))
    pid = root_pid(server)
    before = settled_cpu(pid)  # the warm-up's children reaped, its mail delivered
    for _ in range(sessions):
        tls_session(server.port, commands, context, accepted(server))
    return (settled_cpu(pid) - before) * 1000.0 / sessions


def argon2_verify_ms(runs: int = 10) -> tuple[float, float]:
    """The argon2id verify alone, medians in ms: (warm: its 19 MiB reused, in a
    process started as qmail-esmtpd-server starts itself, glibc's malloc in
    huge pages, where a worker verifies; cold: one verify in a fresh child
    of this process, as a tcpserver-mode session makes it, in 4 KB pages)."""
    import subprocess
    import sys

    from qmail_esmtpd.forkserver import HUGE_PAGES, TUNABLES

    warm = subprocess.run(
        [sys.executable, "-c", f"from bench.warm import verify_ms; print(verify_ms({runs}))"],
        env={**os.environ, TUNABLES: HUGE_PAGES}, cwd=Path(__file__).parent.parent,
        capture_output=True, text=True, check=True, timeout=600)
    return float(warm.stdout), verify_ms(runs, fresh_child=True)


def verify_ms(runs: int, fresh_child: bool = False) -> float:
    """Median ms of CPU of one argon2id verify, here or each in a fresh child."""
    import resource

    from qmail_esmtpd.auth.passwords import check, new_hash

    def cpu() -> float:
        if not fresh_child:
            return time.process_time()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    stored = new_hash(AUTH_PASSWORD.encode())
    times = []
    for _ in range(runs):
        before = cpu()
        if fresh_child:
            pid = os.fork()
            if pid == 0:
                os._exit(0 if check(AUTH_PASSWORD.encode(), stored)[0] else 1)
            ok = os.waitpid(pid, 0)[1] == 0
        else:
            ok = check(AUTH_PASSWORD.encode(), stored)[0]
        if not ok:
            raise BenchError("argon2id verify failed")
        times.append(cpu() - before)
    return sorted(times)[runs // 2] * 1000.0


def tls_cpu(bench: Bench, sessions: int, rounds: int = 2, with_auth: bool = True) -> None:
    """STARTTLS sessions' CPU, the servers taking turns `rounds` times; then
    (with the database and `with_auth`) AUTH PLAIN over STARTTLS."""
    progress(f"warm server: CPU of {rounds} x {sessions} STARTTLS sessions ...")
    plain: dict[str, list[float]] = {}
    with servers(bench, tls=True) as lineup:
        for _ in range(rounds):
            for name, server in lineup.servers.items():
                plain.setdefault(name, []).append(cpu_per_session(server, COMMANDS, sessions))
    print("   STARTTLS session (TLS 1.3, RSA-2048), server CPU ms/session over its process")
    print(f"   tree, {rounds} interleaved rounds of {sessions} (after 3): min-max")
    for name, values in plain.items():
        print(f"   {name:<36} {min(values):6.1f}-{max(values):.1f}")
    median = {name: sorted(values)[len(values) // 2] for name, values in plain.items()}
    ratio = median[SERVER] / median[TCPSERVER]
    print(f"   {SERVER} / tcpserver mode: {ratio:.2f} (target <= 0.40)")
    anchor = postfix.name()
    if anchor in median:
        for name in (SERVER, WORKER_SERVER):
            if name in median:
                print(f"   {name} / Postfix: {median[name] / median[anchor]:.2f}"
                      + (" (target <= 1)" if name == WORKER_SERVER else ""))
    for note in lineup.notes:
        print(f"   ({note})")
    if bench.auth is None or not with_auth:
        return
    progress(f"warm server: CPU of {sessions} AUTH-over-STARTTLS sessions ...")
    with servers(bench, authdb=True, tls=True) as lineup:
        auth = {name: cpu_per_session(server, AUTH_COMMANDS, sessions)
                for name, server in lineup.servers.items()}
        memory = rss_mb(root_pid(lineup.servers[SERVER]))
    verify, cold = argon2_verify_ms()
    print(f"   AUTH PLAIN over STARTTLS, server CPU ms/session ({sessions} sessions; "
          "PostgreSQL's own CPU is outside the tree, not counted):")
    for name, ms in auth.items():
        print(f"   {name:<36} {ms:6.1f}")
    print(f"   argon2id verify alone: {verify:.1f} ms warm, {cold:.1f} ms cold (a fresh process, "
          f"incl. its fork); {SERVER}'s AUTH session is "
          f"{auth[SERVER] - verify:+.1f} ms over the warm one (target <= 5)")
    if WORKER_SERVER in auth:
        tls, with_auth, verified = in_one_worker(bench, sessions)
        print(f"   in one worker (bench/inworker.py: the worker's code in one process, "
              f"{sessions} of each in turn,")
        print(f"   CPU of the serving thread): STARTTLS session {tls:.2f} ms, AUTH over "
              f"STARTTLS {with_auth:.2f} ms,")
        print(f"   argon2id verify {verified:.2f} ms: AUTH session - STARTTLS session - "
              f"verify = {with_auth - tls - verified:.2f} ms (target <= 2)")
    print(f"   {SERVER}'s memory (VmRSS, AUTH and TLS preloaded): {memory:.1f} MB")


def in_one_worker(bench: Bench, runs: int) -> tuple[float, float, float]:
    """bench/inworker.py's medians, in ms: STARTTLS session, AUTH over
    STARTTLS, verify; run with the server's malloc tunable, as a worker is."""
    import sys

    from qmail_esmtpd.forkserver import HUGE_PAGES, TUNABLES

    env = {**bench.env(authdb=True, tls=True), TUNABLES: HUGE_PAGES,
           "QMAILQUEUE": str(queue_sink(bench)[0])}
    done = subprocess.run([sys.executable, "-m", "bench.inworker", str(runs)], env=env,
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                          timeout=1200)
    figures = done.stderr.split()
    if done.returncode != 0 or len(figures) != 3:
        raise BenchError(f"bench/inworker.py: exit {done.returncode}: {done.stderr[-400:]}")
    tls, with_auth, verified = map(float, figures)
    return tls, with_auth, verified


def figures(bench: Bench, sessions: int, rounds: int = 4, tls_sessions: int = 0,
            with_auth: bool = True) -> None:
    """Figure 6: the servers side by side (plain), then their STARTTLS (and AUTH) CPU."""
    from .figures import section
    from .servers import side_by_side

    section("6. qmail-esmtpd-server beside Postfix, C qmail-smtpd, tcpserver mode")
    side_by_side(bench, sessions, rounds)
    tls_cpu(bench, tls_sessions or max(sessions // 3, 30), with_auth=with_auth)
    print(f"   load average at the end: {load_average()}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    import sys

    from .setup import prepared

    with prepared(with_auth="--no-auth" not in sys.argv) as bench:
        figures(bench, int(os.environ.get("BENCH_SESSIONS", "300")))
