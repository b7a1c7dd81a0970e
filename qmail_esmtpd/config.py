"""Where qmail lives, its control files and tcpserver's environment, read
once at start-up.

The rules are qmail's control.c: single-value files use their first line with
trailing blanks, TABs and LFs removed (a CR stays), list files drop empty and
`#` lines, numbers are the leading digits.  A missing file is a default; any
other error reading one is fatal (`421 unable to read controls`).

A warm worker (workers.py) keeps some files between its sessions
(kept.py): each is used only while stat() shows it unchanged, so that a
session still sees every change, and an unreadable file still fails the
session that meets it.
"""

import posix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .kept import KeptFiles

    Setting = str | list[bytes]
    Finder = Callable[[list[bytes], Mapping[bytes, bytes], "Controls"], Setting | None]

# qmail's home as qmail compiles it in from conf-qmail: `make install` writes
# its PREFIX on this line of the installed copy (tools/install.py).
QMAIL_HOME = b"/var/qmail"
SERVERCERT = b"servercert.pem"  # the TLS patch's file: certificate chain and key
DEFAULT_TIMEOUT = 1200
ULONG_MAX = 2**64 - 1  # qmail reads numbers into an unsigned long
MAX_SECONDS = 2**31 - 1  # about 68 years: the longest wait select() and sleep() take
READ_SIZE = 65536


def exportable(env: "Mapping[bytes, bytes]") -> "Mapping[bytes, bytes]":
    """`env` as posix_spawn and execve take it: without a variable whose name is
    empty, which tcpserver passes on for a rule like `:allow,="x"` and Python
    refuses to pass further (every DATA would fail)."""
    if b"" not in env:
        return env
    return {name: value for name, value in env.items() if name}


class QmailPaths:
    """Where qmail lives: the home ($QMAIL_HOME over the compiled-in one) and
    what lies under it.  A control folder of its own ($QMAIL_CONTROL, one per
    service) moves control/ only; qmail-queue's is $QMAILQUEUE's."""

    def __init__(self, env: "Mapping[bytes, bytes]") -> None:
        self.home: bytes = env.get(b"QMAIL_HOME") or QMAIL_HOME
        self.control: bytes = env.get(b"QMAIL_CONTROL") or self.home + b"/control"
        self.users_cdb = self.home + b"/users/cdb"
        self.queue: bytes = env.get(b"QMAILQUEUE") or self.home + b"/bin/qmail-queue"

    def under_home(self, path: bytes) -> bytes:
        """`path`, a relative one taken from the home (where qmail's programs run)."""
        return path if path.startswith(b"/") else self.home + b"/" + path


def controls_of(env: "Mapping[bytes, bytes]") -> "Controls":
    """The control files this process is told to read."""
    return Controls(QmailPaths(env).control)


class ControlError(Exception):
    """A control file exists but cannot be read."""


def read_whole(fd: int) -> bytes:
    """Everything left in an open file (raw fds: open() builds two file
    objects per read).  A regular file's short read is its end: one read
    for a small file.  Raises OSError (a directory, an I/O error)."""
    chunks = []
    while len(chunk := posix.read(fd, READ_SIZE)) == READ_SIZE:
        chunks.append(chunk)
    chunks.append(chunk)
    return b"".join(chunks)


def unreadable(name: bytes, error: OSError) -> ControlError:
    """What a control file that exists but cannot be read makes of a session: 421."""
    return ControlError(f"{name.decode(errors='replace')}: {error.strerror}")


class Controls:
    """Reads files from one control directory with qmail's rules."""

    def __init__(self, directory: bytes) -> None:
        self.directory = directory
        self._kept: "Controls | None" = None

    def path(self, name: bytes) -> bytes:
        return self.directory + b"/" + name

    def _read(self, name: bytes) -> bytes | None:
        """The whole file, read by every session (ten of these or more)."""
        try:
            fd = posix.open(self.path(name), posix.O_RDONLY | posix.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise unreadable(name, e) from None
        try:
            return read_whole(fd)
        except OSError as e:
            raise unreadable(name, e) from None
        finally:
            posix.close(fd)

    def kept(self) -> "Controls":
        """These controls as a warm worker keeps them (KEPT), for the files
        of the recipient check and AUTH's settings: itself in a process
        serving one session."""
        if KEPT is None:
            return self
        if self._kept is None:
            from .kept import KeptControls  # a worker's: loaded before it forked

            self._kept = KeptControls(self.directory, KEPT)
        return self._kept

    def line(self, name: bytes) -> bytes | None:
        """First line, trailing spaces/TABs removed; None if the file is missing."""
        data = self._read(name)
        if data is None:
            return None
        return data.split(b"\n", 1)[0].rstrip(b" \t")

    def lines(self, name: bytes) -> list[bytes] | None:
        """Entries of a list file; None if the file is missing."""
        data = self._read(name)
        if data is None:
            return None
        entries = (raw.rstrip(b" \t") for raw in data.split(b"\n"))
        return [e for e in entries if e and not e.startswith(b"#")]

    def number(self, name: bytes) -> int | None:
        """Leading decimal digits of the first line; None if missing or no digits."""
        text = self.line(name)
        return None if text is None else leading_number(text)

    def exists(self, name: bytes) -> bool:
        try:
            posix.stat(self.path(name))
        except OSError:
            return False
        return True


KEPT: "KeptFiles | None" = None  # set by a warm worker (workers.py), for its sessions


def leading_number(text: bytes) -> int | None:
    """qmail's scan_ulong: the digits at the start, or None if there are none.

    A number past an unsigned long saturates (qmail's would wrap around): a
    huge SIZE or databytes stays huge, and no digit string is too long for int().
    """
    end = 0
    while end < len(text) and 0x30 <= text[end] <= 0x39:
        end += 1
    if not end:
        return None
    return ULONG_MAX if end > 20 else min(int(text[:end]), ULONG_MAX)


def clamp_seconds(seconds: int) -> int:
    """A delay from a control file, cut to what the system can wait for."""
    return min(seconds, MAX_SECONDS)


def number_setting(controls: Controls, env: "Mapping[bytes, bytes]", name: bytes,
                   default: int) -> int:
    """control/NAME as a number, unless $NAME (upper case) is set: then its
    leading digits, so a non-numeric variable means `default` even over the file."""
    value = env.get(name.upper())
    found = controls.number(name) if value is None else leading_number(value)
    return default if found is None else found


def flag_setting(controls: Controls, env: "Mapping[bytes, bytes]", name: bytes) -> bool:
    """A switch like control/authplaintext: on when its number is not 0 (default off)."""
    return number_setting(controls, env, name, 0) != 0


class Settings:
    """Everything a session needs from control files and the environment,
    the switches of the checks (CHECKS, below) among them.  What only
    one check reads, it reads in its own build() from `controls` and `env`."""

    def __init__(self, env: "Mapping[bytes, bytes]", argv: "list[bytes] | None" = None) -> None:
        self.env = env
        self.paths = paths = QmailPaths(env)
        self.controls = controls = Controls(paths.control)
        me = controls.line(b"me")
        self.me: bytes | None = me
        greeting = controls.line(b"smtpgreeting")
        if greeting is None:
            greeting = me
        if greeting is None:
            raise ControlError("neither control/smtpgreeting nor control/me exists")
        self.greeting: bytes = greeting
        localiphost = controls.line(b"localiphost")
        self.localiphost: bytes | None = me if localiphost is None else localiphost
        timeout = controls.number(b"timeoutsmtpd")
        self.timeout: int = clamp_seconds(DEFAULT_TIMEOUT if timeout is None else max(timeout, 1))
        self.rcpthosts: list[bytes] | None = controls.lines(b"rcpthosts")
        self.morercpthosts: bytes | None = None
        if self.rcpthosts is not None and controls.exists(b"morercpthosts.cdb"):
            self.morercpthosts = controls.path(b"morercpthosts.cdb")
        bmf = controls.lines(b"badmailfrom")
        self.badmailfrom = frozenset(entry.lower() for entry in bmf) if bmf else None
        databytes = number_setting(controls, env, b"databytes", 0)
        if databytes == 4294967295:  # qmail's databytes + 1 must not wrap to 0
            databytes -= 1
        self.databytes: int = databytes
        self.relayclient: bytes | None = env.get(b"RELAYCLIENT")
        self.remoteip = env.get(b"TCPREMOTEIP", b"unknown")
        self.remotehost = env.get(b"TCPREMOTEHOST", b"unknown")
        self.remoteinfo: bytes | None = env.get(b"TCPREMOTEINFO")
        self.localhost = env.get(b"TCPLOCALHOST", env.get(b"TCPLOCALIP", b"unknown"))
        # AUTH: the qmail-authentication patch's SMTPAUTH (`-` off, `!` required), a backend
        self.smtpauth = env.get(b"SMTPAUTH")
        self.auth_backend = (None if self.smtpauth == b"-"
                             else auth_backend(argv or [], env, controls))
        self.tls_offered = controls.exists(SERVERCERT)
        self.auth_needs_tls = (self.tls_offered and self.auth_backend is not None
                               and not flag_setting(controls, env, b"authcleartext"))
        # the checks' switches (each costs at most one read or stat when off)
        self.badrcptto = controls.lines(b"badrcptto") or None
        self.checkrecipients = flag_setting(controls.kept(), env, b"checkrecipients")
        self.smtpplugins = self._plugin_file(controls, env)
        self.smtputf8 = flag_setting(controls, env, b"smtputf8")
        self.rbl = self._rblsmtpd(controls, env)

    def _rblsmtpd(self, controls: Controls, env: "Mapping[bytes, bytes]") -> list[bytes] | None:
        """rblsmtpd's options ($RBLLISTS, else control/rbllists), or None when
        there is nothing to do: no lists and no $RBLSMTPD text, or an empty
        $RBLSMTPD (rblsmtpd's "do not block this client")."""
        text = env.get(b"RBLSMTPD")
        if text == b"":
            return None
        words = env.get(b"RBLLISTS")
        if words is None:
            words = b" ".join(controls.lines(b"rbllists") or ())
        options = words.split()
        return options if options or text is not None else None

    def _plugin_file(self, controls: Controls, env: "Mapping[bytes, bytes]") -> bytes | None:
        """qmail-spp's configuration: $SPPCONFFILE (a relative one from the
        qmail home, as the patch runs there), else control/smtpplugins when it
        exists; none with $NOSPP."""
        if b"NOSPP" in env:
            return None
        named = env.get(b"SPPCONFFILE")
        if named is not None:
            return self.paths.under_home(named) if named else controls.path(b"smtpplugins")
        return controls.path(b"smtpplugins") if controls.exists(b"smtpplugins") else None


def authdb_conninfo(env: "Mapping[bytes, bytes]", controls: Controls) -> str | None:
    """$AUTHDB, else control/authdb: the libpq connection string; None: no SQL AUTH."""
    value = env.get(b"AUTHDB")
    if value is None:
        value = controls.line(b"authdb")
    return None if value is None else value.decode("utf-8", "replace")


def _checkpassword(argv: list[bytes], env: "Mapping[bytes, bytes]",
                   controls: Controls) -> "list[bytes] | None":
    """The AUTH patch's command line: `qmail-esmtpd CHECKPASSWORD SUBPROGRAM...`."""
    return argv or None


def _postgres(argv: list[bytes], env: "Mapping[bytes, bytes]", controls: Controls) -> str | None:
    """A libpq connection string in $AUTHDB or control/authdb."""
    return authdb_conninfo(env, controls)


# configuration -> AUTH backend (a module in qmail_esmtpd/auth/, auth/__init__.py
# says what it provides); the first that finds its setting wins
AUTH_BACKENDS: "tuple[tuple[str, Finder], ...]" = (
    ("checkpassword", _checkpassword),
    ("postgres", _postgres),
)


def auth_backend(argv: list[bytes], env: "Mapping[bytes, bytes]",
                 controls: Controls) -> "tuple[str, Setting] | None":
    """(backend module name, its setting), or None: no AUTH, plain qmail-smtpd."""
    for name, find in AUTH_BACKENDS:
        setting = find(argv, env, controls)
        if setting is not None:
            return name, setting
    return None


# configuration -> checks: a module qmail_esmtpd/check_NAME.py each, whose
# build(settings) returns the check (protocol.Checks.assemble says what it
# may answer), switched on by its Settings value when that is neither None
# nor False.  The order is the order of asking: who may talk at all (a
# listed client is refused before anything else), what we offer, who may
# send, the admin's plugins, where mail may go, which recipients exist.  A
# check that is off is not imported; the warm server preloads them all
# (preload.py).
CHECKS = (
    ("rbl", "rbl"),                     # $RBLSMTPD, control/rbllists: DNS blocklists, as rblsmtpd
    ("smtputf8", "smtputf8"),           # control/smtputf8: RFC 6531 offered (refuses nothing)
    ("badmailfrom", "badmailfrom"),     # control/badmailfrom
    ("authsender", "auth_backend"),     # AUTH: SIZE within databytes, senderbinding, daily limit
    ("spp", "smtpplugins"),             # qmail-spp plugins
    ("rcpthosts", "rcpthosts"),         # control/rcpthosts, morercpthosts.cdb
    ("badrcptto", "badrcptto"),         # control/badrcptto
    ("recipients", "checkrecipients"),  # control/checkrecipients: qmail's own mailbox rules
)
CHECK_MODULES = tuple(f"qmail_esmtpd.check_{name}" for name, _ in CHECKS)


def configured_checks(settings: Settings) -> list[object]:
    """The checks the configuration switches on, in the order they are asked."""
    checks = []
    for (_, switch), module in zip(CHECKS, CHECK_MODULES, strict=True):
        if getattr(settings, switch) in (None, False):
            continue
        check = __import__(module, fromlist=("build",)).build(settings)
        if check is not None:
            checks.append(check)
    return checks
