"""Which recipient domains we accept mail for: rcpthosts and morercpthosts.cdb.

qmail's rule: no rcpthosts file means every recipient; an address without `@`
always passes; otherwise the text after the last `@`, lower-cased, or any of
its suffixes starting with `.`, must be listed.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .cdb import Cdb


class RcptHosts:
    """Callable policy: `rcpthosts(address) -> True/False`, None on a cdb error."""

    def __init__(self, entries: "Iterable[bytes] | None",
                 morercpthosts: bytes | None = None) -> None:
        self.enabled = entries is not None
        self.entries = frozenset(e.lower() for e in entries or ())
        self.cdb_path = morercpthosts
        self._cdb: "Cdb | None" = None

    def __call__(self, address: bytes) -> bool | None:
        if not self.enabled:
            return True
        at = address.rfind(b"@")
        if at < 0:
            return True
        host = address[at + 1:].lower()
        candidates = [host] + [host[i:] for i in range(1, len(host)) if host[i] == 0x2E]
        if any(c in self.entries for c in candidates):
            return True
        if self.cdb_path is None:
            return False
        from .cdb import CdbError

        try:
            cdb = self._open_cdb()
            return any(cdb.get(c) is not None for c in candidates)
        except (OSError, CdbError):  # as in qmail: a control error
            return None

    def _open_cdb(self) -> "Cdb":
        """The cdb reader is imported only when rcpthosts alone did not decide."""
        if self._cdb is None:
            from .cdb import Cdb

            assert self.cdb_path is not None
            self._cdb = Cdb(self.cdb_path)
        return self._cdb
