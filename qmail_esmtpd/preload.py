"""What qmail-esmtpd-server loads once, so that no session pays for it.

Every module a session may import lazily (TLS, AUTH, the rare paths) is
imported in the server before it forks; the certificate is loaded into one
TLS context that every child uses for its own handshakes.  A child never
imports anything then, which also means it needs no read access to the
interpreter's library after the server dropped its privileges.
"""

import importlib
import posix

from .config import CHECK_MODULES, SERVERCERT, ControlError, Controls, auth_backend, controls_of
from .log import log

# Lazy imports of a session, always loaded: the TLS code, the rare paths
# (an address literal, an internal error, morercpthosts.cdb), what AUTH
# decoding uses, and every check the registry names, configured or not (a
# rules file or a control file may switch one on at any time).
SESSION_MODULES = (
    "qmail_esmtpd.cli", "ssl", "qmail_esmtpd.tls", "qmail_esmtpd.log", "qmail_esmtpd.localips",
    "qmail_esmtpd.cdb", "traceback", "base64", "binascii", *CHECK_MODULES,
    "qmail_esmtpd.harvest",  # check_recipients' memory across connections
)
# The AUTH backends and what they import lazily: loaded when AUTH is
# configured in the server's environment, its controls or its rules.
AUTH_MODULES = (
    "qmail_esmtpd.auth", "qmail_esmtpd.auth.sasl", "qmail_esmtpd.auth.checkpassword",
    "qmail_esmtpd.auth.postgres", "qmail_esmtpd.auth.accounts", "qmail_esmtpd.auth.db",
    "qmail_esmtpd.auth.limit", "qmail_esmtpd.auth.throttle", "qmail_esmtpd.auth.passwords",
    "psycopg2", "psycopg2.extensions", "psycopg2.errors", "_argon2_cffi_bindings",
    "hmac", "hashlib", "unicodedata", "ipaddress",
    # legacy hashes of imported tables (passlib's handlers, loaded per hash)
    "passlib.context", "importlib.metadata", "bcrypt", "passlib.handlers.bcrypt",
    "passlib.handlers.sha2_crypt", "passlib.handlers.md5_crypt", "passlib.handlers.des_crypt",
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .tls import ServerTLS


def controls_from_environment() -> Controls:
    return controls_of(posix.environ)


def auth_configured(argv: list[bytes], controls: Controls, rules_set_authdb: bool) -> bool:
    """AUTH may be used by some session: checkpassword arguments, authdb, a rule's AUTHDB."""
    if rules_set_authdb:
        return True
    try:
        return auth_backend(argv, posix.environ, controls) is not None
    except ControlError:
        return True  # unreadable now: load the libraries in case a session can read it


def import_modules(names: "tuple[str, ...]") -> list[str]:
    """Import each module; the names that could not be imported (logged by the caller)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # an optional library (passlib) may be absent
            missing.append(name)
    return missing


def _stamp(path: bytes) -> tuple[int, int, int, int] | None:
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class PreloadedTLS:
    """control/servercert.pem loaded once; called as `cli.main`'s `preloaded_tls`.

    Sessions get the loaded context while the file and tlsserverciphers are
    those it was loaded from; otherwise they load their own, as in tcpserver
    mode.  The context issues no session tickets: its ticket key would be the
    same in every child, so one child could resume another's session.
    """

    def __init__(self) -> None:
        self.loaded: "tuple[bytes, bytes | None, object, ServerTLS] | None" = None
        self.stamp: object = None  # the file's stamp at the last attempt, loaded or not

    def load(self, controls: Controls) -> None:
        """(Re)load from `controls`; without a usable certificate nothing is kept."""
        import ssl

        from .lineio import TLSUnavailable
        from .tls import ServerTLS

        self.loaded = None
        certfile = controls.path(SERVERCERT)
        self.stamp = stamp = _stamp(certfile)
        if stamp is None:
            return
        try:
            ciphers = controls.line(b"tlsserverciphers")
            tls = ServerTLS(certfile, ciphers)
        except (ControlError, TLSUnavailable) as e:
            log(f"warning: certificate not preloaded, sessions load their own: {e}")
            return
        tls.context.options |= ssl.OP_NO_TICKET
        self.loaded = (certfile, ciphers, stamp, tls)

    def refresh(self, controls: Controls) -> None:
        """Reload when the certificate file was replaced (one stat)."""
        if _stamp(controls.path(SERVERCERT)) != self.stamp:
            self.load(controls)

    def __call__(self, certfile: bytes, ciphers: bytes | None,
                 remoteip: bytes | None = None) -> "ServerTLS":
        loaded = self.loaded
        if loaded is not None and loaded[:2] == (certfile, ciphers) \
                and _stamp(certfile) == loaded[2]:
            return loaded[3]
        from .tls import ServerTLS

        return ServerTLS(certfile, ciphers, remoteip)
