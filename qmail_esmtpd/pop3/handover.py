"""The handover: the process becomes the mail user's, then execs the subprogram.

Two modes, because the two callers run us as different users:
- qmail-popup (tcpserver runs it as root): switch to the sysuser (groups,
  gid, uid), chdir to `dir`, set USER, HOME and SHELL.
- Dovecot (it sets ORIG_UID, and runs us as its unprivileged auth user): no
  switch, since its checkpassword-reply refuses any uid but ORIG_UID; the
  uid, gid and home go back as `userdb_uid`, `userdb_gid` and HOME (listed
  in EXTRA) for its prefetch userdb.
Before that, started as root, the database connect runs as the service user
(ConnectingAs), so that PostgreSQL's peer authentication does not see root.
"""

import _signal  # the C module behind `signal`, already loaded
import posix

from .. import log as logging
from ..config import exportable
from . import BAD_LOGIN, TEMPORARY, Refused

# Python ignores these for itself; an ignored signal stays ignored across exec
RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)
# What the subprogram must not get: where the database is, and how to log in to it.
DATABASE_SETTINGS = (b"AUTHDB", b"QMAIL_ESMTPD_ADMINDB", b"POPDBUSER")


class Login:
    """Who the session runs as, from the verified row and the system's user database."""

    __slots__ = ("name", "uid", "gid", "sysuser", "home", "shell")

    def __init__(self, name: str, uid: int, gid: int, sysuser: str, home: str,
                 shell: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.sysuser = sysuser
        self.home = home
        self.shell = shell


class ConnectingAs:
    """Around the database connect, when started as root: the effective uid,
    gid and groups of the service user (qmaild), whose uid is what PostgreSQL's
    peer authentication sees; back to root afterwards, to switch to the row's
    sysuser.  Not root: nothing changes."""

    def __init__(self, name: bytes) -> None:
        import pwd

        self.switch = posix.geteuid() == 0
        self.name = name.decode("utf-8", "surrogateescape")
        if not self.switch:
            return
        try:
            entry = pwd.getpwnam(self.name)
        except KeyError:
            raise Refused(TEMPORARY, f"no system user {self.name} to connect to the database "
                                     "as (control/popdbuser names it)") from None
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def __enter__(self) -> None:
        if not self.switch:
            return
        self.groups, self.egid = posix.getgroups(), posix.getegid()
        try:
            posix.setgroups(posix.getgrouplist(self.name, self.gid))
            posix.setegid(self.gid)
            posix.seteuid(self.uid)
        except OSError as e:
            self.__exit__()
            raise Refused(TEMPORARY, f"cannot connect as {self.name}: {e.strerror}") from None

    def __exit__(self, *exc: object) -> None:
        if not self.switch:
            return
        posix.seteuid(0)
        posix.setegid(self.egid)
        posix.setgroups(self.groups)


def prepare(login: Login, env: "dict[bytes, bytes]") -> None:
    """Make the process the login's: as its user in its dir (qmail-popup), or
    with the user in the environment for Dovecot; Refused when it cannot.
    The subprogram's environment loses the database settings."""
    for name in [name for name in env if name in DATABASE_SETTINGS or name.startswith(b"PG")]:
        del env[name]
    env[b"USER"] = login.name.encode()
    env[b"HOME"] = login.home.encode()
    env[b"SHELL"] = login.shell.encode()
    if b"ORIG_UID" in env:  # Dovecot: its prefetch userdb takes these
        _require_directory(login.home)
        env[b"userdb_uid"] = str(login.uid).encode()
        env[b"userdb_gid"] = str(login.gid).encode()
        extra = env.get(b"EXTRA", b"").split()
        env[b"EXTRA"] = b" ".join(extra + [b"userdb_uid", b"userdb_gid"])
        if env.get(b"AUTHORIZED") == b"1":
            env[b"AUTHORIZED"] = b"2"
    else:
        become(login)
        try:
            posix.chdir(login.home)
        except OSError as e:
            raise Refused(BAD_LOGIN, f"dir {login.home}: {e.strerror}") from None


def execute(argv: list[str], env: "dict[bytes, bytes]") -> int:
    """Exec the subprogram, searched in $PATH as checkpassword's pathexec does;
    returns 111 only when that fails.  Imports nothing: after the switch to the
    sysuser, the interpreter's own files may be out of reach."""
    program = argv[0].encode("utf-8", "surrogateescape")
    if b"/" in program:
        candidates = [program]
    else:
        path = env.get(b"PATH", b"/bin:/usr/bin")
        candidates = [(entry or b".") + b"/" + program for entry in path.split(b":")]
    for signal in RESET_SIGNALS:  # ignored by Python, not by the subprogram
        _signal.signal(signal, _signal.SIG_DFL)
    error = "not found"
    for candidate in candidates:
        try:
            posix.execve(candidate, argv, exportable(env))
        except OSError as e:
            if e.errno != 2 or error == "not found":  # keep the first reason but ENOENT
                error = e.strerror or "cannot run"
    logging.log(f"login tempfail: cannot run {argv[0]}: {error}")
    return TEMPORARY


def become(login: Login) -> None:
    """Drop to the sysuser: supplementary groups, gid, uid (as checkpassword's
    prot_gid/prot_uid); running as that user already is fine, anything else 111."""
    if posix.geteuid() == 0:
        try:
            posix.setgroups(posix.getgrouplist(login.sysuser, login.gid))
            posix.setgid(login.gid)
            posix.setuid(login.uid)
        except OSError as e:
            raise Refused(TEMPORARY, f"cannot become {login.sysuser}: {e.strerror}") from None
    if posix.getuid() != login.uid or posix.geteuid() != login.uid or posix.getuid() == 0:
        raise Refused(TEMPORARY, f"cannot become {login.sysuser}: not started as root")


def _require_directory(path: str) -> None:
    """A missing dir is refused here too; one Dovecot's auth user may not
    search is left to Dovecot, which opens it as the user."""
    import stat

    try:
        mode = posix.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError) as e:
        raise Refused(BAD_LOGIN, f"dir {path}: {e.strerror}") from None
    except OSError:
        return
    if not stat.S_ISDIR(mode):
        raise Refused(BAD_LOGIN, f"dir {path}: not a directory")
