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
from .kept import Stamp, stamp_of
from .log import log

# check_rbl's DNS library, and the record types its answers bring (each type's
# class is imported when a packet first holds one): TXT and A asked, CNAME on
# the way, SOA and NS in the authority section, AAAA beside them.
DNS_MODULES = (
    "dns.exception", "dns.name", "dns.resolver", "dns.reversename", "dns.rdtypes.ANY.TXT",
    "dns.rdtypes.IN.A", "dns.rdtypes.IN.AAAA", "dns.rdtypes.ANY.CNAME", "dns.rdtypes.ANY.SOA",
    "dns.rdtypes.ANY.NS",
)
# Lazy imports of a session, always loaded: the TLS code, the rare paths
# (an address literal, an internal error, morercpthosts.cdb, an international
# domain and its IDNA tables), what AUTH decoding uses, and every check the
# registry names, configured or not (a rules file or a control file may
# switch one on at any time).
SESSION_MODULES = (
    "qmail_esmtpd.cli", "ssl", "qmail_esmtpd.tls", "qmail_esmtpd.log", "qmail_esmtpd.localips",
    "qmail_esmtpd.cdb", "traceback", "base64", "binascii",
    "qmail_esmtpd.idn", "idna", "idna.core", "idna.idnadata", "idna.uts46data", "unicodedata",
    "encodings.punycode",  # the codec idna encodes A-labels with, found by name
    *CHECK_MODULES,
    "qmail_esmtpd.harvest",  # check_recipients' memory across connections
    *DNS_MODULES,
)
# The AUTH backends and what they import lazily: loaded when AUTH is
# configured in the server's environment, its controls or its rules.
AUTH_MODULES = (
    "qmail_esmtpd.auth", "qmail_esmtpd.auth.sasl", "qmail_esmtpd.auth.checkpassword",
    "qmail_esmtpd.auth.postgres", "qmail_esmtpd.auth.accounts", "qmail_esmtpd.auth.db",
    "qmail_esmtpd.auth.limit", "qmail_esmtpd.auth.throttle", "qmail_esmtpd.auth.passwords",
    "psycopg2", "psycopg2.extensions", "psycopg2.errors", "_argon2_cffi_bindings",
    "hmac", "hashlib", "unicodedata", "ipaddress", "grp",  # grp: who cannot read authfailkey
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


def load_user_database() -> None:
    """glibc loads its NSS modules at the first getpwnam(): once here, not in
    every child whose recipient check asks (within a CPU budget per recipient)."""
    import pwd

    try:
        pwd.getpwnam("alias")
    except KeyError:
        pass


def import_modules(names: "tuple[str, ...]") -> list[str]:
    """Import each module; the names that could not be imported (logged by the caller)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # an optional library (passlib) may be absent
            missing.append(name)
    return missing


def _stamp(path: bytes) -> "Stamp | None":
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return stamp_of(st)


class PreloadedTLS:
    """control/servercert.pem loaded once per cipher list; called as `cli.main`'s
    `preloaded_tls`.

    A context is loaded for each list a session may ask for (tls.possible_cipher_lists:
    the values $TLSSERVERCIPHERS takes in the server's environment and rules, else
    control/tlsserverciphers, else both defaults).  A session gets the one loaded
    for its own list while the file is the one loaded; any other list, or a new
    file, it loads itself, as in tcpserver mode.  The contexts issue no session
    tickets (tls.py): a ticket key would be the same in every child, so one
    child could resume another's session.
    """

    MOST = 8  # contexts kept: a rules file naming more lists has sessions load the rest

    def __init__(self) -> None:
        self.certfile = b""
        self.contexts: "dict[bytes, ServerTLS]" = {}
        self.named: tuple[bytes, ...] = ()  # the variable's values, kept for refresh()
        self.stamp: object = None  # the file's stamp at the last attempt, loaded or not

    def load(self, controls: Controls, named: "tuple[bytes, ...]" = ()) -> None:
        """(Re)load from `controls`, for the lists $TLSSERVERCIPHERS may `name`;
        without a usable certificate nothing is kept."""
        from .lineio import TLSUnavailable
        from .tls import ServerTLS, possible_cipher_lists

        self.contexts, self.named = {}, named
        self.certfile = certfile = controls.path(SERVERCERT)
        self.stamp = _stamp(certfile)
        if self.stamp is None:
            return
        try:
            lists = possible_cipher_lists(controls, named)[:self.MOST]
        except ControlError as e:
            log(f"warning: certificate not preloaded, sessions load their own: {e}")
            return
        for ciphers in lists:
            try:  # tls.py logs why; a session naming a list OpenSSL refuses gets 454
                tls = ServerTLS(certfile, ciphers)
            except TLSUnavailable:
                if not self.contexts:  # the certificate itself, most likely: once is enough
                    break
                continue
            self.contexts[ciphers] = tls
        if not self.contexts:
            log("warning: certificate not preloaded, sessions load their own")

    def refresh(self, controls: Controls) -> None:
        """Reload when the certificate file was replaced (one stat)."""
        if _stamp(controls.path(SERVERCERT)) != self.stamp:
            self.load(controls, self.named)

    def __call__(self, certfile: bytes, ciphers: bytes | None,
                 remoteip: bytes | None = None) -> "ServerTLS":
        loaded = self.contexts.get(ciphers) if ciphers is not None else None
        if loaded is not None and certfile == self.certfile and _stamp(certfile) == self.stamp:
            return loaded
        from .tls import ServerTLS

        return ServerTLS(certfile, ciphers, remoteip)
