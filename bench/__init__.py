"""Benchmark qmail-esmtpd's per-connection cost and print the figures.

tcpserver starts one qmail-esmtpd per connection, so what matters is the CPU
and latency of a whole short session compared with the floor for any Python
server: a bare interpreter start.  `python -m bench` (`make bench`), from
the repository root, prints in one run:

1. CPU per plain SMTP session on pipes, without and with $AUTHDB set (AUTH
   offered, never used), interleaved with a bare `python -I -S -c pass`, an
   import-only start, the qmail-queue sink alone and, less often, a session
   that authenticates with AUTH PLAIN against PostgreSQL; then where the CPU
   of an AUTH session goes (imports, argon2id, database); a plain session
   with control/servercert.pem configured but no STARTTLS; STARTTLS
   sessions (the handshake alone, and AUTH PLAIN inside TLS), the server on
   pipes and the TLS client an `ssl.SSLObject` in the bench process; and,
   beside the AUTH session, CPU per POP3 login (qmail-esmtpd-checkpassword
   on fd 3, as qmail-popup runs it: bench/pop3.py); and CPU per RCPT with
   recipient checking, with this machine's /etc/passwd and with 20 000 more
   lines (bench/bigpasswd.py, as root);
2. which heavy modules a plain session imports (also with servercert.pem),
   and what our imports cost;
3. sessions per second through real tcpserver at concurrency 1, 4 and 16,
   and for AUTH sessions at concurrency 4;
4. connect-to-banner latency through tcpserver;
5. two frontends (tcpserver on 127.0.0.1 and 127.0.0.2) at concurrency 8
   each, AUTH sessions of one user through pgbouncer and then straight to
   PostgreSQL: sessions/s, peak backends, errors and the exact final count;
6. the servers side by side: qmail-esmtpd-server (forking, and with
   workers once it has -m), Postfix as the anchor (an own instance on
   loopback, bench/postfix.py), C qmail-smtpd (when $QMAIL_SMTPD_C names
   one), tcpserver mode and the floors of the two designs
   (bench/forkfloor.py, bench/reusefloor.py), all driven by smtp-source:
   plain sessions/s and server CPU per session at concurrency 1 and 4
   (bench/servers.py; `python -m bench.servers` runs it alone, quickly);
   CPU of a STARTTLS and of an AUTH-over-STARTTLS session, the server's
   memory (bench/warm.py).

It prints figures with their targets and asserts nothing; it stops with an
error only when the server misbehaves (so a broken server cannot look fast).
The report goes to stdout as each figure is measured, progress to stderr.
The AUTH figures start a throwaway PostgreSQL cluster (tests/harness/postgres.py) and
need the virtualenv's psycopg2 and passlib (figure 5 pgbouncer too);
`--no-auth` leaves them out and needs the standard library only.  The
STARTTLS figures make a self-signed certificate with openssl(1).

__main__.py lists the figures; figures.py prints each one; session.py is the
SMTP session they run, setup.py what it runs against, starttls.py the TLS
client on pipes, and pipes.py, imports.py, tcp.py, database.py and
frontends.py and bigpasswd.py measure; servers.py, warm.py, postfix.py,
proctree.py, queuesink.c and the two floors are figure 6.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def progress(text: str) -> None:
    """What is being measured now, on stderr: stdout is the report."""
    print(text, file=sys.stderr, flush=True)


class BenchError(Exception):
    """The server under test misbehaved or the set-up failed: no figures."""


def run(main: "Callable[[], int]", program: str) -> None:
    """A bench program's exit: its status, or one line for a failed set-up;
    a plain kill still stops what it started (SystemExit runs the finally blocks)."""
    import signal
    import subprocess

    from tests.harness.processes import StartError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except (BenchError, StartError, subprocess.TimeoutExpired) as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
