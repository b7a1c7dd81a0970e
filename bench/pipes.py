"""CPU of whole sessions on pipes, and of an AUTH session's steps one by one."""

import ast
import os
import resource
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import BenchError
from .session import (
    AUTH_PASSWORD,
    AUTH_SESSION_INPUT,
    AUTH_USER,
    EHLO_QUIT_INPUT,
    ENVELOPE,
    HANDSHAKE_ONLY_INPUT,
    MESSAGE,
    SESSION_INPUT,
    TLS_AUTH_INPUT,
    check_session_output,
)
from .setup import Bench
from .starttls import starttls_session

CLIENT_TIMEOUT = 30.0


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


def run_sink_alone(bench: Bench) -> float:
    """CPU of one qmail-queue sink run fed like qmail-esmtpd feeds it."""
    envelope_r, envelope_w = os.pipe()
    before = children_cpu()
    try:
        proc = subprocess.Popen([str(bench.sink)], stdin=subprocess.PIPE, stdout=envelope_r,
                                stderr=subprocess.DEVNULL, env=bench.env())
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


@dataclass
class PipeSamples:
    """CPU ms per run of each variant, measured interleaved.

    Variants: "session" (plain), "authdb" (plain, $AUTHDB set), "cert"
    (plain, control/servercert.pem present), "rcptcheck" (plain, recipient
    validation on), "spp" (plain, one qmail-spp plugin per RCPT), "smtputf8" (plain,
    SMTPUTF8 offered, never asked for), "bare" (`python -I -S -c pass`),
    "import" (start + import cli), "sink", "ehlo" (EHLO, QUIT; certificate
    present), "handshake" (EHLO, STARTTLS, handshake, QUIT inside TLS),
    "auth" (an AUTH PLAIN session) and "tls_auth" (the same inside STARTTLS).  `backend_ms`:
    PostgreSQL backend CPU per AUTH session (with or without TLS: the same
    queries), None if unknown or not measured.
    """

    samples: dict[str, list[float]]
    backend_ms: float | None
    tls_negotiated: list[str]  # "protocol cipher" of the STARTTLS sessions

    def __contains__(self, variant: str) -> bool:
        return variant in self.samples

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def mean(self, variant: str) -> float:
        return statistics.fmean(self.samples[variant])

    def runs(self, variant: str) -> int:
        return len(self.samples[variant])


def measure_pipes(bench: Bench, iterations: int, auth_iterations: int) -> PipeSamples:
    """Interleave the variants so drift and noise hit them all alike.

    With the database, a plain session with $AUTHDB set joins every iteration
    and the AUTH sessions (in cleartext and inside STARTTLS), ten times
    dearer, `auth_iterations` of each spread evenly.  Only AUTH sessions
    connect to PostgreSQL meanwhile, so the backends' CPU over the run is
    theirs.  The plain variants take turns at running first.
    """
    import_only = f"import sys; sys.path[:0] = {bench.launcher.paths!r}; import qmail_esmtpd.cli"
    launcher = [str(bench.launcher.path)]

    def session(stdin: bytes, authdb: bool, what: str, auth_used: bool = False,
                tls: bool = False, control: Path | None = None) -> Callable[[], float]:
        env = bench.env(authdb, tls, control)

        def run() -> float:
            cpu, status, out = run_measured(launcher, stdin, env)
            check_session_output(out, status, what, authdb and not tls, auth_used, tls)
            return cpu
        return run

    tls_negotiated: set[str] = set()

    def tls_session(inside: bytes, authdb: bool, what: str) -> Callable[[], float]:
        env = bench.env(authdb, tls=True)

        def run() -> float:
            before = children_cpu()
            status, clear, plain, negotiated = starttls_session(launcher, env, inside, what,
                                                                CLIENT_TIMEOUT)
            cpu = children_cpu() - before
            tls_negotiated.add(negotiated)
            if authdb:
                check_session_output(clear + plain, status, what, auth_offered=True,
                                     auth_used=True, starttls=True)
            elif status != 0 or not plain.startswith(b"221 "):
                raise BenchError(f"{what}: exit status {status}, inside TLS {plain[-300:]!r}")
            return cpu
        return run

    def python(code: str, what: str) -> Callable[[], float]:
        argv, env = bench.python("-c", code), bench.env()

        def run() -> float:
            cpu, status, _ = run_measured(argv, None, env)
            if status != 0:
                raise BenchError(f"{what} exited {status}")
            return cpu
        return run

    variants: dict[str, Callable[[], float]] = {
        "session": session(SESSION_INPUT, False, "qmail-esmtpd on pipes"),
    }
    if bench.auth is not None:
        variants["authdb"] = session(SESSION_INPUT, True, "qmail-esmtpd on pipes, AUTHDB set")
    variants["cert"] = session(SESSION_INPUT, False, "qmail-esmtpd on pipes, servercert.pem",
                               tls=True)
    variants["rcptcheck"] = session(SESSION_INPUT, False, "qmail-esmtpd, checkrecipients",
                                    control=bench.rcptcheck_control)
    variants["spp"] = session(SESSION_INPUT, False, "qmail-esmtpd, one plugin per RCPT",
                              control=bench.spp_control)
    variants["smtputf8"] = session(SESSION_INPUT, False, "qmail-esmtpd, SMTPUTF8 offered",
                                   control=bench.smtputf8_control)
    ehlo_env = bench.env(tls=True)

    def ehlo_quit() -> float:
        cpu, status, out = run_measured(launcher, EHLO_QUIT_INPUT, ehlo_env)
        if status != 0 or not out.startswith(b"220 ") or b"\r\n221 " not in out:
            raise BenchError(f"EHLO, QUIT on pipes: exit status {status}, output {out[-300:]!r}")
        return cpu

    variants.update({
        "bare": python("pass", "bare interpreter"),
        "import": python(import_only, "import-only start"),
        "sink": lambda: run_sink_alone(bench),
        "ehlo": ehlo_quit,
        "handshake": tls_session(HANDSHAKE_ONLY_INPUT, False, "STARTTLS handshake on pipes"),
    })
    sparse = 0
    if bench.auth is not None and auth_iterations > 0:
        variants["auth"] = session(AUTH_SESSION_INPUT, True, "AUTH session on pipes",
                                   auth_used=True)
        variants["tls_auth"] = tls_session(TLS_AUTH_INPUT, True,
                                           "AUTH over STARTTLS session on pipes")
        sparse = min(auth_iterations, iterations)
    plain = [name for name in ("session", "authdb", "cert", "rcptcheck", "spp", "smtputf8")
             if name in variants]
    rest = [name for name in variants if name not in plain]
    for run in variants.values():  # warm the page cache and __pycache__
        for _ in range(3):
            run()
    backends = bench.auth.backends if bench.auth is not None and sparse else None
    backend_before = backends.settled_cpu() if backends else None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(iterations):
        turn = i % len(plain)  # no plain variant always runs first
        order = plain[turn:] + plain[:turn] + rest
        sparse_turn = (i + 1) * sparse // iterations != i * sparse // iterations
        for name in order:
            if name in ("auth", "tls_auth") and not sparse_turn:
                continue
            samples[name].append(variants[name]() * 1000.0)
    backend_ms = None
    if backends is not None and backend_before is not None:
        backend_after = backends.settled_cpu()
        if backend_after is not None:
            sessions = len(samples["auth"]) + len(samples["tls_auth"])
            backend_ms = (backend_after - backend_before) * 1000.0 / sessions
    return PipeSamples(samples, backend_ms, sorted(tls_negotiated))


# The split of an AUTH session: the server's own code paths, one step at a
# time, in a fresh interpreter started like the launcher; CPU per step.
AUTH_MODULES = ("from qmail_esmtpd.auth import accounts, db, limit, passwords, "
                "postgres, sasl, throttle")


@dataclass(frozen=True)
class Step:
    """One step of the split: `code` runs after the steps before it."""

    label: str
    code: str


PLAIN_IMPORTS = Step("qmail_esmtpd imports of a plain session", "import qmail_esmtpd.cli")
AUTH_IMPORTS = Step("+ qmail_esmtpd.auth.* modules", AUTH_MODULES)
PSYCOPG2 = Step("import psycopg2 (no ssl, as db.py)",
                "db._import_psycopg2(); import psycopg2.extensions")
SELECT = Step("connect + SELECT poppass (client side)",
              "database = db.Database(CONNINFO); "
              "row = database.query(accounts.USER_QUERY, (USER,))[0]")
THROTTLE = Step("throttle: recent failures (one SELECT)",
                "throttle.Throttle(database, '127.0.0.1').check(USER)")
ARGON2 = Step("import _argon2_cffi_bindings", "import _argon2_cffi_bindings")
VERIFY = Step("first passwords.check (argon2id)",
              "ok, _ = passwords.check(PASSWORD, row[1])")
CHARGE = Step("sendcounts: what is left + charge",
              "sent = limit.DailyLimit(database, row[0], 50); "
              "ok = ok and sent.remaining() and bool(sent.charge(1))")
VERIFY_AGAIN = Step("argon2id verify alone (a second call)",
                    "passwords.check(PASSWORD, row[1])")
SPLIT_STEPS = (PLAIN_IMPORTS, AUTH_IMPORTS, PSYCOPG2, SELECT, THROTTLE, ARGON2, VERIFY,
               CHARGE, VERIFY_AGAIN)


# The split of a STARTTLS session's set-up, the same way: `ssl` (through our
# module) and the server's context with control/servercert.pem loaded.
TLS_IMPORT = Step("import qmail_esmtpd.tls (ssl)", "from qmail_esmtpd.tls import ServerTLS")
TLS_CONTEXT = Step("ServerTLS(): context, servercert.pem",
                   "tls = ServerTLS(CERT, None)")
TLS_STEPS = (PLAIN_IMPORTS, TLS_IMPORT, TLS_CONTEXT)


@dataclass
class SplitSamples:
    """CPU ms of each step, per run."""

    samples: dict[Step, list[float]]

    def median(self, step: Step) -> float:
        return statistics.median(self.samples[step])

    def runs(self) -> int:
        return len(self.samples[PLAIN_IMPORTS])


def measure_steps(bench: Bench, steps: tuple[Step, ...], prelude: list[str], done: str,
                  runs: int, what: str) -> SplitSamples:
    """CPU ms of each of `steps` (time.process_time), `runs` times, in a fresh
    interpreter started like the launcher after `prelude`; `done` runs last
    and must leave `ok` true."""
    lines = [
        "import sys, time",
        f"sys.path[:0] = {bench.launcher.paths!r}",
        *prelude,
        "marks = [time.process_time()]",
    ]
    for step in steps:
        lines += [step.code, "marks.append(time.process_time())"]
    lines += [done, "print(ok, [(b - a) * 1000.0 for a, b in zip(marks, marks[1:])])"]
    argv = bench.python("-c", "\n".join(lines))
    samples: dict[Step, list[float]] = {step: [] for step in steps}
    for _ in range(runs):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=CLIENT_TIMEOUT)
        ok, times = (proc.stdout.split(" ", 1) + [""])[:2]
        if proc.returncode != 0 or ok != "True":
            raise BenchError(f"{what} split run failed ({proc.returncode}): "
                             f"{(proc.stdout + proc.stderr)[-600:]}")
        for step, ms in zip(steps, ast.literal_eval(times), strict=True):
            samples[step].append(ms)
    return SplitSamples(samples)


def measure_auth_split(bench: Bench, runs: int) -> SplitSamples:
    """CPU ms of each SPLIT_STEPS step, `runs` times."""
    if bench.auth is None:
        raise BenchError("the AUTH split needs the database")
    prelude = [f"CONNINFO, USER, PASSWORD = {bench.auth.conninfo!r}, {AUTH_USER!r}, "
               f"{AUTH_PASSWORD.encode()!r}"]
    return measure_steps(bench, SPLIT_STEPS, prelude, "database.close()", runs, "AUTH")


def measure_tls_split(bench: Bench, runs: int) -> SplitSamples:
    """CPU ms of each TLS_STEPS step, `runs` times."""
    cert = str(bench.tls_control / "servercert.pem").encode()
    return measure_steps(bench, TLS_STEPS, [f"CERT = {cert!r}"],
                         "ok = tls.context is not None", runs, "TLS")
