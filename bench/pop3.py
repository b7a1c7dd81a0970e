"""CPU per POP3 login: qmail-esmtpd-checkpassword as qmail-popup runs it.

qmail-popup (or Dovecot) starts the program once per login, so its figure
sits beside the SMTP AUTH session's: the same interpreter start, imports,
argon2id verify and throttle, plus one query for the POP3 columns and an
exec of the subprogram (here /bin/true, whose own CPU is counted too).
The launcher is made the way `make venv` makes qmail-esmtpd's
(harness.files.write_launcher: real interpreter, -IS).
"""

import os
import statistics
import subprocess
from dataclasses import dataclass

from tests.harness.files import write_launcher
from tests.harness.processes import run_with_fd3

from . import BenchError
from .figures import section
from .pipes import CLIENT_TIMEOUT, children_cpu
from .session import AUTH_PASSWORD, AUTH_USER
from .setup import Bench

ENTRY = "qmail_esmtpd.pop3.checkpassword:main"
SUBPROGRAM = "/bin/true"


@dataclass
class Pop3Samples:
    """CPU ms per login, right and wrong password; PostgreSQL backend ms per login."""

    ok: list[float]
    fail: list[float]
    backend_ms: float | None


def login(program: str, data: bytes, env: dict[str, str]) -> tuple[float, int]:
    """One login with `data` on fd 3: (CPU seconds incl. the subprogram, exit status)."""
    before = children_cpu()
    try:
        proc = run_with_fd3([program, SUBPROGRAM], data, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"a POP3 login took over {CLIENT_TIMEOUT:g} s") from None
    return children_cpu() - before, proc.returncode


def measure_pop3_logins(bench: Bench, runs: int) -> Pop3Samples:
    """`runs` logins with the right password interleaved with as many wrong ones."""
    if bench.auth is None:
        raise BenchError("the POP3 figure needs the database (--no-auth)")
    program = str(write_launcher(bench.workdir / "qmail-esmtpd-checkpassword", ENTRY))
    env = {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(bench.control),
           "AUTHDB": bench.auth.conninfo, "TCPREMOTEIP": "127.0.0.1", "AUTHFAILDELAY": "0"}
    if os.geteuid() == 0:  # as root the program connects with another user's uid
        os.chmod(bench.auth.cluster.base, 0o711)  # as /var/run/postgresql: reachable
        env["POPDBUSER"] = "nobody"  # a user every system has (trust: any uid will do)
    right = f"{AUTH_USER}\0{AUTH_PASSWORD}\0<1.2@bench>\0".encode()
    wrong = f"{AUTH_USER}\0not the password\0<1.2@bench>\0".encode()
    ok: list[float] = []
    fail: list[float] = []
    backend_before = bench.auth.backends.settled_cpu()
    for _ in range(runs):
        for data, want, samples in ((right, 0, ok), (wrong, 1, fail)):
            cpu, status = login(program, data, env)
            if status != want:
                raise BenchError(f"POP3 login exited {status}, expected {want}")
            samples.append(cpu * 1000)
    backend_after = bench.auth.backends.settled_cpu()
    backend = None
    if backend_before is not None and backend_after is not None:
        backend = (backend_after - backend_before) * 1000 / (2 * runs)
    return Pop3Samples(ok, fail, backend)


def pop3_login_cpu(bench: Bench, runs: int, auth_ms: float | None, bare_ms: float) -> None:
    """Section 1c, printed after the AUTH session it is compared with."""
    samples = measure_pop3_logins(bench, runs)
    ok, fail = statistics.median(samples.ok), statistics.median(samples.fail)
    section(f"1b (POP3). CPU per POP3 login (qmail-esmtpd-checkpassword on fd 3), {runs} runs "
            "each, ms")
    print(f"   as qmail-popup runs it: argon2id verify, throttle, POP3 columns, "
          f"exec {SUBPROGRAM}")
    print(f"   {'':42} {'median':>8} {'mean':>8}")
    print(f"   {'login, right password':42} {ok:8.2f} {statistics.fmean(samples.ok):8.2f}")
    print(f"   {'login, wrong password (exit 1)':42} {fail:8.2f} "
          f"{statistics.fmean(samples.fail):8.2f}")
    if auth_ms is not None:
        print(f"   {'beside the AUTH PLAIN session (1b)':42} {auth_ms:8.2f}  "
              f"login/session {ok / auth_ms:4.2f}")
    print(f"   ratio login / bare  {ok / bare_ms:6.2f}")
    backend = samples.backend_ms
    print(f"   {'+ PostgreSQL backend per login (mean)':42} "
          + (f"{'':8} {backend:8.2f}" if backend is not None else f"{'n/a':>17}"))
