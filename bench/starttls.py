"""The client end of a STARTTLS session with the server on pipes.

The server runs on pipes as in the other pipe figures; this process plays
the client: EHLO and STARTTLS in cleartext, one round trip each, then TLS
through an `ssl.SSLObject` over memory BIOs (client side, CERT_NONE), its
records carried over the same pipes.  pipes.py counts the server's CPU (the
reaped child's); the client's is this process's own and is not counted.
"""

import os
import select
import ssl
import subprocess
import time

from . import BenchError
from .session import AUTH_EHLO, STARTTLS_EHLO, TLS_CLEARTEXT

CHUNK = 65536


def client_context() -> ssl.SSLContext:
    """Any certificate will do: the bench's is self-signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class PipeClient:
    """Reads and writes the server's pipes, each read bounded by one deadline."""

    def __init__(self, proc: subprocess.Popen, what: str, timeout: float) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.wfd, self.rfd = proc.stdin.fileno(), proc.stdout.fileno()
        self.what = what
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def receive(self) -> bytes:
        """The next bytes from the server, b"" at EOF."""
        wait = self.deadline - time.monotonic()
        if wait <= 0 or not select.select([self.rfd], [], [], wait)[0]:
            raise BenchError(f"{self.what}: no answer within {self.timeout:g} s")
        return os.read(self.rfd, CHUNK)

    def reply(self, expect: bytes) -> bytes:
        """One whole cleartext reply (every line); its last line must start with `expect`."""
        text = b""
        while not (text.endswith(b"\r\n") and text.rsplit(b"\r\n", 2)[-2][3:4] == b" "):
            data = self.receive()
            if not data:
                raise BenchError(f"{self.what}: server closed; got {text[-300:]!r}")
            text += data
        last = text.rsplit(b"\r\n", 2)[-2]
        if not last.startswith(expect):
            raise BenchError(f"{self.what}: expected {expect.decode()}, got {text[-300:]!r}")
        return text


def starttls_session(argv: list[str], env: dict[str, str], inside: bytes, what: str,
                     timeout: float) -> tuple[int, bytes, bytes, str]:
    """One session to the end: (exit status, cleartext, plaintext inside TLS,
    "protocol cipher" negotiated).

    The cleartext part is checked here: greeting, EHLO offering STARTTLS and
    not AUTH (with a certificate AUTH is offered only inside TLS), 220 to
    STARTTLS; `inside` goes at once after the handshake, and everything until
    EOF is read back.
    """
    context = client_context()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        client = PipeClient(proc, what, timeout)
        clear = client.reply(b"220 ")
        for command, code in TLS_CLEARTEXT:
            client.send(command)
            clear += client.reply(code)
        ehlo = clear.split(b"\r\n")
        if STARTTLS_EHLO not in ehlo:
            raise BenchError(f"{what}: EHLO does not offer STARTTLS: {clear!r}")
        if AUTH_EHLO in ehlo:
            raise BenchError(f"{what}: EHLO offers AUTH in cleartext: {clear!r}")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=False)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                client.send(outgoing.read())
                data = client.receive()
                if not data:
                    raise BenchError(f"{what}: server closed during the handshake") from None
                incoming.write(data)
            except ssl.SSLError as e:
                raise BenchError(f"{what}: handshake failed: {e}") from None
        cipher = tls.cipher()
        negotiated = f"{cipher[1]} {cipher[0]}" if cipher else "?"
        tls.write(inside)
        client.send(outgoing.read())
        proc.stdin.close()  # type: ignore[union-attr]
        plain = []
        while True:
            try:
                chunk = tls.read(CHUNK)
                if not chunk:  # the server's close_notify after 221
                    break
                plain.append(chunk)
            except ssl.SSLWantReadError:
                data = client.receive()
                if data:
                    incoming.write(data)
                else:
                    incoming.write_eof()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break  # the server went away without close_notify
            except ssl.SSLError as e:
                raise BenchError(f"{what}: TLS error after the handshake: {e}") from None
        status = proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
    return status, clear, b"".join(plain), negotiated
