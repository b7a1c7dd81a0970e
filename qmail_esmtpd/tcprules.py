"""tcpserver's access rules: the admin's `tcp.smtp.cdb`, as `tcprules` compiled it.

The lookup is tcpserver's (ucspi-tcp 0.88 with Debian's IPv6 patch, rules.c)
for a server that does no DNS and no ident lookups (`tcpserver -H -R`): the
exact address as TCPREMOTEIP writes it (tcpaddress.py), then each shorter
prefix ending in a dot or a colon (`1.2.3.`, `1.2.`, `1.`; `2001:db8:1::`,
`2001:db8:1:`, `2001:db8:`, `2001:`), then the empty key.  The keys are
strings, not networks: `2001:db8::` is no prefix of `2001:db8:0:1::5`'s
text `2001:db8:0:1::5`, and an IPv4 client's rules are its IPv4 ones, mapped
or not.  `=host` and `info@` keys are never looked up, as tcpserver skips
them when it has no remote host name or remote info.  The first key found
decides.

A value is tcprules' encoding: NUL-terminated instructions, `D` for deny and
`+NAME=VALUE` for each variable, in the order of the rules line.
"""

import posix

from .cdb import CdbError, CdbInMemory
from .kept import Stamp, stamp_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Finder = Callable[[bytes], bytes | None]


class Rule:
    """What one rules entry says: deny or allow, and the variables to set."""

    def __init__(self, deny: bool, variables: list[tuple[bytes, bytes]]) -> None:
        self.deny = deny
        self.variables = variables


PREFIX_ENDS = b".:"  # a key shorter than the address ends in one of these
ALLOW_ALL = Rule(False, [])  # no rule matched (or -X without a file): allow, nothing set


def lookup_keys(ip: bytes) -> list[bytes]:
    """The keys tcpserver tries for `ip`, in its order (without host or info)."""
    keys = [ip]
    keys += [ip[:i + 1] for i in range(len(ip) - 2, -1, -1) if ip[i] in PREFIX_ENDS]
    keys.append(b"")
    return keys


def decode(data: bytes) -> Rule:
    """tcprules' value: `D` and `+NAME=VALUE`, each NUL-terminated.

    As tcpserver's found(): a trailing piece without its NUL is ignored, and a
    `+` piece without `=` sets nothing.
    """
    deny = False
    variables = []
    for piece in data.split(b"\0")[:-1]:
        if piece.startswith(b"D"):
            deny = True
        elif piece.startswith(b"+"):
            name, eq, value = piece[1:].partition(b"=")
            if eq:
                variables.append((name, value))
    return Rule(deny, variables)


def find_rule(find: "Finder", ip: bytes) -> Rule:
    """The first entry found for `ip` in tcpserver's order; ALLOW_ALL if none."""
    for key in lookup_keys(ip):
        data = find(key)
        if data is not None:
            return decode(data)
    return ALLOW_ALL


class RulesUnreadable(Exception):
    """The rules file exists but cannot be read (tcpserver drops the connection)."""


class RulesFile:
    """`tcp.smtp.cdb`, read again whenever it is replaced.

    tcprules writes a new file and renames it into place, so a change of
    inode, size or modification time means a new table; `lookup_function()`
    checks with one stat() per connection and reads the file only when it
    changed.  A missing file allows everything with `allow_missing`
    (tcpserver -X), else every connection is dropped, as tcpserver does.
    Rules found are kept per address until the file changes (the server
    looks them up before it forks, so a child never touches the table).
    """

    CACHED = 4096  # addresses whose rule is kept; then the cache starts again

    def __init__(self, path: bytes, allow_missing: bool = False) -> None:
        self.path = path
        self.allow_missing = allow_missing
        self.stamp: Stamp | None = None
        self.find: "Finder | None" = None
        self.data = b""
        self.found: dict[bytes, Rule] = {}

    def sets(self, name: bytes) -> bool:
        """Whether some entry of the table read last may set variable `name`
        (a look at the raw file: a stray match costs only a preload)."""
        return b"+" + name + b"=" in self.data

    def values(self, name: bytes) -> list[bytes]:
        """The values entries of the table read last may give variable `name`
        (the same look at the raw file: a stray match costs only a preload)."""
        marker = b"+" + name + b"="
        found = []
        start = self.data.find(marker)
        while start >= 0:
            end = self.data.find(b"\0", start)
            if end < 0:
                break
            found.append(self.data[start + len(marker):end])
            start = self.data.find(marker, end)
        return found

    def lookup_function(self) -> "Finder | None":
        """The table's lookup function; None when the file is missing (-X)."""
        try:
            st = posix.stat(self.path)
        except FileNotFoundError:
            if self.allow_missing:
                self.stamp, self.find = None, None
                return None
            raise RulesUnreadable(f"{self.path.decode(errors='replace')}: missing") from None
        except OSError as e:
            raise RulesUnreadable(f"{self.path.decode(errors='replace')}: {e.strerror}") from None
        stamp = stamp_of(st)
        if stamp != self.stamp or self.find is None:
            self.found = {}
            self.find = self._read()
            self.stamp = stamp
        return self.find

    def forget(self) -> None:
        """Read the file again at the next connection (SIGHUP)."""
        self.stamp, self.find = None, None

    def _read(self) -> "Finder":
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            reader = CdbInMemory(data)
            self.data = data
        except OSError as e:
            raise RulesUnreadable(f"{self.path.decode(errors='replace')}: {e}") from None
        except Exception as e:  # too short or damaged: tcpserver cannot read it either
            raise RulesUnreadable(f"{self.path.decode(errors='replace')}: not a cdb ({e})") \
                from None
        return reader.get

    def rule(self, ip: bytes) -> Rule:
        """The rule for `ip`; RulesUnreadable when the file cannot be used."""
        find = self.lookup_function()
        if find is None:
            return ALLOW_ALL
        rule = self.found.get(ip)
        if rule is not None:
            return rule
        try:
            rule = find_rule(find, ip)
        except CdbError as e:  # cut or garbled inside: tcpserver cannot read it either
            raise RulesUnreadable(f"{self.path.decode(errors='replace')}: not a cdb ({e})") \
                from None
        if len(self.found) >= self.CACHED:
            self.found = {}
        self.found[ip] = rule
        return rule
