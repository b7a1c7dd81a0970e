"""The servers side by side, as an admin would compare them: figure 6's first half.

Every row (bench/warm.py's servers(): C qmail-smtpd, Postfix, qmail-esmtpd-server
forking and with workers, the fork and reuse floors, tcpserver mode) is driven
by the same client, Postfix's smtp-source: one 4 KB message per connection,
HELO, no pipelining, at concurrency 1 and 4, the servers taking turns round
by round (interleaved, so a burst of load elsewhere on the machine hits every
row alike).  Per run: sessions/s from smtp-source's wall time, and server CPU
ms per session, the difference of two snapshots of the server's whole process
tree in /proc (bench/proctree.py: the root's own and reaped CPU and that of
every living descendant, so Postfix's master with smtpd, cleanup, qmgr,
trivial-rewrite, discard, ... and a worker still serving count alike), the
second taken once the tree is idle (the last message delivered).  Reported:
median and min-max of each, and the machine's load average beside them.

`python -m bench.servers` runs just this (and the STARTTLS CPU rows) on its
own: quick, for running many times while the worker pool is built.
"""

import argparse
import os
import statistics
import subprocess
import time

from . import BenchError, progress, run
from .proctree import settled_cpu
from .session import MESSAGE_SIZE
from .setup import Bench
from .warm import (
    C_SMTPD,
    CHECKING_SERVER,
    FLOOR,
    SERVER,
    WORKER_SERVER,
    load_average,
    root_pid,
    servers,
)

SMTP_SOURCE = "/usr/sbin/smtp-source"
LEVELS = (1, 4)
WARM_UP = 20  # sessions per server before the rounds: Postfix's daemons started, caches filled


def smtp_source(port: int, concurrency: int, sessions: int) -> float:
    """`sessions` connections of one message each, `concurrency` at a time: wall seconds.

    smtp-source stops at the first reply that is not the expected success,
    so a server that refuses anything fails the figure instead of looking fast.
    """
    argv = [SMTP_SOURCE, "-4", "-l", str(MESSAGE_SIZE), "-m", str(sessions),
            "-s", str(concurrency), "-M", "bench.example", "-f", "a@bench.example",
            "-t", "b@example.com", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"smtp-source against port {port}: exit {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()[-400:]}")
    return elapsed


def cell(values: "list[float]", digits: int) -> str:
    """median (min-max)"""
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def side_by_side(bench: Bench, sessions: int, rounds: int) -> None:
    """Plain sessions/s and server CPU ms/session of every row, `rounds` interleaved rounds."""
    if not os.path.exists(SMTP_SOURCE):
        print(f"   (no servers side by side: no {SMTP_SOURCE}; `tools/install-deps bench` "
              "as root installs postfix, which has it)")
        return
    progress(f"servers side by side: smtp-source, {rounds} interleaved rounds of {sessions} ...")
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    load_before = load_average()
    with servers(bench) as lineup:
        for server in lineup.servers.values():
            smtp_source(server.port, max(LEVELS), WARM_UP)
        for _ in range(rounds):
            for level in LEVELS:
                for name, server in lineup.servers.items():
                    pid = root_pid(server)
                    before = settled_cpu(pid)
                    elapsed = smtp_source(server.port, level, sessions)
                    used = settled_cpu(pid) - before
                    rates.setdefault((name, level), []).append(sessions / elapsed)
                    cpu.setdefault((name, level), []).append(used * 1000.0 / sessions)
    names = list(lineup.servers)
    print(f"   smtp-source, one {MESSAGE_SIZE} B message per connection, HELO, no pipelining,")
    print(f"   {rounds} interleaved rounds of {sessions} sessions: median (min-max); server CPU")
    print("   over the whole process tree")
    print(f"   load average {load_before} before, {load_average()} after")
    width = max(len(name) for name in names) + 1
    for title, table, digits in (("sessions/s", rates, 0), ("server CPU ms/session", cpu, 2)):
        print(f"   {title:<{width}}" + "".join(f"{f'c={n}':<20}" for n in LEVELS).rstrip())
        for name in names:
            print(f"   {name:<{width}}"
                  + "".join(f"{cell(table[name, n], digits):<20}" for n in LEVELS).rstrip())
    ratios(names, rates, cpu)
    for note in lineup.notes:
        print(f"   ({note})")


def ratios(names: "list[str]", rates: dict, cpu: dict) -> None:
    """The issues' targets, read off the medians."""
    def median(table: dict, name: str, level: int) -> float:
        return statistics.median(table[name, level])

    anchor = next((name for name in names if name.startswith("Postfix")), None)
    top = max(LEVELS)
    if anchor:
        for name in (SERVER, WORKER_SERVER):
            if name in names:
                target = " (targets >= 1, <= 1)" if name == WORKER_SERVER else ""
                print(f"   {name} / Postfix at c={top}: sessions/s "
                      f"{median(rates, name, top) / median(rates, anchor, top):.2f}x, CPU "
                      f"{median(cpu, name, top) / median(cpu, anchor, top):.2f}x{target}")
    if CHECKING_SERVER in names:
        print(f"   checkrecipients on / off, {WORKER_SERVER} at c={top}: CPU "
              f"{median(cpu, CHECKING_SERVER, top) / median(cpu, WORKER_SERVER, top):.2f}x "
              "(target <= 1.1)")
    if C_SMTPD in names:
        for level in LEVELS:
            c_rate = median(rates, C_SMTPD, level)
            print(f"   {SERVER} / C at c={level}: "
                  f"{median(rates, SERVER, level) / c_rate:.2f}x (medians; target 0.75x at "
                  f"c=4); the forking floor / C: {median(rates, FLOOR, level) / c_rate:.2f}x")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.servers",
        description="The servers side by side and their STARTTLS CPU (figure 6 without AUTH).")
    parser.add_argument("--sessions", type=int,
                        default=int(os.environ.get("BENCH_SESSIONS", "100")),
                        help="sessions per server, concurrency level and round "
                             "(default $BENCH_SESSIONS or 100)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--tls-sessions", type=int, default=50,
                        help="STARTTLS sessions per server and round (default 50, 0: none)")
    return parser.parse_args()


def main() -> int:
    from .figures import section
    from .setup import prepared
    from .warm import tls_cpu

    args = arguments()
    started = time.monotonic()
    with prepared(with_auth=False) as bench:
        section("6. the servers side by side")
        side_by_side(bench, args.sessions, args.rounds)
        if args.tls_sessions > 0:
            tls_cpu(bench, args.tls_sessions, with_auth=False)
        print(f"   load average at the end: {load_average()}")
    print(f"run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    run(main, "bench.servers")
