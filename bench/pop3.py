"""CPU per POP3 login: qmail-esmtpd-checkpassword as qmail-popup runs it.

qmail-popup (or Dovecot) starts the program once per login, so its figure
sits beside the SMTP AUTH session's: the same interpreter start, imports,
argon2id verify and throttle, the POP3 columns read with the password, and
an exec of the subprogram (here /bin/true, whose own CPU is counted too).
The launcher is made the way `make venv` makes qmail-esmtpd's
(harness.files.write_launcher: real interpreter, -IS).

Then, as Dovecot runs it (ORIG_UID, AUTHFAILDELAY=0, so nothing waits):
the time to the exit 1 of a right password on a row that cannot be served
(no sysuser) beside a wrong one on the same row, which the client must not
be able to tell apart.
"""

import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness.files import write_launcher
from tests.harness.processes import run_with_fd3

from . import BenchError, progress
from .figures import section
from .pipes import CLIENT_TIMEOUT, children_cpu
from .session import AUTH_PASSWORD, AUTH_USER
from .setup import Bench

ENTRY = "qmail_esmtpd.pop3.checkpassword:main"
SUBPROGRAM = "/bin/true"
UNUSABLE_USER = "no-sysuser@example.com"  # a row a right password cannot log in to
SYSTEM_PYTHON = "/usr/bin/python3"  # what another user can run when ours is under /root


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
    dovecot_refusals(bench, max(runs, 40))


def dovecot_refusals(bench: Bench, runs: int) -> None:
    """Wall ms to exit 1 under Dovecot's settings: a right password on a row
    without sysuser, a wrong one on the same row, alternating."""
    assert bench.auth is not None
    progress(f"POP3 refusals as Dovecot runs the program, {runs} runs each ...")
    from qmail_esmtpd.auth.passwords import context
    from tests.harness.postgres import Database
    from tests.harness.system_users import world_readable_dir

    folder = world_readable_dir("qmail-esmtpd-bench-dovecot.")
    owner = Database(bench.auth.cluster, bench.auth.dbname)
    try:
        found = dovecot_program(bench, folder)
        if found is None:
            return
        argv, auth_uid = found
        owner.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s)",
                  (UNUSABLE_USER, context().hash(AUTH_PASSWORD)))
        env = {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(folder / "control"),
               "AUTHDB": bench.auth.conninfo, "TCPREMOTEIP": "127.0.0.1",
               "AUTHFAILDELAY": "0", "ORIG_UID": str(auth_uid)}
        right = f"{UNUSABLE_USER}\0{AUTH_PASSWORD}\0\0".encode()
        wrong = f"{UNUSABLE_USER}\0not the password\0\0".encode()
        times: dict[bytes, list[float]] = {right: [], wrong: []}
        cpu: dict[bytes, list[float]] = {right: [], wrong: []}
        for _ in range(runs):
            for data, samples in times.items():
                before = children_cpu()
                samples.append(refusal_ms(argv, data, env))
                cpu[data].append((children_cpu() - before) * 1000)
    finally:
        owner.sql("DELETE FROM poppass WHERE name = %s", (UNUSABLE_USER,))
        owner.sql("DELETE FROM authfailures WHERE name = %s", (UNUSABLE_USER,))
        owner.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"   as Dovecot runs it (ORIG_UID, AUTHFAILDELAY=0): wall ms to exit 1, "
          f"{runs} runs each, alternating")
    print(f"   {'':36} {'median':>8} {'IQR':>8} {'CPU ms':>8}")
    for label, data in (("right password, row without sysuser", right),
                        ("wrong password, same row", wrong)):
        quartiles = statistics.quantiles(times[data], n=4)
        print(f"   {label:36} {statistics.median(times[data]):8.2f} "
              f"{quartiles[2] - quartiles[0]:8.2f} {statistics.median(cpu[data]):8.2f}")
    for what, samples in (("wall", times), ("CPU", cpu)):
        paired = statistics.median(a - b for a, b in zip(samples[right], samples[wrong],
                                                         strict=True))
        print(f"   right - wrong, {what}: medians "
              f"{statistics.median(samples[right]) - statistics.median(samples[wrong]):+.2f} ms,"
              f" paired {paired:+.2f} ms")
    print("   (the difference is to be well under the jitter, the IQR: the client cannot "
          "tell them apart)")


def dovecot_program(bench: Bench, folder: Path) -> tuple[list[str], int] | None:
    """argv of the program as Dovecot's auth user would run it, and that
    user's uid: as root, the system's interpreter as nobody (the program
    refuses root under Dovecot), else our own as ourselves."""
    assert bench.auth is not None
    control = folder / "control"
    control.mkdir()
    for path in bench.control.iterdir():
        (control / path.name).write_bytes(path.read_bytes())
    if os.geteuid() != 0:
        return [str(write_launcher(folder / "qmail-esmtpd-checkpassword", ENTRY)),
                "/bin/true"], os.getuid()
    mine = subprocess.run([*bench.python("-c", "import sys; print(sys.version_info[:2])")],
                          capture_output=True, text=True, check=False).stdout
    system = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True, check=False).stdout \
        if os.path.exists(SYSTEM_PYTHON) else ""
    if mine != system:
        print(f"   as Dovecot runs it: not measured (as root it needs {SYSTEM_PYTHON} of "
              "the launcher's version for the auth user)")
        return None
    os.chmod(bench.auth.cluster.base, 0o711)  # as /var/run/postgresql: reachable
    program = write_launcher(folder / "qmail-esmtpd-checkpassword", ENTRY,
                             interpreter=SYSTEM_PYTHON)
    import pwd

    return ["setuidgid", "nobody", str(program), "/bin/true"], pwd.getpwnam("nobody").pw_uid


def refusal_ms(argv: list[str], data: bytes, env: dict[str, str]) -> float:
    """Wall ms of one login that must exit 1."""
    start = time.perf_counter()
    try:
        proc = run_with_fd3(argv, data, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"a POP3 login took over {CLIENT_TIMEOUT:g} s") from None
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 1:
        raise BenchError(f"POP3 login exited {proc.returncode}, expected 1: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return elapsed
