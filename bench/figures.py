"""Each figure of the report: what it measures, how it is printed, its target.

A figure that needs its own measurement takes it here; the CPU on pipes is
one interleaved measurement shared by the figures of sections 1 and 1b.
"""

import datetime
import os
import platform
import statistics
import subprocess
import textwrap

from . import BenchError, progress
from .frontends import FRONTEND_CONCURRENCY, FRONTEND_HOSTS, measure_frontends
from .imports import FORBIDDEN, ImportReport, heavy_auth_imports, measure_imports
from .pipes import (
    ARGON2,
    AUTH_IMPORTS,
    CHARGE,
    PLAIN_IMPORTS,
    PSYCOPG2,
    SELECT,
    SPLIT_STEPS,
    THROTTLE,
    TLS_CONTEXT,
    TLS_IMPORT,
    VERIFY,
    VERIFY_AGAIN,
    PipeSamples,
    measure_auth_split,
    measure_tls_split,
)
from .session import AUTH_COMMANDS, MESSAGE_SIZE
from .setup import CERTIFICATE, Bench
from .tcp import banner_latencies, run_clients, tcpserver

TARGET_RATIO = 1.25  # a plain session's CPU over a bare interpreter start
TARGET_AUTH_RATIO = 10.0  # an AUTH PLAIN session's CPU over a bare interpreter start
TARGET_CERT_RATIO = 1.00  # servercert.pem configured, STARTTLS never used: `ssl` not loaded
TARGET_RCPTCHECK_RATIO = 1.10  # recipient validation on, over the plain session
TARGET_SMTPUTF8_RATIO = 1.05  # SMTPUTF8 offered, a plain session: over the plain session
TARGET_BANNER_MS = 15.0
CONCURRENCY_LEVELS = (1, 4, 16)
AUTH_CONCURRENCY = 4
RULE = "-" * 78


def section(title: str) -> None:
    print(RULE)
    print(title, flush=True)


def wrapped(text: str, indent: str = "   ", more: str = "     ") -> None:
    print(textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=more))


def header(bench: Bench) -> None:
    """Where and on what the figures were taken."""
    launcher = bench.launcher
    out = subprocess.run(bench.python("-c", "import sys; print(sys.version)"),
                         capture_output=True, text=True, check=False).stdout
    version = out.split()[0] if out else "?"
    print()
    print("qmail-esmtpd benchmark")
    print(RULE)
    print(f"date         {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"host         {platform.node()}  {os.cpu_count()} CPUs  {platform.release()}")
    print(f"interpreter  {launcher.interpreter} {' '.join(launcher.flags)}  (Python {version})")
    print(f"launcher     {launcher.path}")
    print(f"session      EHLO, MAIL, RCPT, DATA {MESSAGE_SIZE} B, QUIT; "
          "qmail-queue = /bin/sh sink (exec cat)", flush=True)


# --- 1. CPU on pipes ----------------------------------------------------------


def plain_session_cpu(pipes: PipeSamples) -> None:
    """A plain session's CPU against a bare interpreter start: target <= 1.25x."""
    section("1. CPU per plain session on pipes (user+sys incl. children), ms")
    print(f"   {'':34} {'median':>8} {'mean':>8}")
    labels = (
        ("session", "qmail-esmtpd session (incl. sink)"),
        ("authdb", "same, AUTHDB set (AUTH offered)"),
        ("bare", "bare python -I -S -c pass"),
        ("import", "python -I -S + import cli"),
        ("sink", "qmail-queue sink alone"),
    )
    for name, label in labels:
        if name in pipes:
            print(f"   {label:34} {pipes.median(name):8.2f} {pipes.mean(name):8.2f}")
    session, bare, sink = pipes.median("session"), pipes.median("bare"), pipes.median("sink")
    imports = pipes.median("import")
    print(f"   {'session minus sink':34} {session - sink:8.2f}")
    print(f"   imports over bare start    {imports - bare:6.2f} ms;  "
          f"session work over imports {session - sink - imports:6.2f} ms")
    print(f"   ratio qmail-esmtpd / bare  {session / bare:6.2f}   (incl. sink)    "
          f"target <= {TARGET_RATIO}")
    print(f"   ratio qmail-esmtpd / bare  {(session - sink) / bare:6.2f}   (excl. sink)    "
          f"target <= {TARGET_RATIO}")


def authdb_session_cpu(pipes: PipeSamples) -> None:
    """The same plain session with $AUTHDB set (AUTH offered, never used): no slower."""
    authdb, session = pipes.median("authdb"), pipes.median("session")
    bare, sink = pipes.median("bare"), pipes.median("sink")
    print("   with AUTHDB set (AUTH offered in EHLO, never used), interleaved:")
    print(f"   ratio with AUTHDB / bare   {authdb / bare:6.2f}   (incl. sink)    "
          f"target <= {TARGET_RATIO}")
    print(f"   ratio with AUTHDB / bare   {(authdb - sink) / bare:6.2f}   "
          f"(excl. sink)    target <= {TARGET_RATIO}")
    paired = statistics.median(a - b for a, b in zip(pipes.samples["authdb"],
                                                     pipes.samples["session"], strict=True))
    print(f"   with / without AUTHDB      {authdb / session:6.2f}   "
          f"(medians {authdb:.2f} / {session:.2f} ms; paired difference {paired:+.2f} ms)")


def cert_session_cpu(pipes: PipeSamples) -> None:
    """The plain session with control/servercert.pem present, never saying STARTTLS."""
    cert, session = pipes.median("cert"), pipes.median("session")
    paired = statistics.median(a - b for a, b in zip(pipes.samples["cert"],
                                                     pipes.samples["session"], strict=True))
    print("   with control/servercert.pem (STARTTLS offered in EHLO, never used), interleaved:")
    print(f"   with / without certificate {cert / session:6.2f}   "
          f"(medians {cert:.2f} / {session:.2f} ms; paired difference {paired:+.2f} ms)"
          f"   target ~{TARGET_CERT_RATIO:.2f}")


def check_session_cpu(pipes: PipeSamples) -> None:
    """The plain session with recipient validation on, with one qmail-spp
    plugin, and with SMTPUTF8 offered."""
    session = pipes.median("session")
    for name, label, target in (
            ("rcptcheck", "checkrecipients on (users/cdb, one .qmail stat)",
             f"target <= {TARGET_RCPTCHECK_RATIO:.2f}"),
            ("spp", "one qmail-spp plugin per RCPT (/bin/sh -c)", "measured"),
            ("smtputf8", "control/smtputf8 1 (SMTPUTF8 offered in EHLO, never asked for)",
             f"target <= {TARGET_SMTPUTF8_RATIO:.2f}")):
        median = pipes.median(name)
        paired = statistics.median(a - b for a, b in zip(pipes.samples[name],
                                                         pipes.samples["session"], strict=True))
        print(f"   {label}:")
        print(f"   with / without {median / session:6.2f}   (medians {median:.2f} / "
              f"{session:.2f} ms; paired difference {paired:+.2f} ms)   {target}")


def auth_session_cpu(pipes: PipeSamples) -> None:
    """An AUTH PLAIN session's CPU, and its PostgreSQL backend's beside it."""
    auth = pipes.median("auth")
    section(f"1b. CPU per AUTH PLAIN session on pipes, {pipes.runs('auth')} runs interleaved "
            "with the above, ms")
    print("   EHLO, AUTH PLAIN (argon2id, default parameters), MAIL, RCPT outside rcpthosts,")
    print(f"   DATA {MESSAGE_SIZE} B, QUIT; AUTHDB = throwaway PostgreSQL over a unix socket")
    print(f"   {'':42} {'median':>8} {'mean':>8}")
    print(f"   {'AUTH session (incl. sink)':42} {auth:8.2f} {pipes.mean('auth'):8.2f}")
    print(f"   {'over the plain session with AUTHDB set':42} {auth - pipes.median('authdb'):+8.2f}")
    print(f"   ratio AUTH session / bare  {auth / pipes.median('bare'):6.2f}"
          f"   target <= {TARGET_AUTH_RATIO:.0f}")
    backend = pipes.backend_ms
    print(f"   {'+ PostgreSQL backend (mean, not above)':42} "
          + (f"{'':8} {backend:8.2f}" if backend is not None else f"{'n/a':>17}"))
    print("     (the backend is the postmaster's child, not ours: from its cutime+cstime)")


def auth_session_split(bench: Bench, pipes: PipeSamples, runs: int) -> None:
    """Where an AUTH session's CPU goes: the server's code step by step."""
    progress(f"the AUTH session step by step, {runs} runs ...")
    split = measure_auth_split(bench, runs)
    ms = split.median
    bare, sink, auth = pipes.median("bare"), pipes.median("sink"), pipes.median("auth")
    print(f"   where it goes: medians of {split.runs()} runs of the server's code step by step")
    print("   (time.process_time in one interpreter started like the launcher)")
    rows = [("bare interpreter start (from above)", bare)]
    rows += [(step.label, ms(step)) for step in SPLIT_STEPS if step is not VERIFY_AGAIN]
    rows.append(("qmail-queue sink (from above)", sink))
    rest = auth - sum(value for _, value in rows)
    rows.append(("rest: protocol, DATA, exit (difference)", rest))
    for label, value in rows:
        print(f"     {label:40} {value:8.2f}  {value * 100.0 / auth:3.0f}%")
    imports = bare + sum(ms(step) for step in (PLAIN_IMPORTS, AUTH_IMPORTS, PSYCOPG2, ARGON2))
    print(f"   = interpreter + imports {imports:.1f}, password check {ms(VERIFY):.1f},")
    print(f"     database client {ms(SELECT) + ms(THROTTLE) + ms(CHARGE):.1f}, "
          f"sink and rest {sink + rest:.1f}")
    print(f"   {VERIFY_AGAIN.label:42} {ms(VERIFY_AGAIN):8.2f}")


def auth_imports(bench: Bench) -> None:
    """The heaviest imports of the AUTH path (wall time)."""
    wrapped("heaviest AUTH imports (-X importtime, wall ms): "
            + "; ".join(heavy_auth_imports(bench)))


def starttls_cpu(bench: Bench, pipes: PipeSamples, runs: int) -> None:
    """What TLS itself costs: a session that only shakes hands, beside EHLO and QUIT."""
    progress(f"the STARTTLS set-up step by step, {runs} runs ...")
    split = measure_tls_split(bench, runs)
    section("1c. CPU per STARTTLS session on pipes, interleaved with the above, ms")
    wrapped("the server on pipes as above; the TLS client is an ssl.SSLObject over memory "
            "BIOs in the bench process (CERT_NONE; its CPU is not counted); EHLO and "
            "STARTTLS in cleartext, one round trip each, the rest sent at once after the "
            f"handshake; certificate {CERTIFICATE}; negotiated "
            f"{', '.join(pipes.tls_negotiated) or '?'}")
    handshake, ehlo = pipes.median("handshake"), pipes.median("ehlo")
    bare, session, sink = pipes.median("bare"), pipes.median("session"), pipes.median("sink")
    print(f"   {'':44} {'median':>8} {'mean':>8}")
    print(f"   {'STARTTLS handshake alone':44} {handshake:8.2f} {pipes.mean('handshake'):8.2f}")
    print("     (EHLO, STARTTLS, handshake, QUIT inside TLS; no message, no sink)")
    print(f"   {'EHLO, QUIT in cleartext (same certificate)':44} {ehlo:8.2f} "
          f"{pipes.mean('ehlo'):8.2f}")
    tls = handshake - ehlo
    ssl_import, context = split.median(TLS_IMPORT), split.median(TLS_CONTEXT)
    rest = tls - ssl_import - context
    print(f"   {'what STARTTLS adds (the difference)':44} {tls:+8.2f}")
    print(f"   of which, medians of {split.runs()} runs step by step (time.process_time):")
    for label, value in ((TLS_IMPORT.label, ssl_import), (TLS_CONTEXT.label, context),
                         ("rest: handshake, records, STARTTLS", rest)):
        print(f"     {label:42} {value:+8.2f}  {value * 100.0 / tls:3.0f}%")
    print("     (the split runs apart from the interleaved sessions: on a busy machine the rest,")
    print("     a difference, can come out negative; the handshake itself is within its noise)")
    print(f"   ratio handshake alone / bare {handshake / bare:5.2f};  "
          f"/ plain session (excl. sink) {handshake / (session - sink):5.2f}")


def tls_auth_session_cpu(pipes: PipeSamples) -> None:
    """The AUTH PLAIN session inside STARTTLS, beside the cleartext one."""
    tls_auth, auth = pipes.median("tls_auth"), pipes.median("auth")
    print(f"   AUTH over STARTTLS, {pipes.runs('tls_auth')} runs interleaved like the AUTH "
          "session: EHLO, STARTTLS,")
    print(f"   handshake, EHLO, AUTH PLAIN, MAIL, RCPT, DATA {MESSAGE_SIZE} B, QUIT; the same "
          "database")
    print(f"   {'':44} {'median':>8} {'mean':>8}")
    print(f"   {'AUTH over STARTTLS session (incl. sink)':44} {tls_auth:8.2f} "
          f"{pipes.mean('tls_auth'):8.2f}")
    print(f"   {'over the AUTH session in cleartext (1b)':44} {tls_auth - auth:+8.2f}")
    print(f"   ratio AUTH over STARTTLS / AUTH in cleartext {tls_auth / auth:5.2f};  "
          f"/ bare {tls_auth / pipes.median('bare'):5.2f}")
    print("   (the difference includes `import ssl`: a cleartext AUTH session no longer loads it)")


# --- 2. imports -----------------------------------------------------------------


def plain_session_imports(bench: Bench) -> ImportReport:
    """What a plain session imports: none of FORBIDDEN, and what ours cost."""
    progress("imports of a plain session ...")
    report = measure_imports(bench)
    section("2. imports in a plain session (-X importtime, wall time)")
    print(f"   forbidden modules imported: {', '.join(report.forbidden) or 'none'}")
    print(f"   (checked: {', '.join(FORBIDDEN)})")
    print(f"   qmail_esmtpd: {report.package_modules} modules, "
          f"{report.package_total_ms:.2f} ms incl. what they import, "
          f"{report.package_self_ms:.2f} ms own code")
    extra = ", ".join(f"{name} {ms:.2f}" for name, ms in report.extra_stdlib) or "none"
    wrapped(f"beyond a bare start (ms self): {extra}")
    return report


def variant_imports(bench: Bench, plain: ImportReport, label: str, **setting: bool) -> None:
    """A session with `setting` (tls: servercert.pem, authdb: $AUTHDB) that never
    uses it imports nothing heavy: what it loads beyond the plain session."""
    report = measure_imports(bench, **setting)
    added = ", ".join(f"{name} {ms:.2f}" for name, ms in report.self_ms.items()
                      if name not in plain.self_ms) or "none"
    forbidden = ", ".join(report.forbidden) or "none"
    print(f"   {label}: forbidden modules imported: {forbidden}")
    wrapped(f"modules beyond the plain session (ms self): {added}", "     ", "       ")


# --- 3 and 4. through tcpserver -----------------------------------------------------


def throughput(bench: Bench, sessions: int) -> None:
    """Plain sessions per second through tcpserver at each concurrency level."""
    progress(f"tcpserver throughput, {sessions} sessions per level ...")
    rows = []
    for level in CONCURRENCY_LEVELS:  # one tcpserver per level: server CPU per level
        with tcpserver(bench) as (port, server_cpu):
            rate, client_ms = run_clients(port, level, sessions)
        rows.append((level, rate, server_cpu() * 1000.0 / sessions, client_ms))
    section("3. sessions/s through tcpserver (raw-socket client threads in this process)")
    print(f"   {'concurrency':>11} {'sessions/s':>11} {'server CPU ms/session':>22}"
          f" {'client CPU ms/session':>22}")
    for level, rate, server_ms, client_ms in rows:
        print(f"   {level:>11} {rate:>11.1f} {server_ms:>22.2f} {client_ms:>22.2f}")
    print(f"   (server CPU: tcpserver + qmail-esmtpd + sink; {os.cpu_count()} CPUs shared with"
          " the client)")


def auth_throughput(bench: Bench, sessions: int) -> None:
    """AUTH sessions per second through tcpserver, and their PostgreSQL backends' CPU."""
    assert bench.auth is not None
    progress(f"tcpserver throughput, {sessions} AUTH sessions ...")
    backends = bench.auth.backends
    backend_before = backends.settled_cpu()
    with tcpserver(bench, authdb=True) as (port, server_cpu):
        rate, client_ms = run_clients(port, AUTH_CONCURRENCY, sessions, AUTH_COMMANDS)
    server_ms = server_cpu() * 1000.0 / sessions
    backend_after = backends.settled_cpu()
    print(f"   {f'{AUTH_CONCURRENCY}, AUTH':>11} {rate:>11.1f} {server_ms:>22.2f}"
          f" {client_ms:>22.2f}   ({sessions} sessions)")
    backend = None
    if backend_before is not None and backend_after is not None:
        backend = (backend_after - backend_before) * 1000.0 / sessions
    print("   AUTH: + PostgreSQL backend CPU per session (mean, not in server CPU): "
          + (f"{backend:.2f} ms" if backend is not None else "n/a"))
    print("   (for AUTH the CPUs are shared with PostgreSQL too)")


def frontends(bench: Bench, sessions: int) -> None:
    """Two frontends on one database, through pgbouncer and direct: rate, backends, exactness."""
    progress(f"two frontends, {sessions} AUTH sessions through pgbouncer, then direct ...")
    runs, pool_mode = measure_frontends(bench, sessions)
    section(f"5. two frontends ({' and '.join(FRONTEND_HOSTS)}), concurrency "
            f"{FRONTEND_CONCURRENCY} each, one user")
    wrapped(f"{runs[0].sessions} AUTH sessions, half on each frontend, all of one user whose "
            f"limit is exactly that; pgbouncer in {pool_mode} pool mode "
            "(service/pgbouncer.ini); backends = qmaild's rows in pg_stat_activity, "
            "sampled every 5 ms")
    print(f"   {'':28} {'sessions/s':>10} {'peak backends':>14} {'errors':>7} {'final count':>12}")
    for run in runs:
        print(f"   {run.label:28} {run.rate:>10.1f} {run.peak_backends:>14} {len(run.errors):>7}"
              f" {f'{run.count}/{run.sessions}':>12}")
    problems = [f"{run.label}: {error}" for run in runs for error in run.errors]
    problems += [f"{run.label}: sendcounts says {run.count}, {run.sessions} sessions queued"
                 for run in runs if run.count != run.sessions]
    if problems:
        raise BenchError("; ".join(problems))


def p90(values: list[float]) -> float:
    """90th percentile: the tail a busy MX sees, which a median hides."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def banner_latency(bench: Bench, connections: int) -> None:
    """connect() to the full 220 banner through tcpserver: target median < 15 ms."""
    progress(f"banner latency, {connections} connections ...")
    with tcpserver(bench) as (port, server_cpu):
        banners = banner_latencies(port, connections)
    cpu_ms = server_cpu() * 1000.0 / (connections + 1)  # and the start-up probe
    section(f"4. connect() to full banner through tcpserver, {connections} sequential")
    print(f"   median {statistics.median(banners):6.2f} ms   p90 {p90(banners):6.2f} ms"
          f"   target: median < {TARGET_BANNER_MS:g} ms")
    print(f"   server CPU per banner+QUIT connection (tcpserver incl.): {cpu_ms:.2f} ms")
