"""TLS over fds 0 and 1: tcpserver hands us no socket, so records go through
the `ssl` module's memory BIOs and the plain channel's bounded reads and writes.

Imported at the first STARTTLS (or at start-up for SMTPS): a session that
never asks for TLS never loads `ssl`.
"""

import ssl

from .lineio import READ_SIZE, Channel, Gone, TLSUnavailable
from .log import log


class ServerTLS:
    """control/servercert.pem (chain and key) and control/tlsserverciphers, loaded.

    Every failure is logged here, where the file is known, then raised.
    """

    def __init__(self, certfile: bytes, ciphers: bytes | None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION  # a client may not restart the handshake
        try:
            context.load_cert_chain(certfile.decode("utf-8", "surrogateescape"))
            if ciphers:
                context.set_ciphers(ciphers.decode("ascii", "replace"))
        except (OSError, ssl.SSLError) as e:
            log(f"tls unavailable: {certfile.decode('utf-8', 'replace')}: {e}")
            raise TLSUnavailable() from None
        self.context = context

    def wrap(self, plain: Channel) -> "TLSChannel":
        """Shake hands over the plain channel's fds; Gone (logged) if that fails."""
        channel = TLSChannel(plain, self.context)
        try:
            channel.handshake()
        except Gone as e:
            log(f"tls handshake failed: {e}")
            raise
        return channel


class TLSChannel(Channel):
    """The same Transport, its bytes on the wire sealed in TLS records."""

    def __init__(self, plain: Channel, context: ssl.SSLContext) -> None:
        super().__init__(plain.timeout, plain.rfd, plain.wfd)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    @property
    def cipher(self) -> bytes:
        found = self.tls.cipher()
        return (found[0] if found else "unknown").encode("ascii", "replace")

    def handshake(self) -> None:
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
