"""An AUTH session's cost beyond its password check, inside one worker.

Issue 26's AUTH figure is an AUTH-over-STARTTLS session's CPU minus a
STARTTLS session's minus one argon2id verify "measured warm in the same
worker".  Across processes that verify alone varies by more than the
difference sought (this machine is shared), so here one process plays the
worker: it runs the worker's own code (`workers.serve_one`, the very
session a worker runs, with the server's preloads and its huge-page
malloc) for a STARTTLS session, an AUTH-over-STARTTLS session and a bare
verify in turn, `runs` times, and times each by the CPU of the serving
thread (the client is another thread of the process, not counted; the
server's hand-over is the same for both sessions and cancels out).

Run by bench/warm.py as `python -m bench.inworker RUNS` in the environment
of an AUTH and TLS server; prints the three medians in ms.
"""

import os
import socket
import ssl
import sys
import threading
import time

from .session import AUTH_COMMANDS, AUTH_PASSWORD, COMMANDS
from .warm import tls_session


def measure(runs: int) -> tuple[float, float, float]:
    """Medians in ms: (STARTTLS session, AUTH over STARTTLS session, verify)."""
    from qmail_esmtpd import preload, workers
    from qmail_esmtpd.auth.passwords import check, new_hash
    from qmail_esmtpd.child import ChildSettings, Remote
    from qmail_esmtpd.tcprules import ALLOW_ALL

    preload.import_modules(preload.SESSION_MODULES)
    preload.import_modules(preload.AUTH_MODULES)
    settings = ChildSettings(b"localhost", False, [], preload.PreloadedTLS())
    settings.tls.load(preload.controls_from_environment())
    baseline = workers.Baseline(1 << 30)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    hand_over = workers.encode(Remote("127.0.0.1", "::ffff:127.0.0.1", 40000), ALLOW_ALL,
                               None, False)

    def session(commands: "tuple[tuple[bytes, bytes], ...]") -> float:
        client = threading.Thread(target=tls_session, args=(port, commands, context))
        client.start()
        conn, _ = listener.accept()
        start = time.thread_time()
        workers.serve_one(conn.detach(), hand_over, settings, baseline)
        used = time.thread_time() - start
        client.join()
        return used

    stored = new_hash(AUTH_PASSWORD.encode())

    def verify() -> float:
        start = time.thread_time()
        check(AUTH_PASSWORD.encode(), stored)
        return time.thread_time() - start

    for _ in range(3):  # warm: the contexts, the database connection, argon2's heap
        session(COMMANDS), session(AUTH_COMMANDS), verify()
    plain, auth, verified = [], [], []
    for _ in range(runs):
        plain.append(session(COMMANDS))
        auth.append(session(AUTH_COMMANDS))
        verified.append(verify())

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2] * 1000.0

    return median(plain), median(auth), median(verified)


if __name__ == "__main__":
    stderr = os.dup(2)  # the sessions log on fd 2; fds 0 and 1 are theirs
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
    os.write(stderr, (" ".join(f"{x:.3f}" for x in figures) + "\n").encode())
