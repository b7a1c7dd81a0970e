"""`python -m bench` from the repository root (`make bench`): the list of figures."""

import argparse
import os
import time

from . import __doc__ as OVERVIEW
from . import figures, progress, run
from .bigpasswd import rcpt_with_big_passwd
from .pipes import measure_pipes
from .pop3 import pop3_login_cpu
from .setup import Launcher, prepared
from .warm import figures as warm_server_figures


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=OVERVIEW.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200,
                        help="interleaved runs of each pipe variant (default 200)")
    parser.add_argument("--auth-iterations", type=int, default=60,
                        help="of those, runs with an AUTH session (default 60)")
    parser.add_argument("--split-runs", type=int, default=20,
                        help="runs of the step-by-step AUTH and TLS splits (default 20)")
    parser.add_argument("--sessions", type=int, default=300,
                        help="sessions per tcpserver concurrency level (default 300)")
    parser.add_argument("--auth-sessions", type=int, default=100,
                        help=f"AUTH sessions through tcpserver at concurrency "
                             f"{figures.AUTH_CONCURRENCY} (default 100, 0: none)")
    parser.add_argument("--frontend-sessions", type=int, default=160,
                        help="AUTH sessions over two frontends through pgbouncer, and direct "
                             "(default 160, 0: none)")
    parser.add_argument("--connections", type=int, default=200,
                        help="sequential connections for banner latency (default 200)")
    parser.add_argument("--no-auth", action="store_true",
                        help="no PostgreSQL, no AUTH figures (standard library only)")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    started = time.monotonic()
    with prepared(with_auth=not args.no_auth) as bench:
        figures.header(bench)
        auth = bench.auth is not None
        auth_runs = min(args.auth_iterations, args.iterations) if auth else 0
        progress(f"CPU on pipes, {args.iterations} interleaved runs each"
                 + (f" ({auth_runs} with AUTH)" if auth else "") + " ...")
        pipes = measure_pipes(bench, args.iterations, auth_runs)
        figures.plain_session_cpu(pipes)
        if auth:
            figures.authdb_session_cpu(pipes)
        figures.cert_session_cpu(pipes)
        figures.check_session_cpu(pipes)
        rcpt_with_big_passwd(bench, max(args.split_runs, 1))
        if "auth" in pipes:
            figures.auth_session_cpu(pipes)
            figures.auth_session_split(bench, pipes, max(args.split_runs, 1))
            figures.auth_imports(bench)
            pop3_login_cpu(bench, max(auth_runs, 1), pipes.median("auth"), pipes.median("bare"))
        figures.starttls_cpu(bench, pipes, max(args.split_runs, 1))
        if "tls_auth" in pipes:
            figures.tls_auth_session_cpu(pipes)
        plain = figures.plain_session_imports(bench)
        if auth:
            figures.variant_imports(bench, plain, "with AUTHDB set", authdb=True)
        figures.variant_imports(bench, plain, "with servercert.pem, no STARTTLS", tls=True)
        figures.throughput(bench, args.sessions)
        if auth and args.auth_sessions > 0:
            figures.auth_throughput(bench, args.auth_sessions)
        figures.banner_latency(bench, args.connections)
        if auth and args.frontend_sessions > 0:
            figures.frontends(bench, args.frontend_sessions)
        warm_server_figures(bench, args.sessions)
        print(figures.RULE)
        for note in launcher_notes(bench.launcher):
            print(f"note: {note}")
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 0


def launcher_notes(launcher: Launcher) -> list[str]:
    """What in the launcher would make every figure worse than in production."""
    notes = []
    interpreter = launcher.interpreter
    if os.path.realpath(interpreter) != interpreter or interpreter.endswith("/env"):
        notes.append(f"launcher shebang {interpreter} is not the real binary "
                     f"({os.path.realpath(interpreter)}): shims cost 85-140 ms")
    if "".join(launcher.flags).lstrip("-") not in ("IS", "SI"):
        notes.append(f"launcher flags are {launcher.flags}, expected -IS")
    return notes


if __name__ == "__main__":
    run(main, "bench")
