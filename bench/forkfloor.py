"""The floor of any fork-per-connection Python SMTP server, for bench/servers.py.

Run as `python -I -S bench/forkfloor.py [PORT]`: it imports what
qmail-esmtpd-server preloads for plain sessions (`ssl` is the big one),
listens on 127.0.0.1:PORT (default: any free port), prints its port and
forks one child per connection, like the server.  The child answers
whatever smtp-source or the bench's own client says (HELO or EHLO, MAIL,
RCPT, DATA, RSET, NOOP, QUIT) with fixed replies (no control files, no
rules, no checks) and pipes the message to $QMAILQUEUE as qmail-smtpd does.
Whatever a real session does costs on top of this.  bench/reusefloor.py
serves the same session from workers that outlive one connection.
"""

import gc
import os
import posix
import select
import socket
import ssl  # noqa: F401  (preloaded by the server: part of what every fork copies)
import sys

REPLIES = {b"EHLO": b"250-floor\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
           b"HELO": b"250 floor\r\n", b"MAIL": b"250 ok\r\n", b"RCPT": b"250 ok\r\n",
           b"RSET": b"250 flushed\r\n", b"NOOP": b"250 ok\r\n", b"QUIT": b"221 floor\r\n"}


def session(fd: int, queue: bytes) -> int:
    """One SMTP session on `fd`, up to QUIT (the process exits at EOF)."""
    buffered = [b""]

    def line() -> bytes:
        while b"\n" not in buffered[0]:
            data = posix.read(fd, 65536)
            if not data:
                posix._exit(1)
            buffered[0] += data
        text, _, buffered[0] = buffered[0].partition(b"\n")
        return text

    posix.write(fd, b"220 floor ESMTP\r\n")
    while True:
        verb = line()[:4].upper()
        if verb == b"DATA":
            posix.write(fd, b"354 go ahead\r\n")
            message = []
            while (text := line()) != b".\r":
                message.append(text + b"\n")
            body_r, body_w = posix.pipe()
            envelope_r, envelope_w = posix.pipe()
            pid = posix.posix_spawn(queue, [queue], posix.environ, file_actions=[
                (posix.POSIX_SPAWN_DUP2, body_r, 0), (posix.POSIX_SPAWN_DUP2, envelope_r, 1)])
            posix.close(body_r)
            posix.close(envelope_r)
            posix.write(body_w, b"Received: from floor\n" + b"".join(message))
            posix.close(body_w)
            posix.write(envelope_w, b"Fa@floor\0Tb@floor\0\0")
            posix.close(envelope_w)
            posix.waitpid(pid, 0)
            posix.write(fd, b"250 ok\r\n")
        else:
            posix.write(fd, REPLIES.get(verb, b"502 unimplemented\r\n"))
            if verb == b"QUIT":
                return 0


def listen() -> socket.socket:
    """127.0.0.1:PORT (argv[1], default any), its port printed; garbage frozen
    as the server freezes it before it forks."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    gc.collect()
    gc.freeze()
    return listener


def main() -> None:
    queue = posix.environ[b"QMAILQUEUE"]
    listener = listen()
    while True:
        try:
            while posix.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        select.select([listener], [], [], 0.05)
        listener.setblocking(False)
        try:
            fd, _ = listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            continue
        if os.fork() == 0:
            listener.close()
            os._exit(session(fd, queue))
        posix.close(fd)


if __name__ == "__main__":
    sys.exit(main())
