"""The recipient set-up that real qmail judged (record.py) and that
test_rcptcheck.py rebuilds: control files, users/assign, system users with
their homes and .qmail files, the alias user's .qmail files, and the
addresses a message was sent to.

`build()` writes it all under given folders; who the users are (uid, gid)
is decided by the caller: record.py adds real accounts, the test writes a
passwd file of its own.  Standard library only.

Names and addresses are str as Python's os module holds file names: a byte
that is not UTF-8 is a lone surrogate (`os.fsencode` gives the bytes back), so
a latin-1 user name is "rcren\udce9".  verdicts*.txt hold addresses escaped
(`escaped()`), one per line.
"""

import codecs
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCALS = ["example.com", "localhost"]
VIRTUALDOMAINS = [
    "virt.example:vx",              # a virtual domain, handled by users/assign
    ".sub.example:vsub",            # any subdomain of sub.example
    "special@other.example:rcbob",  # one address (qmail's user@domain entry)
    "remote.example:",              # empty prefix: not virtual, delivered remotely
    ":catchall",                    # the catch-all: every other domain
    # recording 2: the same domain twice, in either case: the last line wins (constmap)
    "dup.example:rcann",
    "DUP.example:rcbob",
    "dup2.example:rcbob",
    "Dup2.Example:rcann",
]
# recording 2: user%domain@one-of-these is delivered as user@domain (qmail-send's rewrite())
PERCENTHACK = ["pct.example", "example.com"]
ENVNOATHOST = "example.com"

# system users: name -> (owner of the home: "self", "root" or None for no home,
#                        mode of the home, files in it; a trailing / makes a folder,
#                        (name, mode) gives the mode, else 0644 for files)
USERS = {
    "rcann": ("self", 0o755, [".qmail-news", ".qmail-john:doe", ".qmail-lists-default",
                              ".qmail-a-b-c", ".qmail-virtjoe", ".qmail-dir/"]),
    "rcbob": ("self", 0o755, [".qmail", ".qmail-default"]),
    "rccarl": ("root", 0o755, [".qmail-default"]),   # home not its own: not a mail user
    "rcdave": (None, 0o755, []),                     # no home at all
    "rceve": ("self", 0o700, [".qmail-default"]),    # qmaild cannot look inside
    "rcfrank": ("self", 0o700, []),                  # nor here
    "rcvirt": ("self", 0o755, [".qmail-sue", ".qmail-info-default"]),
    # recording 2
    "rcjos\u00e9": ("self", 0o755, [".qmail-news"]),    # a UTF-8 name: bytes c3 a9
    "rcren\udce9": ("self", 0o755, [".qmail-news"]),    # a latin-1 name: byte e9
    "rcsticky": ("self", 0o1755, [".qmail-foo"]),      # qmail-local defers: "sticky"
    "rcworld": ("self", 0o757, [".qmail-foo"]),        # world-writable (conf-patrn 002): defers
    "rcgroup": ("self", 0o775, [".qmail-foo"]),        # group-writable: allowed by 002
    "rclocked": ("self", 0o755, [(".qmail-locked/", 0o000), (".qmail-secret", 0o000),
                                 (".qmail-open", 0o666), ".qmail-fine"]),
}
ALIAS_FILES = [".qmail-postmaster", ".qmail-root", ".qmail-rcdave", ".qmail-vsub-x",
               ".qmail-catchall-known", ".qmail-owner-default"]
# users/assign, with {user:FIELD} replaced by that user's uid, gid or home
ASSIGN = [
    "=exact:rcann:{rcann:uid}:{rcann:gid}:{rcann:home}:::",
    "=vx-joe:rcann:{rcann:uid}:{rcann:gid}:{rcann:home}:-:virtjoe:",
    "+vx-:rcvirt:{rcvirt:uid}:{rcvirt:gid}:{rcvirt:home}:-::",
    # recording 2: qmail-local cannot chdir to the home; qmail-lspawn will not run as root
    "+rcgone-:rcann:{rcann:uid}:{rcann:gid}:/nonexistent/rcptcheck-home:-::",
    "+rcroot-:root:0:0:{rcann:home}:-::",
]
# homes whose insides the server, as qmaild, cannot see: accepted whatever qmail did
UNREADABLE = ("rceve", "rcfrank")

ADDRESSES = [
    # system users, their .qmail-EXT files and -default at each level
    "rcann@example.com", "RCANN@EXAMPLE.COM", "rcann@localhost",
    "rcann-news@example.com", "rcann-NEWS@example.com", "rcann-nope@example.com",
    "rcann-john.doe@example.com", "rcann-john-doe@example.com",
    "rcann-lists-foo@example.com", "rcann-lists@example.com", "rcann-lists-@example.com",
    "rcann-lists-a-b@example.com",
    "rcann-a-b-c@example.com", "rcann-a-b@example.com", "rcann-a-b-c-d@example.com",
    "rcann-dir@example.com",
    "rcbob@example.com", "rcbob-anything@example.com", "RcBob-Mixed-Case@example.com",
    "rccarl@example.com", "rccarl-x@example.com",
    "rcdave@example.com", "rcdave-x@example.com",
    "rceve-foo@example.com", "rcfrank@example.com", "rcfrank-foo@example.com",
    # the alias user
    "postmaster@example.com", "Postmaster@localhost", "root@example.com",
    "owner-anything@example.com", "owner@example.com",
    "nosuchuser@example.com", "nobody-such@example.com", "-foo@example.com",
    "alias@example.com",
    "averyveryverylongusernamethatistoolong@example.com",
    # addresses without a domain: @envnoathost
    "rcann", "nosuchuser",
    # users/assign: = and + entries
    "exact@example.com", "exact-foo@example.com",
    # virtualdomains
    "joe@virt.example", "sue@virt.example", "Sue@VIRT.example", "tom@virt.example",
    "info-sales@virt.example", "info@virt.example",
    "x@deep.sub.example", "y@deep.sub.example",
    "special@other.example", "known@other.example", "other@other.example",
    "someone@remote.example",
    # ---- recording 2 (verdicts-2.txt) adds:
    # 8-bit user names: the bytes as given, lower-cased in ASCII only
    "rcjos\u00e9@example.com", "rcjos\u00e9-news@example.com", "rcjos\u00e9-nope@example.com",
    "RCJOS\u00c9-news@example.com", "rcjos\udce9@example.com", "rcjos\udce9-news@example.com",
    "rcren\udce9-news@example.com", "rcren\udce9@example.com", "rcren\u00e9-news@example.com",
    # virtualdomains: the last entry for a domain wins, case-insensitively
    "nope@dup.example", "news@dup.example", "nope@dup2.example", "NOPE@DUP2.EXAMPLE",
    "news@Dup2.example",
    # percenthack
    "rcann%example.com@pct.example", "rcann-news%localhost@pct.example",
    "nosuchuser%example.com@pct.example", "someone%remote.example@pct.example",
    "rcann%example.com%pct.example@pct.example", "sue%virt.example@PCT.EXAMPLE",
    "rcann%localhost@example.com", "rcann%localhost", "plain@pct.example",
    "known%pct.example@pct.example", "rcann%nope.example@example.com",
    # what qmail-lspawn and qmail-local defer: homes, root, unopenable .qmail files
    "rcsticky@example.com", "rcsticky-foo@example.com", "rcsticky-nope@example.com",
    "rcworld-foo@example.com", "rcworld-nope@example.com",
    "rcgroup-foo@example.com", "rcgroup-nope@example.com",
    "rclocked-fine@example.com", "rclocked-nope@example.com", "rclocked-locked@example.com",
    "rclocked-locked-x@example.com", "rclocked-locked/x@example.com",
    "rclocked-secret@example.com", "rclocked-open@example.com",
    "rcgone-x@example.com", "rcroot-news@example.com", "rcroot-nope@example.com",
    # odd local parts: no user name starts with - or +; the empty one
    "-@example.com", "+plus@example.com", "rcann--news@example.com",
    "-" * 32 + "x@example.com", "a-b-c-d-e-f@example.com",
    "@example.com",
]

# recording 2: the alias user's home changed for a few deliveries:
# condition -> addresses judged while it holds (alias_condition() makes it)
ALIAS_CONDITIONS = {
    "alias-home-missing": ["postmaster@example.com", "nosuchuser@example.com"],
    "alias-home-sticky": ["nosuchuser@example.com"],
    "alias-home-world-writable": ["nosuchuser@example.com"],
    "alias-home-group-writable": ["nosuchuser@example.com", "postmaster@example.com"],
}


@contextlib.contextmanager
def alias_condition(condition: str, alias_home: Path) -> Iterator[None]:
    """The alias user's home as `condition` says, put back afterwards."""
    mode = alias_home.stat().st_mode & 0o7777
    away = alias_home.with_name(alias_home.name + ".away")
    if condition == "alias-home-missing":
        alias_home.rename(away)
    else:
        extra = {"alias-home-sticky": 0o1000, "alias-home-world-writable": 0o002,
                 "alias-home-group-writable": 0o020}[condition]
        alias_home.chmod(mode | extra)
    try:
        yield
    finally:
        if condition == "alias-home-missing":
            away.rename(alias_home)
        alias_home.chmod(mode)


def escaped(address: str) -> str:
    """An address as verdicts*.txt hold it: its bytes, backslash-escaped where not ASCII."""
    return codecs.escape_encode(os.fsencode(address))[0].decode("ascii")


def unescaped(text: str) -> bytes:
    """The address bytes of an escaped() line."""
    return codecs.escape_decode(text.encode("ascii"))[0]


def fill(line: str, ids: dict) -> str:
    """{user:uid}, {user:gid}, {user:home} from `ids` (name -> (uid, gid, home))."""
    for name, (uid, gid, home) in ids.items():
        for field, value in (("uid", uid), ("gid", gid), ("home", home)):
            line = line.replace("{" + name + ":" + field + "}", str(value))
    return line


def build(qmail_home: Path, alias_home: Path, ids: dict) -> None:
    """control/, users/assign (not compiled), homes and .qmail files.

    `ids`: user name -> (uid, gid, home) for every name in USERS.  The alias
    user's folder must exist.  Run as root (homes are chowned)."""
    control = qmail_home / "control"
    control.mkdir(parents=True, exist_ok=True)
    (control / "me").write_text("example.com\n")
    (control / "locals").write_text("".join(d + "\n" for d in LOCALS))
    (control / "virtualdomains").write_text("".join(v + "\n" for v in VIRTUALDOMAINS))
    (control / "envnoathost").write_text(ENVNOATHOST + "\n")
    (control / "percenthack").write_text("".join(d + "\n" for d in PERCENTHACK))
    users = qmail_home / "users"
    users.mkdir(exist_ok=True)
    assign = "".join(fill(a, ids) + "\n" for a in ASSIGN) + ".\n"
    (users / "assign").write_bytes(os.fsencode(assign))
    for name, (owner, mode, files) in USERS.items():
        uid, gid, home = ids[name]
        home = Path(home)
        if owner is None:
            continue
        home.mkdir(parents=True, exist_ok=True)
        for f in files:
            f, file_mode = f if isinstance(f, tuple) else (f, None)
            _dot_qmail(home / f.rstrip("/"), f.endswith("/"), uid, gid, file_mode)
        if owner == "self":
            os.chown(home, uid, gid)
        home.chmod(mode)
    for f in ALIAS_FILES:
        st = alias_home.stat()
        _dot_qmail(alias_home / f, False, st.st_uid, st.st_gid)


def _dot_qmail(path: Path, folder: bool, uid: int, gid: int, mode: int | None = None) -> None:
    """A .qmail file delivering to ./Mailbox (or a folder where qmail wants a file)."""
    if folder:
        path.mkdir(exist_ok=True)
    else:
        path.write_text("./Mailbox\n")
    if mode is not None or not folder:
        path.chmod(0o644 if mode is None else mode)
    os.chown(path, uid, gid)
