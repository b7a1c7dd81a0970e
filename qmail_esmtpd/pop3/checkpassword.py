"""The checkpassword interface (cr.yp.to/checkpwd/interface.html), as
qmail-popup and Dovecot's `checkpassword` passdb call it:

    qmail-esmtpd-checkpassword SUBPROGRAM [ARGS...]   3< user NUL password NUL timestamp NUL

The password is checked as SMTP AUTH checks it (accounts.login(): the same
hashes and per-IP throttle); the verified row's `sysuser` and `dir` say who
the session runs as (handover.py).  One log line on stderr per outcome,
never a password; nothing of the SMTP server is imported.
"""

import posix
import sys

from .. import log as logging
from ..config import ControlError, Controls, clamp_seconds, controls_of, number_setting
from . import BAD_LOGIN, MISUSE, TEMPORARY, UNKNOWN, Refused
from .handover import ConnectingAs, Login, execute, prepare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..auth.db import Database

PROGRAM = "qmail-esmtpd-checkpassword"
USAGE = "usage: qmail-esmtpd-checkpassword SUBPROGRAM [ARGS...] 3< input"
MAX_INPUT = 512  # bytes of user NUL password NUL timestamp NUL, as the interface allows
INPUT_TIMEOUT = 10  # seconds the caller has to write fd 3 and close it

# accounts.USER_QUERY's columns, then what the session needs: one read on
# every path, so that a right password on a row that cannot be served takes
# the time a wrong one takes
POP_QUERY = ("SELECT id, pw, active, sendlimit, name, sysuser, dir, hostname, ip "
             "FROM poppass WHERE name = %(user)s")
LOOKUP_QUERY = ("SELECT id, name, sysuser, dir, hostname, ip FROM poppass "
                "WHERE name = %s AND active")
SERVICE_USER = b"qmaild"  # whose uid connects to the database when started as root


class Configuration:
    """What the control files and the environment set for one login."""

    __slots__ = ("controls", "conninfo", "delay", "plaintext", "this_host", "service_user")

    def __init__(self, env: "Mapping[bytes, bytes]") -> None:
        from ..auth import DEFAULT_FAIL_DELAY
        from ..config import authdb_conninfo, flag_setting

        self.controls = controls_of(env)
        try:
            self.conninfo = authdb_conninfo(env, self.controls)
            self.delay = clamp_seconds(number_setting(self.controls, env, b"authfaildelay",
                                                      DEFAULT_FAIL_DELAY))
            self.plaintext = flag_setting(self.controls, env, b"authplaintext")
            self.this_host = host_settings(self.controls, env)
            self.service_user = env.get(b"POPDBUSER") or self.controls.line(b"popdbuser") \
                or SERVICE_USER
        except ControlError as e:
            raise Refused(TEMPORARY, f"unable to read controls: {e}") from None
        if self.conninfo is None:
            raise Refused(TEMPORARY, "no database: set $AUTHDB or control/authdb")


def main() -> int:
    """The console script: exec's the subprogram on success, else the exit status."""
    if sys.argv[1:2] in (["--help"], ["--version"]):  # before fd 3 is read or a line logged
        from .. import about

        sys.stdout.write(about(PROGRAM, USAGE, sys.argv[1]))
        sys.stdout.flush()
        return 0
    logging.PROGRAM = PROGRAM
    from ..undumpable import make_undumpable

    why = make_undumpable()  # before the password is read: no sibling may read it
    if why is not None:
        logging.log(f"this login stays readable by its user's other processes: {why}")
    argv = sys.argv[1:]
    if not argv:
        logging.log(USAGE)
        return MISUSE
    env = dict(posix.environ)
    remoteip = env.get(b"TCPREMOTEIP", b"")
    where = f" ip={logging.printable(remoteip)}" if remoteip else ""
    dovecot = b"ORIG_UID" in env
    user = b""
    delay = 0
    try:
        user, password, timestamp = read_input()
        if dovecot and posix.geteuid() == 0:
            raise Refused(TEMPORARY, "Dovecot runs this program as root: let its auth "
                                     "service run as its own user (see the README)")
        config = Configuration(env)
        delay = config.delay
        login, note = check(user, password, timestamp, env, config,
                            remoteip.decode("ascii", "replace"))
        prepare(login, env)
    except Refused as e:
        if e.status == BAD_LOGIN and not e.at_once:
            _sleep(delay)  # as for a wrong password: the client cannot tell them apart
        logging.log(f"login {OUTCOMES[e.status]} user={logging.printable(user)}{where}: {e}")
        return e.status
    except Exception as e:  # a bug must not become a traceback: a temporary failure
        logging.log(f"login tempfail user={logging.printable(user)}{where}: "
                    f"{type(e).__name__}: {e}")
        return TEMPORARY
    if not dovecot:  # Dovecot logs the login itself, and our stderr as errors
        logging.log(f"login ok user={logging.printable(user)}{where} "
                    f"sysuser={logging.printable(login.sysuser.encode(), 256)} "
                    f"dir={logging.printable(login.home.encode(), 256)}{note}")
    return execute(argv, env)


OUTCOMES = {BAD_LOGIN: "fail", MISUSE: "misuse", UNKNOWN: "unknown", TEMPORARY: "tempfail"}


def read_input(fd: int = 3) -> tuple[bytes, bytes, bytes]:
    """(user, password, timestamp) from fd 3; Refused(2) when missing, malformed or oversize."""
    import select
    import time

    data = b""
    deadline = time.monotonic() + INPUT_TIMEOUT
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise Refused(TEMPORARY, f"no input on fd 3 within {INPUT_TIMEOUT} s")
            chunk = posix.read(fd, MAX_INPUT + 1 - len(data))
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_INPUT:
                raise Refused(MISUSE, f"input on fd 3 longer than {MAX_INPUT} bytes")
    except OSError as e:
        if e.errno == 9:  # EBADF: nobody gave us an fd 3
            raise Refused(MISUSE, "fd 3 is not open") from None
        raise Refused(TEMPORARY, f"reading fd 3: {e.strerror}") from None
    finally:
        try:
            posix.close(fd)
        except OSError:
            pass
    fields = data.split(b"\0", 2)
    if len(fields) < 3:  # both the name and the password end with a NUL
        raise Refused(MISUSE, "malformed input on fd 3 (want user NUL password NUL)")
    return fields[0], fields[1], fields[2].split(b"\0", 1)[0]


def check(user: bytes, password: bytes, timestamp: bytes, env: "dict[bytes, bytes]",
          config: Configuration, remoteip: str) -> "tuple[Login, str]":
    """The login this password opens (and a note for the log line), or Refused."""
    from ..auth import accounts, apop
    from ..auth.db import Database, DatabaseError

    db = Database(config.conninfo or "")
    try:
        try:
            db.connect(ConnectingAs(config.service_user))
        except DatabaseError as e:
            raise Refused(TEMPORARY, f"database: {e}") from None
        if b"ORIG_UID" in env and env.get(b"AUTHORIZED") == b"1":
            try:
                return lookup(db, user, env, config.this_host), " (lookup)"
            except Refused as e:
                raise Refused(e.status, str(e), at_once=True) from None
        from ..auth.throttle import open_throttle

        throttle = open_throttle(db, config.controls, env, remoteip)
        checkable = True
        try:
            if apop.looks_like_apop(password, timestamp):
                account, status, checkable = apop.login(db, user, password, timestamp,
                                                        throttle, config.plaintext, POP_QUERY)
            else:
                account, status = accounts.login(db, user, password, throttle,
                                                 config.plaintext, POP_QUERY)
        except accounts.Unavailable as e:
            raise Refused(TEMPORARY, f"database: {e}") from None
        if status is not None and status.refused:
            _sleep(config.delay)  # as SMTP AUTH waits before its 454
            if status.unrecorded is not None:
                raise Refused(TEMPORARY, "not checked: the attempt cannot be recorded: "
                                         f"{status.unrecorded}")
            raise Refused(TEMPORARY, f"throttled: source={throttle.source} "
                                     f"failures={status.failures}")
        slowed = status is not None and status.slowed
        if not checkable:  # an APOP digest: no wait, not counted (auth/apop.py)
            raise Refused(BAD_LOGIN, "apop: cannot be checked against a hashed password, "
                                     "or no such active user (not counted)", at_once=True)
        if account is None:
            note = f" (slowed: {status.failures} failures against this name lately)" \
                if slowed and status is not None else ""
            raise Refused(BAD_LOGIN, "wrong password, or no such active user" + note)
        login = session_for(account.more, config.this_host)
        accounts.upgrade(db, account, password)  # only for a row that can log in
        if slowed:
            _sleep(config.delay)
            return login, " slowed"
        return login, ""
    finally:
        db.close()  # the subprogram must not inherit the connection


def lookup(db: "Database", user: bytes, env: "Mapping[bytes, bytes]",
           this_host: "tuple[str | None, str | None]") -> Login:
    """Dovecot's AUTHORIZED=1: the account without its password (userdb lookup).

    Never for a credentials lookup: hashes do not leave the database."""
    from ..auth.accounts import decoded_name

    if b"CREDENTIALS_LOOKUP" in env:
        raise Refused(BAD_LOGIN, "credentials lookup: only plaintext mechanisms are served")
    name = decoded_name(user)
    rows = _query(db, LOOKUP_QUERY, (name,)) if name is not None else []
    if not rows:
        raise Refused(UNKNOWN, "no such active user")
    return session_for(rows[0][1:], this_host)


def _query(db: "Database", sql: str, params: tuple) -> list:
    from ..auth.db import DatabaseError

    try:
        return db.query(sql, params)
    except DatabaseError as e:
        raise Refused(TEMPORARY, f"database: {e}") from None


def host_settings(controls: Controls, env: "Mapping[bytes, bytes]"
                  ) -> "tuple[str | None, str | None]":
    """This host's name and IP for the rows' `hostname`/`ip` columns: $POPHOST
    (else control/pophost) and $POPIP (else control/popip); None: not checked."""
    found = []
    for name in (b"pophost", b"popip"):
        value = env.get(name.upper())
        if value is None:
            value = controls.line(name)
        text = value.decode("utf-8", "replace").strip() if value is not None else ""
        found.append(text or None)
    return found[0], found[1]


def session_for(row: tuple, this_host: "tuple[str | None, str | None]") -> Login:
    """The row's (name, sysuser, dir, hostname, ip) as a Login, or Refused (1):
    another host's account, no sysuser, root, a sysuser the system lacks."""
    import pwd

    name, sysuser, directory, hostname, ip = row
    my_name, my_ip = this_host
    if my_name and hostname and hostname.strip().lower() != my_name.lower():
        raise Refused(BAD_LOGIN, f"the account lives on host {hostname.strip()}")
    if my_ip and ip and ip.strip() != my_ip:
        raise Refused(BAD_LOGIN, f"the account lives on IP {ip.strip()}")
    if not sysuser:
        raise Refused(BAD_LOGIN, "no sysuser for this account")
    try:
        entry = pwd.getpwnam(sysuser)
    except KeyError:
        raise Refused(BAD_LOGIN, f"sysuser {sysuser} is not a user of this system") from None
    if entry.pw_uid == 0 or sysuser == "root":
        raise Refused(BAD_LOGIN, f"sysuser {sysuser} is root: refused")
    return Login(name, entry.pw_uid, entry.pw_gid, sysuser, directory or entry.pw_dir,
                 entry.pw_shell)


def _sleep(seconds: int) -> None:
    import time

    time.sleep(seconds)
