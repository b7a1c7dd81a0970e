"""Failed logins counted across connections and frontends, in `authfailures`.

Every program that checks passwords from poppass (SMTP AUTH, the POP3
checkpassword) asks here first and reports each failure here, before it
delays or answers, so hanging up early does not escape the count.

- A source (an IPv4 address, or the /64 an IPv6 client owns) with
  `limit` distinct failed attempts within `window` seconds is refused
  without any password check, a correct one included (else the refusal
  would be an oracle), until its failures age out.
- A name with `name_limit` distinct failures within the window (guessing
  spread over many addresses) is slowed, not locked: every answer for it,
  right or wrong, waits the failure delay, so the owner still gets in.
- Attempts are distinct by a keyed digest (HMAC-SHA256, 63 bits) of
  (source, name, password) under the secret in control/authfailkey: a
  phone retrying one stale password counts once, a guesser counts each
  guess, and nobody without the key can tell in advance which guesses
  would share a value, or test a password against the stored one.  The key
  is a file the database role never sees (`make install` creates it).
  Without it (missing, unreadable, too short) nothing is guessable either:
  every failure counts as a new attempt, and the session logs that once.
- A failure that cannot be recorded (a read-only or full database) fails
  closed: the caller refuses the rest of the session (accounts.login).
- Trusted clients (RELAYCLIENT set by tcpserver, or AUTHTRUSTED in the
  environment, e.g. from tcprules) are neither counted nor refused.
Rows older than a day are deleted as new failures arrive.
"""

from ..config import ControlError, number_setting
from ..log import log
from .db import Database

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config import Controls

DEFAULT_LIMIT = 10  # distinct failed attempts per source ...
DEFAULT_WINDOW = 900  # ... within this many seconds
DEFAULT_NAME_LIMIT = 30  # distinct failed attempts against one name, from anywhere
RETENTION = 86400  # seconds a failure is kept; the window is at most this
MAX_NAME = 256  # characters of a tried name kept (names are client-chosen)
KEY_FILE = b"authfailkey"  # the digest's secret, in the control directory
MIN_KEY = 16  # characters; a shorter key is treated as none

COUNTS = """
SELECT (SELECT count(*) FROM authfailures
        WHERE source = %(source)s AND at > now() - %(window)s * interval '1 second'),
       (SELECT count(*) FROM authfailures
        WHERE name = %(name)s AND at > now() - %(window)s * interval '1 second')
"""

RECORD = """
WITH expired AS (
    DELETE FROM authfailures WHERE at < now() - %(retention)s * interval '1 second'
)
INSERT INTO authfailures (source, name, attempt) VALUES (%(source)s, %(name)s, %(attempt)s)
ON CONFLICT (source, name, attempt) DO UPDATE SET at = now()
"""


def source_of(remoteip: str) -> str | None:
    """The network a client answers for: its IPv4 address, or its IPv6 /64
    (an IPv4-mapped IPv6 address is the IPv4 one).  None when not an address."""
    parts = remoteip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return ".".join(str(int(p)) for p in parts)  # the usual case, without ipaddress
    if ":" not in remoteip:
        return None
    import ipaddress  # (13 ms: IPv6 clients only)

    try:
        address = ipaddress.ip_address(remoteip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Status:
    """What the counts say about one attempt, before the password is checked;
    `unrecorded`: why a failure of this session could not be stored."""

    __slots__ = ("refused", "slowed", "failures", "unrecorded")

    def __init__(self, refused: bool = False, slowed: bool = False, failures: int = 0,
                 unrecorded: str | None = None) -> None:
        self.refused = refused
        self.slowed = slowed
        self.failures = failures
        self.unrecorded = unrecorded


class Throttle:
    """One client's standing: `check(name)` before, `failed(name, password)` after.

    `unrecorded` is why a failure of this session could not be stored
    (None while every one was): the session is then refused further tries.
    """

    def __init__(self, db: Database, remoteip: str, trusted: bool = False,
                 limit: int = DEFAULT_LIMIT, window: int = DEFAULT_WINDOW,
                 name_limit: int = DEFAULT_NAME_LIMIT,
                 controls: "Controls | None" = None) -> None:
        self.db = db
        self.source = None if trusted else source_of(remoteip) or "0.0.0.0"
        self.limit = limit
        self.window = min(window, RETENTION)
        self.name_limit = name_limit
        self.controls = controls
        self.unrecorded: str | None = None
        self._key: bytes | None = None
        self._key_read = False

    @property
    def active(self) -> bool:
        return self.source is not None and self.window > 0 and (
            self.limit > 0 or self.name_limit > 0)

    def check(self, name: str) -> Status:
        """Refused (too many failures from this source), slowed, or clear.
        Raises DatabaseError."""
        if not self.active:
            return Status()
        rows = self.db.query(COUNTS, {"source": self.source, "name": name[:MAX_NAME],
                                      "window": self.window})
        by_source, by_name = rows[0]
        if self.limit and by_source >= self.limit:
            return Status(refused=True, failures=by_source)
        return Status(slowed=bool(self.name_limit and by_name >= self.name_limit),
                      failures=by_name)

    def failed(self, name: str, password: bytes) -> None:
        """Count one failed attempt.  Raises DatabaseError."""
        if not self.active:
            return
        name = name[:MAX_NAME]
        self.db.query(RECORD, {"source": self.source, "name": name,
                               "attempt": self.attempt(name, password),
                               "retention": RETENTION})

    def attempt(self, name: str, password: bytes) -> int:
        """The stored value of one try: the same for a retry, unpredictable
        without the key; a fresh random one for every try when there is no key."""
        key = self.key()
        if key is None:
            import posix

            return int.from_bytes(posix.urandom(8), "big") >> 1
        import hmac  # only on failure: OpenSSL's libcrypto is not free to load

        seed = f"{self.source}\0{name}\0".encode("utf-8", "surrogateescape")
        return int.from_bytes(hmac.digest(key, seed + password, "sha256")[:8], "big") >> 1

    def key(self) -> bytes | None:
        """control/authfailkey's first line, read once; None (logged once) without it."""
        if not self._key_read:
            self._key_read = True
            try:
                key = self.controls.line(KEY_FILE) if self.controls is not None else None
                why = "is missing"
            except ControlError as e:
                key, why = None, f"cannot be read by {reader()} ({e})"
            if key is not None and len(key) < MIN_KEY:
                key, why = None, f"is shorter than {MIN_KEY} characters"
            if key is None:
                log(f"auth throttle: control/authfailkey {why}: every failure counts "
                    "as a new attempt, retries of one password too (make install creates it)")
            self._key = key
        return self._key


def reader() -> str:
    """Who this process reads files as, by name: what an admin compares with
    the key file's owner and group (make install gives it the service user's)."""
    import grp
    import posix
    import pwd

    uid, gid = posix.geteuid(), posix.getegid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "?"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = "?"
    return f"user {user} (uid {uid}) group {group} (gid {gid})"


def open_throttle(db: Database, controls: "Controls", env: "Mapping[bytes, bytes]",
                  remoteip: str, trusted: bool = False) -> Throttle:
    """The throttle as control files and the environment set it (AUTHFAILLIMIT,
    AUTHFAILWINDOW, AUTHNAMELIMIT; AUTHTRUSTED trusts the client); its key
    comes only from control/authfailkey, never from the environment (which
    qmail-queue and POP3 subprograms inherit)."""
    return Throttle(
        db, remoteip, trusted or b"AUTHTRUSTED" in env,
        limit=number_setting(controls, env, b"authfaillimit", DEFAULT_LIMIT),
        window=number_setting(controls, env, b"authfailwindow", DEFAULT_WINDOW),
        name_limit=number_setting(controls, env, b"authnamelimit", DEFAULT_NAME_LIMIT),
        controls=controls)
