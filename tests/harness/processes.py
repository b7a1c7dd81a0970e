"""Starting a helper process, reaching what it listens on, ending it."""

import os
import signal
import socket
import subprocess
import time

from .paths import SERVER


class StartError(RuntimeError):
    """A helper process (tcpserver, PostgreSQL) did not start."""


def free_port() -> int:
    """A port nobody listens on right now (a tiny race, fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 10,
                   host: str = "127.0.0.1") -> None:
    """Poll until something accepts on `host`:`port`; StartError if `proc` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise StartError(f"{what} exited {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise StartError(f"{what} not listening after {timeout:g} s") from None
            time.sleep(0.02)


def talk(port: int, data: bytes, timeout: float = 20, host: str = "127.0.0.1") -> bytes:
    """Send everything, then read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def end_group(proc: subprocess.Popen, signalled: bool = False) -> None:
    """SIGTERM to `proc`'s process group (unless the caller signalled it
    already), SIGKILL if it has not ended 5 s later; returns once reaped."""
    if not signalled:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_with_fd3(argv: list, data: bytes, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run() with `data` readable on fd 3, as qmail-popup and Dovecot
    give a checkpassword program its input (`data` fits a pipe's buffer)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)

    def give_fd3() -> None:
        os.dup2(read_end, 3)
        os.set_inheritable(3, True)  # dup2 onto itself (read_end == 3) leaves close-on-exec

    try:
        return subprocess.run(argv, close_fds=False, preexec_fn=give_fd3, **kwargs)
    finally:
        os.close(read_end)


def imported_modules(env: dict, session: bytes) -> set:
    """Run one session on pipes the way the launcher does, with -X importtime."""
    lines = SERVER.read_text().splitlines()
    interpreter = lines[0][2:].split()[0]
    code = "\n".join(lines[1:])
    out = subprocess.run([interpreter, "-IS", "-X", "importtime", "-c", code], input=session,
                         env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, timeout=60)
    if not out.stdout.startswith(b"220 "):
        raise AssertionError(f"no greeting: {out}")
    return {line.split("|")[-1].strip() for line in out.stderr.decode().splitlines()
            if line.startswith("import time:")}
