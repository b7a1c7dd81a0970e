"""Relaying: which recipient domains we accept mail for, rcpthosts and
morercpthosts.cdb, unless the client may relay (RELAYCLIENT, AUTH).

qmail's rule: no rcpthosts file means every recipient; an address without `@`
always passes; otherwise the text after the last `@`, lower-cased, or any of
its suffixes starting with `.`, must be listed.  Suffixes longer than any
entry are not looked up, nor, in morercpthosts.cdb, longer than a domain can
be (255 bytes, RFC 1035).

Ours besides: an international domain (idn.py) that is not listed as written
is looked up in its other forms, so an admin lists `müller.example` or
`xn--mller-kva.example`, and a client may write either.  Only such a domain
costs the conversion; the rcpthosts entries are converted once, when one is met.
"""

from . import replies
from .protocol import BUFFER, DROP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from .cdb import Cdb
    from .config import Settings
    from .protocol import Session, Verdict


DOMAIN_MAX = 255  # RFC 1035: no domain is longer, so morercpthosts.cdb is not asked for more


def suffixes(host: bytes, longest: int) -> "Iterator[bytes]":
    """The host, then each suffix starting with a dot, longest first: those
    not longer than `longest`, as nothing longer can be listed (a domain of
    dots in an 899-byte address would otherwise be 450 suffixes to hash)."""
    if len(host) <= longest:
        yield host
    dot = host.find(b".", max(1, len(host) - longest))
    while dot >= 0:
        yield host[dot:]
        dot = host.find(b".", dot + 1)


class RcptHosts:
    """Callable policy: `rcpthosts(address) -> True/False`, None on a cdb error."""

    def __init__(self, entries: "Iterable[bytes] | None",
                 morercpthosts: bytes | None = None) -> None:
        self.enabled = entries is not None
        self.entries = frozenset(e.lower() for e in entries or ())
        self.longest = max(map(len, self.entries), default=0)
        self.cdb_path = morercpthosts
        self._cdb: "Cdb | None" = None
        self._ascii_entries: frozenset[bytes] | None = None  # in A-label form, once needed
        self.longest_ascii = 0

    def __call__(self, address: bytes) -> bool | None:
        if not self.enabled:
            return True
        at = address.rfind(b"@")
        if at < 0:
            return True
        host = address[at + 1:].lower()
        if any(c in self.entries for c in suffixes(host, self.longest)):
            return True
        international = not host.isascii() or b"xn--" in host  # other forms to try
        if international:
            from .idn import ascii_form

            entries = self._entries_in_ascii()
            if any(c in entries for c in suffixes(ascii_form(host), self.longest_ascii)):
                return True
        if self.cdb_path is None:
            return False
        from .cdb import CdbError

        forms = [host]
        if international:  # a cdb cannot be converted: the address is, both ways
            from .idn import ascii_form, unicode_form

            forms += {ascii_form(host), unicode_form(host)} - {host}
        try:
            cdb = self._open_cdb()
            return any(cdb.get(c) is not None
                       for form in forms for c in suffixes(form, DOMAIN_MAX))
        except (OSError, CdbError):  # as in qmail: a control error
            return None

    def _entries_in_ascii(self) -> frozenset[bytes]:
        if self._ascii_entries is None:
            from .idn import ascii_form

            self._ascii_entries = frozenset(ascii_form(e) for e in self.entries)
            self.longest_ascii = max(map(len, self._ascii_entries), default=0)
        return self._ascii_entries

    def _open_cdb(self) -> "Cdb":
        """The cdb reader is imported only when rcpthosts alone did not decide."""
        if self._cdb is None:
            from .cdb import Cdb

            assert self.cdb_path is not None
            self._cdb = Cdb(self.cdb_path)
        return self._cdb


class Relaying:
    """qmail-smtpd's one check of where mail may go."""

    def __init__(self, rcpthosts: "Callable[[bytes], bool | None]") -> None:
        self.rcpthosts = rcpthosts

    def on_rcpt(self, session: "Session", recipient: bytes) -> "Verdict | None":
        if session.relayclient is not None:
            return None
        allowed = self.rcpthosts(recipient)
        if allowed is None:
            return replies.CONTROLS, DROP
        if not allowed:
            return replies.NO_GATEWAY, BUFFER
        return None


def build(settings: "Settings") -> Relaying:
    return Relaying(RcptHosts(settings.rcpthosts, settings.morercpthosts))
