"""The SMTP session every figure runs, and the check that refuses to count
one that went wrong."""

import base64

from . import BenchError

ME = "mx.example.com"
RCPTHOSTS = "example.com"
MESSAGE_SIZE = 4096


def build_message(size: int = MESSAGE_SIZE) -> bytes:
    """A CRLF message of exactly `size` bytes, no line starting with a dot."""
    head = (
        b"From: a@bench.example\r\nTo: b@example.com\r\nSubject: bench\r\n"
        b"Message-ID: <bench@bench.example>\r\n\r\n"
    )
    filler = b"x" * 70 + b"\r\n"
    lines = (size - len(head)) // len(filler) - 1
    body = head + filler * lines
    return body + b"y" * (size - len(body) - 2) + b"\r\n"


MESSAGE = build_message()
EHLO = (b"EHLO bench.example\r\n", b"250")
MAIL = (b"MAIL FROM:<a@bench.example>\r\n", b"250")
RCPT = (b"RCPT TO:<b@example.com>\r\n", b"250")
DATA = (b"DATA\r\n", b"354")
COMMANDS = (EHLO, MAIL, RCPT, DATA)  # (command, expected reply code), then the message
DATA_END = b".\r\n"
QUIT = b"QUIT\r\n"
SESSION_INPUT = b"".join(c for c, _ in COMMANDS) + MESSAGE + DATA_END + QUIT
ENVELOPE = b"Fa@bench.example\0Tb@example.com\0\0"

# The AUTH session: the same, but it authenticates first and relays to a
# domain outside rcpthosts, which only the AUTH allows.
AUTH_USER = "bench@example.com"
AUTH_PASSWORD = "correct horse battery staple"
AUTH_SENDLIMIT = 10**9  # not 0: with a limit the count is read at MAIL, as in production
AUTH_PLAIN = (b"AUTH PLAIN " + base64.b64encode(f"\0{AUTH_USER}\0{AUTH_PASSWORD}".encode())
              + b"\r\n")
AUTH_COMMANDS = (
    EHLO,
    (AUTH_PLAIN, b"235"),
    MAIL,
    (b"RCPT TO:<c@elsewhere.example>\r\n", b"250"),
    DATA,
)
AUTH_SESSION_INPUT = b"".join(c for c, _ in AUTH_COMMANDS) + MESSAGE + DATA_END + QUIT
AUTH_EHLO = b"250 AUTH LOGIN PLAIN"

# With control/servercert.pem: EHLO offers STARTTLS first (and AUTH only
# inside TLS).  The TLS sessions say EHLO and STARTTLS in cleartext, one
# round trip each, shake hands, then send what follows inside TLS at once.
STARTTLS_EHLO = b"250-STARTTLS"
STARTTLS = (b"STARTTLS\r\n", b"220 ready for tls")
TLS_CLEARTEXT = (EHLO, STARTTLS)
HANDSHAKE_ONLY_INPUT = QUIT  # EHLO, STARTTLS, handshake, QUIT
EHLO_QUIT_INPUT = EHLO[0] + QUIT  # the same without STARTTLS: what TLS adds is the difference
TLS_AUTH_INPUT = AUTH_SESSION_INPUT  # EHLO again, AUTH PLAIN, MAIL, RCPT, DATA, QUIT


def check_session_output(out: bytes, status: int, what: str, auth_offered: bool = False,
                         auth_used: bool = False, starttls: bool = False) -> None:
    """Refuse to count a session that did not greet, queue and say goodbye.

    `auth_offered`: EHLO must advertise AUTH; `auth_used`: AUTH must succeed;
    `starttls`: EHLO must advertise STARTTLS (a certificate is configured).
    """
    lines = out.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    problems = []
    if status != 0:
        problems.append(f"exit status {status}")
    if not lines or not lines[0].startswith(b"220 "):
        problems.append("no 220 greeting")
    codes = [line[:4] for line in lines]
    if auth_offered and AUTH_EHLO not in lines:
        problems.append("EHLO does not offer AUTH")
    if not auth_offered and AUTH_EHLO in lines:
        problems.append("EHLO offers AUTH")
    if starttls and STARTTLS_EHLO not in lines:
        problems.append("EHLO does not offer STARTTLS")
    if not starttls and STARTTLS_EHLO in lines:
        problems.append("EHLO offers STARTTLS")
    if auth_used and b"235 " not in codes:
        problems.append("AUTH PLAIN failed (no 235)")
    if b"354 " not in codes:
        problems.append("no 354 after DATA")
    elif not any(line.startswith(b"250 ok") for line in lines[codes.index(b"354 ") + 1:]):
        problems.append("message not accepted (no '250 ok' after DATA)")
    if not lines or not lines[-1].startswith(b"221 "):
        problems.append("does not end with 221")
    if problems:
        shown = out.decode("ascii", "replace")[-600:]
        raise BenchError(f"{what}: {', '.join(problems)}; output was:\n{shown}")
