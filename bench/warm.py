"""qmail-esmtpd-server against tcpserver mode (and C qmail-smtpd, when given).

Throughput: plain sessions/s at concurrency 1 and 4, the servers taking
turns round by round (one interleaved run).  C qmail-smtpd comes from
$QMAIL_SMTPD_C (a binary built with conf-qmail = $QMAIL_SMTPD_C_HOME, by
default two folders up; the bench writes its control/me and rcpthosts);
without it that row is skipped.  Beside them runs the floor of the design,
bench/forkfloor.py: the same preloads and one fork per connection, but
fixed replies, so what is left between the server and the floor is the
session's own work.

CPU per session: the server's own CPU and its reaped children's, from
/proc/PID/stat, between two points after a warm-up (10 ms ticks, summed over
many sessions), for a STARTTLS session and an AUTH PLAIN over STARTTLS
session; and the argon2id verify alone, in this process.  The server's
memory: VmRSS of the qmail-esmtpd-server process with AUTH preloaded.
"""

import os
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness.forkserver import ForkServer
from tests.harness.system_users import let_service_user_in
from tests.harness.tcpserver import TcpServer

from . import BenchError, progress
from .session import AUTH_COMMANDS, AUTH_PASSWORD, COMMANDS, EHLO
from .setup import Bench
from .tcp import Reader, connect, run_clients, transaction

LEVELS = (1, 4)
ROUNDS = 3
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """Seconds of CPU of `pid` and of the children it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ForkFloor:
    """bench/forkfloor.py: fork per connection, fixed replies (TcpServer's .port, .proc, .stop)."""

    def __init__(self, interpreter: str, env: dict) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [interpreter, "-I", "-S", str(Path(__file__).with_name("forkfloor.py"))],
            env={"PATH": "/usr/bin:/bin", **env}, stdout=subprocess.PIPE,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise BenchError("bench/forkfloor.py did not start")
        self.port = int(line)

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


FLOOR = "floor: fork, fixed replies"


@contextmanager
def servers(bench: Bench, authdb: bool = False, tls: bool = False) -> \
        Iterator[dict[str, "TcpServer | ForkServer | ForkFloor"]]:
    """The frontends side by side: name -> running server (pid: .proc.pid)."""
    env = {k: v for k, v in bench.env(authdb, tls).items() if not k.startswith("TCP")}
    running: dict[str, TcpServer | ForkServer | ForkFloor] = {}
    try:
        c_program = os.environ.get("QMAIL_SMTPD_C")
        if c_program and not (authdb or tls):
            home = Path(os.environ.get("QMAIL_SMTPD_C_HOME",
                                       Path(c_program).resolve().parent.parent))
            (home / "control").mkdir(parents=True, exist_ok=True)
            for name in ("me", "rcpthosts"):
                (home / "control" / name).write_bytes((bench.control / name).read_bytes())
            running["C qmail-smtpd, tcpserver"] = TcpServer(
                bench.workdir, ":allow\n", env, [c_program], verbose=False)
        running["qmail-esmtpd, tcpserver"] = TcpServer(
            bench.workdir, ":allow\n", env, [bench.launcher.path], verbose=False)
        if os.geteuid() == 0:  # the sessions run as nobody: let them read what they need
            os.chmod(bench.workdir, 0o755)
            (bench.tls_control / "servercert.pem").chmod(0o644)
            if authdb and "host=/" in env["AUTHDB"]:  # the cluster's socket
                let_service_user_in(Path(env["AUTHDB"].split("host=")[1].split()[0]))
        running["qmail-esmtpd-server"] = ForkServer(bench.workdir, ":allow\n", env,
                                                    verbose=False)
        if not (authdb or tls):
            running[FLOOR] = ForkFloor(bench.launcher.interpreter, env)
        yield running
    finally:
        for server in running.values():
            server.stop()


def throughput(bench: Bench, sessions: int) -> None:
    progress(f"warm server: plain sessions/s, {ROUNDS} interleaved rounds ...")
    rates: dict[tuple[str, int], list[float]] = {}
    with servers(bench) as running:
        for _ in range(ROUNDS):
            for level in LEVELS:
                for name, server in running.items():
                    rate, _ = run_clients(server.port, level, sessions)
                    rates.setdefault((name, level), []).append(rate)
    print("   plain sessions/s (EHLO, MAIL, RCPT, 4 KB DATA, QUIT), "
          f"{ROUNDS} interleaved rounds of {sessions}: min-max")
    for name in running:
        cells = [f"c={level} {min(rates[name, level]):.0f}-{max(rates[name, level]):.0f}"
                 for level in LEVELS]
        print(f"   {name:<28} {'   '.join(cells)}")
    c_rows = [key for key in rates if key[0].startswith("C ")]
    if c_rows:
        for level in LEVELS:
            c_rate = sorted(rates["C qmail-smtpd, tcpserver", level])[ROUNDS // 2]
            ratio, floor = (sorted(rates[name, level])[ROUNDS // 2] / c_rate
                            for name in ("qmail-esmtpd-server", FLOOR))
            print(f"   qmail-esmtpd-server / C at c={level}: {ratio:.2f}x (medians; target "
                  f"0.75x at c=4); the forking floor / C: {floor:.2f}x")
    else:
        print("   (no C row: set QMAIL_SMTPD_C to a qmail-smtpd binary)")


def tls_session(port: int, commands: "tuple[tuple[bytes, bytes], ...]",
                context: ssl.SSLContext) -> None:
    """EHLO, STARTTLS, handshake, then `commands`, the message and QUIT inside TLS."""
    with connect(port) as sock:
        reader = Reader(sock)
        reader.reply(b"220 ")
        sock.sendall(EHLO[0])
        reader.reply(b"250")
        sock.sendall(b"STARTTLS\r\n")
        reader.reply(b"220 ")
        with context.wrap_socket(sock) as tls:
            transaction(tls, Reader(tls), commands)


def cpu_per_session(server: "TcpServer | ForkServer", commands: "tuple[tuple[bytes, bytes], ...]",
                    sessions: int) -> float:
    """ms of server CPU per TLS session, after a warm-up of 3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(3):
        tls_session(server.port, commands, context)
    time.sleep(0.2)  # the warm-up's children reaped
    before = server_cpu(server.proc.pid)
    for _ in range(sessions):
        tls_session(server.port, commands, context)
    time.sleep(0.2)
    return (server_cpu(server.proc.pid) - before) * 1000.0 / sessions


def argon2_verify_ms(runs: int = 10) -> tuple[float, float]:
    """The argon2id verify alone, medians in ms: (warm: in this process, its
    19 MiB reused; cold: one verify in a fresh child, as a tcpserver-mode
    session makes it, in 4 KB pages)."""
    import resource

    from qmail_esmtpd.auth.passwords import check, new_hash

    def children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    stored = new_hash(AUTH_PASSWORD.encode())
    warm, cold = [], []
    for _ in range(runs):
        start = time.process_time()
        if not check(AUTH_PASSWORD.encode(), stored)[0]:
            raise BenchError("argon2id verify failed")
        warm.append(time.process_time() - start)
        before = children()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if check(AUTH_PASSWORD.encode(), stored)[0] else 1)
        os.waitpid(pid, 0)
        cold.append(children() - before)
    return sorted(warm)[runs // 2] * 1000.0, sorted(cold)[runs // 2] * 1000.0


def tls_cpu(bench: Bench, sessions: int) -> None:
    progress(f"warm server: CPU of {sessions} STARTTLS and AUTH-over-STARTTLS sessions ...")
    with servers(bench, tls=True) as running:
        plain = {name: cpu_per_session(server, COMMANDS, sessions)
                 for name, server in running.items()}
    print(f"   STARTTLS session, server CPU ms/session ({sessions} sessions, after 3):")
    for name, ms in plain.items():
        print(f"   {name:<28} {ms:6.1f}")
    ratio = plain["qmail-esmtpd-server"] / plain["qmail-esmtpd, tcpserver"]
    print(f"   qmail-esmtpd-server / tcpserver mode: {ratio:.2f} (target <= 0.40)")
    if bench.auth is None:
        return
    with servers(bench, authdb=True, tls=True) as running:
        auth = {name: cpu_per_session(server, AUTH_COMMANDS, sessions)
                for name, server in running.items()}
        parent = running["qmail-esmtpd-server"]
        memory = rss_mb(parent.proc.pid)
    verify, cold = argon2_verify_ms()
    print(f"   AUTH PLAIN over STARTTLS, server CPU ms/session ({sessions} sessions):")
    for name, ms in auth.items():
        print(f"   {name:<28} {ms:6.1f}")
    print(f"   argon2id verify alone: {verify:.1f} ms warm, {cold:.1f} ms cold (a fresh process, "
          f"incl. its fork); qmail-esmtpd-server's AUTH session is "
          f"{auth['qmail-esmtpd-server'] - verify:+.1f} ms over the warm one (target <= 5)")
    print(f"   qmail-esmtpd-server's memory (VmRSS, AUTH and TLS preloaded): {memory:.1f} MB")


def figures(bench: Bench, sessions: int) -> None:
    from .figures import section

    section("6. qmail-esmtpd-server (warm, forking) beside tcpserver mode")
    throughput(bench, sessions)
    tls_cpu(bench, max(sessions // 3, 30))


if __name__ == "__main__":
    import sys

    from .setup import prepared

    with prepared(with_auth="--no-auth" not in sys.argv) as bench:
        figures(bench, int(os.environ.get("BENCH_SESSIONS", "300")))
