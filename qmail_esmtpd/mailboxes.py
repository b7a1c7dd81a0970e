"""Would qmail deliver to this address, or bounce it "no mailbox here by that name"?

The rules are qmail's own, applied in qmail's order, by looking at the same
files qmail-send, qmail-lspawn, qmail-getpw and qmail-local look at:

1. qmail-send: an address without `@` gets `@envnoathost`; a domain in
   `locals` is delivered locally as its local part; otherwise the first
   `virtualdomains` entry matching the whole address, the domain, a
   `.suffix` of it or the empty catch-all turns it into `prefix-local`
   (an empty prefix means: not virtual).  Anything else is remote.
2. qmail-lspawn: `users/cdb` (made from users/assign by qmail-newu): the
   exact `=` entry, else the longest `+` prefix ending in a wildcard
   character (or the bare `+` entry), its extension followed by the rest.
3. qmail-getpw, without a users/cdb entry: the longest prefix of the local
   part ending at a `-` (or the whole of it) that names a system user with a
   uid other than 0 whose home directory it owns; else the alias user with
   the whole local part as extension.
4. qmail-local: no extension (no dash) always delivers (the default
   delivery); otherwise `.qmail-EXT` (lower case, `.` as `:`), then
   `.qmail-EXT-default` cut at each `-` down to `.qmail-default`, must be a
   regular file, else "Sorry, no mailbox here by that name".

Where qmail would defer (a file it cannot read) or where we, as qmaild,
cannot see what qmail-local would see (a 0700 home), the answer is UNSURE
and the recipient is accepted, as qmail-smtpd accepts everything.

Only what can exist is asked for: no .qmail name over 255 bytes (the kernel
refuses it, qmail-local reads that as "not there"), no virtualdomains key
longer than the longest entry, and users/cdb's prefixes hashed in one pass.
"""

import posix
import pwd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .cdb import Cdb

# verdicts
DELIVERED, UNKNOWN, UNSURE, REMOTE = "delivered", "unknown", "unsure", "remote"
ALIAS_USER = b"alias"  # qmail's conf-users, first line
BREAK = b"-"  # qmail's conf-break
USERNAME_MAX = 31  # qmail-getpw's GETPW_USERLEN - 1
NAME_MAX = 255  # a longer .qmail file name is ENAMETOOLONG: "not there" to qmail-local
_S_IFMT, _S_IFREG = 0o170000, 0o100000
# ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG: qmail-local and qmail-getpw take these
# for "not there"; EACCES, EPERM and errors qmail counts as temporary defer
_GONE = (2, 20, 40, 36)


class Unsure(Exception):
    """qmail would defer, or we cannot see what qmail-local would: accept."""


def getpwnam(name: bytes) -> "tuple[int, bytes] | None":
    """(uid, home) of a system user, as qmail-getpw's getpwnam() sees it."""
    try:
        entry = pwd.getpwnam(name.decode("latin-1"))
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_dir.encode("utf-8", "surrogateescape")


class Mailboxes:
    """`mailboxes.verdict(address) -> (DELIVERED|UNKNOWN|UNSURE|REMOTE, why)`."""

    def __init__(self, locals_: "Iterable[bytes]", virtualdomains: "Iterable[bytes]",
                 envnoathost: bytes, users_cdb: bytes,
                 getpw: "Callable[[bytes], tuple[int, bytes] | None]" = getpwnam) -> None:
        self.locals = frozenset(d.lower() for d in locals_)
        self.virtual: dict[bytes, bytes] = {}
        for line in virtualdomains:
            key, colon, prefix = line.partition(b":")
            if colon:
                self.virtual.setdefault(key.lower(), prefix)  # qmail: the first entry wins
        self.longest_virtual = max(map(len, self.virtual), default=0)
        self.envnoathost = envnoathost
        self.users_cdb = users_cdb
        self.getpw = getpw
        self._cdb: "Cdb | None" = None
        self._wildchars: bytes | None = None

    def verdict(self, address: bytes) -> tuple[str, str]:
        local = self.local_part(address)
        if local is None:
            return REMOTE, ""
        try:
            return self.mailbox(local)
        except Unsure as e:
            return UNSURE, str(e)

    # -- qmail-send ----------------------------------------------------------
    def local_part(self, address: bytes) -> bytes | None:
        """What qmail-send hands qmail-lspawn as the local part, or None: remote."""
        at = address.rfind(b"@")
        if at < 0:
            address += b"@" + self.envnoathost
            at = address.rfind(b"@")
        if address[at + 1:].lower() in self.locals:
            return address[:at]
        low = address.lower()
        # no key is longer than the longest entry: the rest cannot match
        for i in range(max(0, len(address) - self.longest_virtual), len(address) + 1):
            if i == 0 or i == at + 1 or i == len(address) or (i > at and low[i] == 0x2E):
                prefix = self.virtual.get(low[i:])
                if prefix is not None:
                    return prefix + b"-" + address[:at] if prefix else None
        return None

    # -- qmail-lspawn: users/cdb, else qmail-getpw ---------------------------
    def mailbox(self, local: bytes) -> tuple[str, str]:
        found = self.assigned(local)
        if found is None:
            found = self.system_user(local)
        home, dash, ext = found
        return self.dot_qmail(home, dash, ext)

    def assigned(self, local: bytes) -> "tuple[bytes, bytes, bytes] | None":
        """(home, dash, ext) from users/cdb, or None: no entry (or no users/cdb)."""
        cdb = self._open_users()
        if cdb is None:
            return None
        wildchars = self._wildchars or b""
        key = b"!" + local.lower()
        from .cdb import CdbError, prefix_hashes

        # every prefix hashed in one pass: an address of dashes has hundreds
        hashes = prefix_hashes(key)
        prefix = memoryview(key)
        try:
            data = cdb.get(key + b"\0")
            rest = b""
            i = len(key)
            while data is None and i > 0:
                if i == 1 or key[i - 1] in wildchars:
                    data = cdb.get(prefix[:i], hashes[i])
                    if data is not None:
                        rest = local[i - 1:]
                i -= 1
        except (OSError, CdbError) as e:  # a damaged cdb: qmail-lspawn defers
            raise Unsure(f"users/cdb unreadable: {e}") from None
        if data is None:
            return None
        fields = data.split(b"\0")
        if len(fields) < 6:
            raise Unsure("users/cdb entry malformed")
        return fields[3], fields[4], fields[5] + rest

    def _open_users(self) -> "Cdb | None":
        if self._cdb is not None:
            return self._cdb
        from .cdb import Cdb, CdbError

        try:
            cdb = Cdb(self.users_cdb)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unsure(f"users/cdb: {e.strerror}") from None
        try:
            wild = cdb.get(b"")
        except (OSError, CdbError) as e:
            cdb.close()
            raise Unsure(f"users/cdb unreadable: {e}") from None
        if wild is None:
            cdb.close()
            raise Unsure("users/cdb has no wildcard record")
        self._cdb, self._wildchars = cdb, wild
        return cdb

    def system_user(self, local: bytes) -> tuple[bytes, bytes, bytes]:
        """qmail-getpw: a user owning its home, longest prefix first; else alias."""
        end = min(len(local), USERNAME_MAX)
        while True:
            if end <= USERNAME_MAX and (end == len(local) or local[end:end + 1] == BREAK):
                entry = self.getpw(local[:end].lower())
                if entry is not None and entry[0] != 0:
                    try:
                        st = posix.stat(entry[1])
                    except OSError as e:
                        if e.errno not in _GONE and e.errno != 13:  # EACCES: qmail skips it too
                            who = local[:end].decode("latin-1")
                            raise Unsure(f"home of {who}: {e.strerror}") from None
                    else:
                        if st.st_uid == entry[0]:
                            if end == len(local):
                                return entry[1], b"", b""
                            return entry[1], b"-", local[end + 1:]
            if end == 0:
                break
            end -= 1
        alias = self.getpw(ALIAS_USER)
        if alias is None:
            raise Unsure("no alias user")
        return alias[1], b"-", local

    # -- qmail-local ---------------------------------------------------------
    def dot_qmail(self, home: bytes, dash: bytes, ext: bytes) -> tuple[str, str]:
        """qmail-local's search; no dash: the default delivery, always."""
        if not dash:
            return DELIVERED, ""
        safe = ext.lower().replace(b".", b":")
        base = home + b"/.qmail" + dash
        room = NAME_MAX - len(b".qmail" + dash)  # for EXT, or a prefix of it and "default"
        candidates = [base + safe] if len(safe) <= room else []
        for i in range(min(len(safe), room - len(b"default")), -1, -1):
            if i == 0 or safe[i - 1:i] == b"-":
                candidates.append(base + safe[:i] + b"default")
        for path in candidates:
            try:
                st = posix.stat(path)
            except OSError as e:
                if e.errno in _GONE:
                    continue
                raise Unsure(f"{path.decode('utf-8', 'replace')}: {e.strerror}") from None
            if st.st_mode & _S_IFMT == _S_IFREG:
                return DELIVERED, path.decode("utf-8", "replace")
        return UNKNOWN, ""
