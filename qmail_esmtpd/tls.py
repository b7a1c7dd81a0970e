"""TLS over fds 0 and 1: tcpserver hands us no socket, so records go through
the `ssl` module's memory BIOs and the plain channel's bounded reads and writes.

Imported at the first STARTTLS (or at start-up for SMTPS): a session that
never asks for TLS never loads `ssl`.  The handshake as a whole must end
within timeoutsmtpd: the per-read timeout alone would let a client that
trickles a byte now and then hold it open for ever.
"""

import ssl
import time

from .lineio import READ_SIZE, Channel, Gone, Timeout, TLSUnavailable
from .log import log, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .config import Controls

# The TLS 1.2 cipher list, unless $TLSSERVERCIPHERS or control/tlsserverciphers
# names one; TLS 1.3's suites are OpenSSL's, untouched.  Where TLS is mandatory
# (SMTPS, submission) forward secrecy and AEAD only: a client that cannot
# negotiate them cannot log in anyway.  Where it is opportunistic (port 25) a
# sender that cannot negotiate delivers in cleartext instead (RFC 7435), so
# everything OpenSSL offers at its security level, CBC and static RSA included.
CIPHERS_VARIABLE = b"TLSSERVERCIPHERS"
MANDATORY_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
OPPORTUNISTIC_CIPHERS = b"DEFAULT"


def tls_mandatory(env: "Mapping[bytes, bytes]") -> bool:
    """SMTPS, or AUTH required before MAIL (submission): no cleartext to fall back to."""
    return b"SMTPS" in env or env.get(b"SMTPAUTH") == b"!"


def cipher_list(env: "Mapping[bytes, bytes]", controls: "Controls") -> bytes:
    """$TLSSERVERCIPHERS (a rule can set it per service), else control/tlsserverciphers,
    else the default for this session's kind of TLS.  An empty one counts as unset."""
    return env.get(CIPHERS_VARIABLE) or controls.line(b"tlsserverciphers") or \
        (MANDATORY_CIPHERS if tls_mandatory(env) else OPPORTUNISTIC_CIPHERS)


def possible_cipher_lists(controls: "Controls", named: "Iterable[bytes]") -> list[bytes]:
    """Every list cipher_list() may give, when $TLSSERVERCIPHERS can take the
    `named` values: the file's or the defaults first, then those."""
    configured = controls.line(b"tlsserverciphers")
    lists = [configured] if configured else [MANDATORY_CIPHERS, OPPORTUNISTIC_CIPHERS]
    return list(dict.fromkeys([*lists, *(value for value in named if value)]))


def client(remoteip: bytes | None) -> str:
    """` ip=...` for a log line, when the caller said who the client is."""
    return "" if remoteip is None else f" ip={printable(remoteip)}"


class ServerTLS:
    """control/servercert.pem (chain and key) and a cipher list (cipher_list();
    None: MANDATORY_CIPHERS), loaded.

    Every failure is logged here, where the file is known, then raised;
    `remoteip`, when given, names the client in that line.
    """

    def __init__(self, certfile: bytes, ciphers: bytes | None,
                 remoteip: bytes | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION  # a client may not restart the handshake
        # No session tickets: no ticket key to share between the processes a
        # context is forked into, no TLS 1.3 ticket (stateful or not) computed
        # and sent after every handshake for a resumption that a new process
        # per connection (or a worker the client is not likely to meet again)
        # could not offer anyway.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        try:
            context.load_cert_chain(certfile.decode("utf-8", "surrogateescape"))
            context.set_ciphers((ciphers or MANDATORY_CIPHERS).decode("ascii", "replace"))
        except (OSError, ssl.SSLError) as e:
            log(f"tls unavailable{client(remoteip)}: "
                f"{certfile.decode('utf-8', 'replace')}: {e}")
            raise TLSUnavailable() from None
        self.context = context

    def wrap(self, plain: Channel, remoteip: bytes | None = None) -> "TLSChannel":
        """Shake hands over the plain channel's fds, within its timeout in all;
        Gone (logged, naming `remoteip` when given) if that fails."""
        channel = TLSChannel(plain, self.context)
        try:
            channel.handshake()
        except Gone as e:
            log(f"tls handshake failed{client(remoteip)}: {e}")
            raise
        return channel


class TLSChannel(Channel):
    """The same Transport, its bytes on the wire sealed in TLS records."""

    def __init__(self, plain: Channel, context: ssl.SSLContext) -> None:
        super().__init__(plain.timeout, plain.rfd, plain.wfd)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.deadline: float | None = None  # while shaking hands: when that must be over

    @property
    def cipher(self) -> bytes:
        found = self.tls.cipher()
        return (found[0] if found else "unknown").encode("ascii", "replace")

    def handshake(self) -> None:
        """Within one timeoutsmtpd in all.  Running out of time is Gone, not
        Timeout: a 451 in cleartext has no place inside a handshake."""
        self.deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._pump()
                except (ssl.SSLError, ValueError) as e:
                    self._send_records()  # the alert, if any
                    raise Gone(str(e)) from None
            self._send_records()
        except Timeout:
            raise Gone(f"no handshake within {self.timeout:g} s") from None
        finally:
            self.deadline = None

    def _seconds(self) -> float:
        if self.deadline is None:
            return self.timeout
        return min(self.timeout, max(self.deadline - time.monotonic(), 0.0))

    def close(self) -> None:
        """Our close_notify, without waiting for the client's (RFC 8446 6.1 allows it)."""
        try:
            self.tls.unwrap()
        except ssl.SSLError:  # SSLWantReadError: the client's close_notify, not awaited
            pass
        self._send_records()

    def _pump(self) -> None:
        """Records out, then the next bytes from the client in."""
        self._send_records()
        data = super()._receive()
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def _send_records(self) -> None:
        data = self.outgoing.read()
        if data:
            super()._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.tls.write(data)
        except ssl.SSLError as e:
            raise Gone(str(e)) from None
        self._send_records()

    def _receive(self) -> bytes:
        while True:
            try:
                return self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                self._pump()
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as e:
                raise Gone(str(e)) from None
