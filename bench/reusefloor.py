"""The floor of a Python SMTP server whose workers outlive one connection.

Run as `python -I -S bench/reusefloor.py WORKERS MAX_USE [PORT]`: the fork
floor's preloads, listening socket and fixed-reply session (bench/forkfloor.py,
imported from beside this file), but served by WORKERS processes forked once,
each accepting on the one socket and serving up to MAX_USE connections in
turn (Postfix's max_use) before it exits and is replaced.  What a pool of warm
workers can do at best, as the fork floor is for a fork per connection: the
difference between the two is what reuse saves (issue 26).
"""

import os
import posix
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forkfloor  # noqa: E402  (from beside this file: -I leaves its folder off sys.path)


def worker(listener: "forkfloor.socket.socket", queue: bytes, max_use: int) -> None:
    """Serve `max_use` connections one after another, then exit."""
    for _ in range(max_use):
        fd, _ = listener._accept()  # type: ignore[attr-defined]
        forkfloor.session(fd, queue)
        posix.close(fd)
    os._exit(0)


def main() -> None:
    workers, max_use = int(sys.argv.pop(1)), int(sys.argv.pop(1))
    queue = posix.environ[b"QMAILQUEUE"]
    listener = forkfloor.listen()
    running = 0
    while True:
        while running < workers:
            if os.fork() == 0:
                worker(listener, queue, max_use)
            running += 1
        os.wait()
        running -= 1


if __name__ == "__main__":
    sys.exit(main())
