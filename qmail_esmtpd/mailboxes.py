"""Would qmail deliver to this address, or bounce it "no mailbox here by that name"?

The rules are qmail's own, applied in qmail's order, by looking at the same
files qmail-send, qmail-lspawn, qmail-getpw and qmail-local look at:

1. qmail-send's rewrite(): an address without `@` gets `@envnoathost`;
   while its domain is in `percenthack`, the last `%` before it becomes the
   `@` (`user%host@pct` is `user@host`); a domain in `locals` is delivered
   locally as its local part; otherwise the first `virtualdomains` key
   matching the whole address, the domain, a `.suffix` of it or the empty
   catch-all turns it into `prefix-local` (an empty prefix means: not
   virtual).  A key listed twice means its last line (constmap).  Anything
   else is remote.  Ours besides: a domain qmail-send would send remote
   that is listed in its other international form (idn.py: `müller.example`
   for `xn--mller-kva.example`, or back) is taken as listed, so its unknown
   recipients are refused rather than bounced as a loop; where qmail-send
   matches the bytes (a catch-all too) its answer stands.
2. qmail-lspawn: an empty local part is delivered to no one, successfully;
   `users/cdb` (made from users/assign by qmail-newu): the exact `=` entry,
   else the longest `+` prefix ending in a wildcard character (or the bare
   `+` entry), its extension followed by the rest.  An entry with uid 0 is
   deferred ("not allowed to perform deliveries as root").
3. qmail-getpw, without a users/cdb entry: the longest prefix of the local
   part ending at a `-` (or the whole of it), shorter than 32 bytes and
   lower-cased in ASCII, that names a system user with a uid other than 0
   whose home directory it owns; else the alias user with the whole local
   part as extension.
4. qmail-local, as the user: it defers when it cannot enter the home, or the
   home is sticky or writable by others (conf-patrn); then no extension (no
   dash) always delivers (the default delivery); otherwise `.qmail-EXT`
   (lower case, `.` as `:`), then `.qmail-EXT-default` cut at each `-` down
   to `.qmail-default`: the first regular file delivers (or defers, when
   writable by others); one it may not open defers; else "Sorry, no mailbox
   here by that name".

Where qmail would defer, or where we, as qmaild, cannot see what qmail-local
would see (a 0700 home), the answer is UNSURE and the recipient is accepted,
as qmail-smtpd accepts everything.

What it costs is bounded: no .qmail name over 255 bytes is looked for (the
kernel refuses it, qmail-local reads that as "not there"), no virtualdomains
key longer than the longest entry, users/cdb's prefixes are hashed in one
pass, a home is listed once rather than asked for many .qmail names, and the
user database is asked only for names that can be users
(`could_be_user`), the alias once a session, and for no more names once the
recipient's lookups have taken LOOKUP_BUDGET of CPU, counting the next as
long as the slowest so far: past it the answer is UNSURE.
"""

import posix
import pwd
import sys
import time

from .config import leading_number

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .cdb import Cdb
    from .kept import KeptFiles

    # (uid, gid, home) of a system user, or None: what getpwnam() gives qmail-getpw
    PasswdEntry = tuple[int, int, bytes] | None
    # (uid, gid, home, dash, ext): whose delivery, and the .qmail extension it looks for
    Assignment = tuple[int, int, bytes, bytes, bytes]

# verdicts
DELIVERED, UNKNOWN, UNSURE, REMOTE = "delivered", "unknown", "unsure", "remote"
ALIAS_USER = b"alias"  # qmail's conf-users, first line
BREAK = b"-"  # qmail's conf-break
USERNAME_MAX = 31  # qmail-getpw's GETPW_USERLEN - 1
PATRN = 0o002  # qmail's conf-patrn (notqmail's): bits not allowed in ~ and ~/.qmail*
NAME_MAX = 255  # a longer .qmail file name is ENAMETOOLONG: "not there" to qmail-local
LISTING_FROM = 8  # .qmail names to look for, past which the home is listed once instead
# CPU seconds of user-database lookups per recipient (one always made): the
# cost of about 30 lookups on a small passwd, under two scans of a 20 000-line
# one; wide enough that a lookup slowed once (a fresh child's first) does not
# decide a verdict
LOOKUP_BUDGET = 0.005
NOT_ASKED = object()  # a local part not yet looked up in a kept users/cdb
_S_IFMT, _S_IFREG, _S_IFDIR, _S_ISVTX = 0o170000, 0o100000, 0o040000, 0o1000
_FS_ENCODING = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
# qmail's error_temp(): an error after which qmail-getpw and qmail-local defer
TEMPORARY_ERRORS = ("EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK", "EAGAIN",
                    "EDEADLK", "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC", "ENETDOWN",
                    "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS",
                    "ETOOMANYREFS", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EPROCLIM",
                    "EUSERS", "EDQUOT", "ESTALE", "ENOLCK")


def temporary(error: OSError) -> bool:
    """Whether qmail's error_temp() calls `error` temporary.  errno is
    imported only here: a session that meets no error does not load it."""
    import errno

    return any(error.errno == getattr(errno, name, None) for name in TEMPORARY_ERRORS)


class Unsure(Exception):
    """qmail would defer, or we cannot see what qmail-local would: accept."""


def getpwnam(name: bytes) -> "PasswdEntry":
    """(uid, gid, home) of a system user, as qmail-getpw's getpwnam() sees it:
    the name's bytes exactly (pwd encodes a str with the filesystem encoding
    and surrogateescape, so decoding so gives it back the same bytes)."""
    try:
        entry = pwd.getpwnam(name.decode(*_FS_ENCODING))
    except (KeyError, ValueError):  # ValueError: a NUL, where C's string would end
        return None
    return entry.pw_uid, entry.pw_gid, entry.pw_dir.encode(*_FS_ENCODING)


def could_be_user(name: bytes) -> bool:
    """Whether getpwnam() could give qmail-getpw a user by this name: in
    /etc/passwd, whose accounts qmail-getpw speaks of, a name starting with
    `+` or `-` is a NIS compat line that getpwnam() never returns (POSIX and
    useradd forbid both for a name, too); a longer name qmail-getpw never asks."""
    return len(name) <= USERNAME_MAX and name[:1] not in (b"+", b"-")


def permits(st: "posix.stat_result", uid: int, gid: int, bit: int) -> bool:
    """Whether user uid, group gid alone (qmail-lspawn's prot_gid) has
    permission `bit` (4 read, 1 search) on what `st` describes."""
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & bit)
    if st.st_gid == gid:
        return bool(st.st_mode >> 3 & bit)
    return bool(st.st_mode & bit)


class KeptUsers:
    """users/cdb as a warm worker keeps it (kept.KeptFiles), for as long as
    the file is unchanged: read whole, its wildcard characters, and the
    answers looked up in it so far (a lookup is a pure function of the
    file and the local part)."""

    __slots__ = ("cdb", "wildchars", "answers")
    MOST_ANSWERS = 1024  # local parts whose answer is kept; then they start again

    def __init__(self, data: bytes) -> None:
        """Raises Unsure when the file cannot be used."""
        from .cdb import CdbError, CdbInMemory

        try:
            self.cdb: "Cdb" = CdbInMemory(data)
            wildchars = self.cdb.get(b"")
        except CdbError as e:
            raise Unsure(f"users/cdb unreadable: {e}") from None
        if wildchars is None:
            raise Unsure("users/cdb has no wildcard record")
        self.wildchars: bytes = wildchars
        self.answers: "dict[bytes, Assignment | None]" = {}


class Mailboxes:
    """`mailboxes.verdict(address) -> (DELIVERED|UNKNOWN|UNSURE|REMOTE, why)`."""

    def __init__(self, locals_: "Iterable[bytes]", virtualdomains: "Iterable[bytes]",
                 envnoathost: bytes, users_cdb: bytes,
                 getpw: "Callable[[bytes], PasswdEntry]" = getpwnam,
                 percenthack: "Iterable[bytes]" = (),
                 kept: "KeptFiles | None" = None) -> None:
        self.locals = frozenset(d.lower() for d in locals_)
        self.percenthack = frozenset(d.lower() for d in percenthack)
        self.virtual: dict[bytes, bytes] = {}
        for line in virtualdomains:
            key, colon, prefix = line.partition(b":")
            if colon:
                self.virtual[key.lower()] = prefix  # constmap: the last entry wins
        self.longest_virtual = max(map(len, self.virtual), default=0)
        self._ascii_tables: "tuple[frozenset[bytes], dict[bytes, bytes], int] | None" = None
        self.envnoathost = envnoathost
        self.users_cdb = users_cdb
        self.getpw = getpw
        self.kept = kept  # a warm worker's copy of users/cdb
        self._cdb: "Cdb | None" = None
        self._wildchars: bytes | None = None
        self._opened = False  # self._cdb is this session's to close (not the worker's copy)
        self._answers: "dict[bytes, Assignment | None] | None" = None  # the copy's
        self._alias: "PasswdEntry" = None
        self._alias_asked = False

    def close(self) -> None:
        """users/cdb, if a lookup opened it (a worker's copy stays as it is)."""
        cdb, self._cdb = self._cdb, None
        opened, self._opened = self._opened, False
        if cdb is not None and opened:
            cdb.close()

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
        i = address.rfind(b"@")
        if i < 0:
            i = len(address)
            address += b"@" + self.envnoathost
        while address[i + 1:].lower() in self.percenthack:
            j = address.rfind(b"%", 0, i)
            if j < 0:
                break
            address = address[:j] + b"@" + address[j + 1:i]
            i = j
        at = address.rfind(b"@")
        listed, local = self._route(address, at, self.locals, self.virtual,
                                    self.longest_virtual)
        domain = address[at + 1:].lower()
        if not listed and (not domain.isascii() or b"xn--" in domain):  # international
            from .idn import ascii_form

            listed, local = self._route(address[:at + 1] + ascii_form(domain), at,
                                        *self._tables_in_ascii())
        return local

    @staticmethod
    def _route(address: bytes, at: int, locals_: "frozenset[bytes]",
               virtual: "dict[bytes, bytes]", longest: int) -> "tuple[bool, bytes | None]":
        """(listed in locals or virtualdomains, the local part or None: remote)."""
        if address[at + 1:].lower() in locals_:
            return True, address[:at]
        low = address.lower()
        # no key is longer than the longest entry: the rest cannot match
        for i in range(max(0, len(address) - longest), len(address) + 1):
            if i == 0 or i == at + 1 or i == len(address) or (i > at and low[i] == 0x2E):
                prefix = virtual.get(low[i:])
                if prefix is not None:
                    return True, prefix + b"-" + address[:at] if prefix else None
        return False, None

    def _tables_in_ascii(self) -> "tuple[frozenset[bytes], dict[bytes, bytes], int]":
        """locals and virtualdomains with their domains in A-label form, made
        at the first international domain of the session."""
        if self._ascii_tables is None:
            from .idn import ascii_form

            virtual = {}
            for key, prefix in self.virtual.items():
                at = key.rfind(b"@")
                virtual[key[:at + 1] + ascii_form(key[at + 1:])] = prefix
            self._ascii_tables = (frozenset(ascii_form(d) for d in self.locals), virtual,
                                  max(map(len, virtual), default=0))
        return self._ascii_tables

    # -- qmail-lspawn: users/cdb, else qmail-getpw ---------------------------
    def mailbox(self, local: bytes) -> tuple[str, str]:
        if not local:
            return DELIVERED, "empty local part: qmail-lspawn delivers it to no one"
        found = self.assigned(local)
        if found is None:
            found = self.system_user(local)
        return self.dot_qmail(*found)

    def assigned(self, local: bytes) -> "Assignment | None":
        """(uid, gid, home, dash, ext) from users/cdb, or None: no entry (or
        no users/cdb).  A worker's copy of the file keeps the answers it gave."""
        cdb = self._open_users()
        if cdb is None:
            return None
        answers = self._answers
        if answers is None:
            return self._look_up(cdb, local)
        found = answers.get(local, NOT_ASKED)
        if found is NOT_ASKED:
            found = self._look_up(cdb, local)  # Unsure: not kept, asked again
            if len(answers) >= KeptUsers.MOST_ANSWERS:
                answers.clear()
            answers[local] = found
        return found  # type: ignore[return-value]  # not NOT_ASKED

    def _look_up(self, cdb: "Cdb", local: bytes) -> "Assignment | None":
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
        uid = leading_number(fields[1]) or 0  # qmail-lspawn's scan_ulong: no digits is 0
        if uid == 0:
            raise Unsure("users/assign gives uid 0: qmail-lspawn does not deliver as root")
        return uid, leading_number(fields[2]) or 0, fields[3], fields[4], fields[5] + rest

    def _open_users(self) -> "Cdb | None":
        """users/cdb for this session, and its wildcard characters: a warm
        worker's copy while the file is unchanged (one stat instead of an
        open and ten reads), else the file.  A file too large to copy, or
        whose copy fails (unreadable, cut short), is opened, and fails as
        it always has."""
        if self._cdb is not None:
            return self._cdb
        if self.kept is not None:
            from .kept import USERS_KEPT_MOST, TooLarge  # a worker's: loaded before it forked

            try:
                found = self.kept.parsed(self.users_cdb, KeptUsers, most=USERS_KEPT_MOST)
            except (OSError, TooLarge, Unsure):
                pass
            else:
                if found is None:
                    return None
                self._cdb, self._wildchars, self._answers = found.cdb, found.wildchars, \
                    found.answers
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
        self._cdb, self._wildchars, self._opened = cdb, wild, True
        return cdb

    def system_user(self, local: bytes) -> "Assignment":
        """qmail-getpw: a user owning its home, longest prefix first; else alias.

        The alias is asked for first, once a session: that first lookup also
        loads the C library's NSS modules, which the budget should not pay."""
        alias = self._alias_entry()
        spent, slowest, asked = 0.0, 0.0, 0
        end = min(len(local), USERNAME_MAX)
        while True:
            if end == len(local) or local[end:end + 1] == BREAK:
                name = local[:end].lower()
                if could_be_user(name):
                    if asked and spent + slowest > LOOKUP_BUDGET:
                        raise Unsure(f"user database slow: {asked} names took "
                                     f"{spent * 1000:.1f} ms of CPU, more to ask")
                    started = time.thread_time()
                    entry = self.getpw(name)
                    took = time.thread_time() - started
                    spent, slowest, asked = spent + took, max(slowest, took), asked + 1
                    if entry is not None and entry[0] != 0 and self._owns_home(name, entry):
                        uid, gid, home = entry
                        if end == len(local):
                            return uid, gid, home, b"", b""
                        return uid, gid, home, b"-", local[end + 1:]
            if end == 0:
                break
            end -= 1
        if alias is None:
            raise Unsure("no alias user")
        if alias[0] == 0:
            raise Unsure("the alias user has uid 0: qmail-lspawn does not deliver as root")
        return *alias, b"-", local

    @staticmethod
    def _owns_home(name: bytes, entry: "tuple[int, int, bytes]") -> bool:
        """qmail-getpw's test: the home exists and is the user's; a temporary
        error defers, any other (EACCES too) means "not a user"."""
        try:
            return posix.stat(entry[2]).st_uid == entry[0]
        except OSError as e:
            if temporary(e):
                raise Unsure(f"home of {name.decode('utf-8', 'replace')}: {e.strerror}") from None
            return False

    def _alias_entry(self) -> "PasswdEntry":
        """The alias user's entry, asked for once a session."""
        if not self._alias_asked:
            self._alias, self._alias_asked = self.getpw(ALIAS_USER), True
        return self._alias

    # -- qmail-local ---------------------------------------------------------
    def dot_qmail(self, uid: int, gid: int, home: bytes, dash: bytes,
                  ext: bytes) -> tuple[str, str]:
        """qmail-local's search, as user uid; no dash: the default delivery."""
        if not dash:
            return DELIVERED, ""
        self._check_home(uid, gid, home)
        safe = ext.lower().replace(b".", b":")
        base = home + b"/.qmail" + dash
        room = NAME_MAX - len(b".qmail" + dash)  # for EXT, or a prefix of it and "default"
        candidates = [safe] if len(safe) <= room else []
        for i in range(min(len(safe), room - len(b"default")), -1, -1):
            if i == 0 or safe[i - 1:i] == b"-":
                candidates.append(safe[:i] + b"default")
        if len(candidates) > LISTING_FROM:
            candidates = self._present(home, b".qmail" + dash, candidates)
        for name in candidates:
            path = base + name
            try:
                if b"/" in name:
                    self._check_folders(uid, gid, base, name)
                st = posix.stat(path)
            except OSError as e:
                if temporary(e) or isinstance(e, PermissionError):  # EACCES, EPERM
                    raise Unsure(f"{path.decode('utf-8', 'replace')}: {e.strerror}") from None
                continue  # ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG...: not there
            shown = path.decode("utf-8", "replace")
            if not permits(st, uid, gid, 4):
                raise Unsure(f"{shown}: qmail-local may not open it")
            if st.st_mode & _S_IFMT == _S_IFREG:
                if st.st_mode & PATRN:
                    raise Unsure(f"{shown}: .qmail file is writable, qmail-local defers")
                return DELIVERED, shown
        return UNKNOWN, ""

    @staticmethod
    def _present(home: bytes, stem: bytes, candidates: "list[bytes]") -> "list[bytes]":
        """The candidates whose file (or first folder) is in the home: one
        listing instead of hundreds of stat()s for an address of dashes.
        A home we may not list keeps them all."""
        try:
            listed = frozenset(posix.listdir(home))
        except OSError:
            return candidates
        return [name for name in candidates if (stem + name).partition(b"/")[0] in listed]

    @staticmethod
    def _check_home(uid: int, gid: int, home: bytes) -> None:
        """qmail-local's chdir to the home and checkhome(): each failure defers."""
        shown = home.decode("utf-8", "replace")
        if not home.startswith(b"/"):
            raise Unsure(f"home {shown} is not absolute: qmail-local refuses it")
        try:
            st = posix.stat(home)
        except OSError as e:
            raise Unsure(f"Unable to switch to {shown}: {e.strerror}") from None
        if st.st_mode & _S_IFMT != _S_IFDIR or not permits(st, uid, gid, 1):
            raise Unsure(f"Unable to switch to {shown}: not a folder the user may enter")
        if st.st_mode & PATRN:
            raise Unsure(f"{shown}: home directory is writable, qmail-local defers")
        if st.st_mode & _S_ISVTX:
            raise Unsure(f"{shown}: home directory is sticky, qmail-local defers")

    @staticmethod
    def _check_folders(uid: int, gid: int, base: bytes, name: bytes) -> None:
        """An extension with a `/` names a file in a folder (`.qmail-a/b`):
        each folder on the way must let the user through, or the open fails
        with EACCES and qmail-local defers.  Raises OSError as open() would."""
        cut = name.find(b"/")
        while cut >= 0:
            st = posix.stat(base + name[:cut])
            if st.st_mode & _S_IFMT == _S_IFDIR and not permits(st, uid, gid, 1):
                raise PermissionError(13, "qmail-local may not pass through")  # EACCES
            cut = name.find(b"/", cut + 1)
