"""The recipient set-up that real qmail judged (record.py) and that
test_rcptcheck.py rebuilds: control files, users/assign, system users with
their homes and .qmail files, the alias user's .qmail files, and the
addresses a message was sent to.

`build()` writes it all under given folders; who the users are (uid, gid)
is decided by the caller: record.py creates real accounts with useradd, the
test writes a passwd file of its own.  Standard library only.
"""

import os
from pathlib import Path

LOCALS = ["example.com", "localhost"]
VIRTUALDOMAINS = [
    "virt.example:vx",              # a virtual domain, handled by users/assign
    ".sub.example:vsub",            # any subdomain of sub.example
    "special@other.example:rcbob",  # one address (qmail's user@domain entry)
    "remote.example:",              # empty prefix: not virtual, delivered remotely
    ":catchall",                    # the catch-all: every other domain
]
ENVNOATHOST = "example.com"

# system users: name -> (owner of the home: "self", "root" or None for no home,
#                        mode of the home, files in it; a trailing / makes a folder)
USERS = {
    "rcann": ("self", 0o755, [".qmail-news", ".qmail-john:doe", ".qmail-lists-default",
                              ".qmail-a-b-c", ".qmail-virtjoe", ".qmail-dir/"]),
    "rcbob": ("self", 0o755, [".qmail", ".qmail-default"]),
    "rccarl": ("root", 0o755, [".qmail-default"]),   # home not its own: not a mail user
    "rcdave": (None, 0o755, []),                     # no home at all
    "rceve": ("self", 0o700, [".qmail-default"]),    # qmaild cannot look inside
    "rcfrank": ("self", 0o700, []),                  # nor here
    "rcvirt": ("self", 0o755, [".qmail-sue", ".qmail-info-default"]),
}
ALIAS_FILES = [".qmail-postmaster", ".qmail-root", ".qmail-rcdave", ".qmail-vsub-x",
               ".qmail-catchall-known", ".qmail-owner-default"]
# users/assign, with {user:FIELD} replaced by that user's uid, gid or home
ASSIGN = [
    "=exact:rcann:{rcann:uid}:{rcann:gid}:{rcann:home}:::",
    "=vx-joe:rcann:{rcann:uid}:{rcann:gid}:{rcann:home}:-:virtjoe:",
    "+vx-:rcvirt:{rcvirt:uid}:{rcvirt:gid}:{rcvirt:home}:-::",
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
]


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
    users = qmail_home / "users"
    users.mkdir(exist_ok=True)
    (users / "assign").write_text("".join(fill(a, ids) + "\n" for a in ASSIGN) + ".\n")
    for name, (owner, mode, files) in USERS.items():
        uid, gid, home = ids[name]
        home = Path(home)
        if owner is None:
            continue
        home.mkdir(parents=True, exist_ok=True)
        for f in files:
            _dot_qmail(home / f.rstrip("/"), f.endswith("/"), uid, gid)
        if owner == "self":
            os.chown(home, uid, gid)
        home.chmod(mode)
    for f in ALIAS_FILES:
        st = alias_home.stat()
        _dot_qmail(alias_home / f, False, st.st_uid, st.st_gid)


def _dot_qmail(path: Path, folder: bool, uid: int, gid: int) -> None:
    """A .qmail file delivering to ./Mailbox (or a folder where qmail wants a file)."""
    if folder:
        path.mkdir(exist_ok=True)
    else:
        path.write_text("./Mailbox\n")
        path.chmod(0o644)
    os.chown(path, uid, gid)
