"""A server's CPU over its whole process tree, from /proc.

A server is more than one process: tcpserver forks a session per connection,
qmail-esmtpd-server a child or a worker, Postfix's master a dozen daemons
(smtpd, cleanup, qmgr, trivial-rewrite, discard, ...) that live across many
sessions.  Counting only the root and the children it reaped would miss the
living ones, so a snapshot sums, over the root and every living descendant
(found through the parent pids of all of /proc/*/stat), each process's own
CPU and the CPU of the children it reaped (cutime + cstime).  CPU of a child
that dies between two snapshots moves into its parent's reaped total, so the
difference of two snapshots is what the tree used in between, whichever
processes came and went.  A process's own CPU is the larger of stat's
utime + stime (whole clock ticks) and the sum of its threads' schedstat run
times (nanoseconds, living threads only); reaped CPU exists only in ticks,
so a difference is good to about one tick per reaping process.
"""

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
IDLE = 0.0005  # seconds of CPU in one poll of settled_cpu() that count as idle


def _stat_fields(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _threads_ns(pid: str) -> int:
    """Run time of `pid`'s living threads in ns (0 without schedstat)."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                total += int(Path(task.path, "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total


def tree_cpu(root: int) -> float:
    """Seconds of CPU used so far by `root` and all its descendants, living and reaped."""
    stats = {}
    children: dict[str, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) is not None:
            stats[entry.name] = fields
            children.setdefault(fields[1], []).append(entry.name)  # fields[1]: ppid
    total = 0.0
    pending = [str(root)]
    while pending:
        pid = pending.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        # Fields 14-17 of stat(5) (here 11-14): utime stime cutime cstime.
        own_ticks = int(fields[11]) + int(fields[12])
        reaped_ticks = int(fields[13]) + int(fields[14])
        total += max(own_ticks / TICK, _threads_ns(pid) / 1e9) + reaped_ticks / TICK
        pending.extend(children.get(pid, ()))
    return total


def settled_cpu(root: int, poll: float = 0.05, limit: float = 3.0) -> float:
    """tree_cpu(root) once the tree is idle (under IDLE of CPU in each of two
    polls `poll` seconds apart; at most `limit` seconds from now): the
    sessions' last children reaped, the last queued message delivered.  Idle,
    not silent: a server that wakes on a timer (the fork floor's select) never is."""
    deadline = time.monotonic() + limit
    last = tree_cpu(root)
    calm = 0
    while calm < 2 and time.monotonic() < deadline:
        time.sleep(poll)
        now = tree_cpu(root)
        calm = calm + 1 if now - last < IDLE else 0
        last = now
    return last
