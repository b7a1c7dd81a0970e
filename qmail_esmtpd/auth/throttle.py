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
- Attempts are distinct by a 16-bit digest of (source, name, password): a
  phone retrying one stale password counts once, a guesser counts each
  guess.  16 bits tell retries from guesses but cannot give a password
  back: every value is shared by one password in 65536.
- Trusted clients (RELAYCLIENT set by tcpserver, or AUTHTRUSTED in the
  environment, e.g. from tcprules) are neither counted nor refused.
Rows older than a day are deleted as new failures arrive.
"""

from ..config import number_setting
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
    """What the counts say about one attempt, before the password is checked."""

    __slots__ = ("refused", "slowed", "failures")

    def __init__(self, refused: bool = False, slowed: bool = False, failures: int = 0) -> None:
        self.refused = refused
        self.slowed = slowed
        self.failures = failures


class Throttle:
    """One client's standing: `check(name)` before, `failed(name, password)` after."""

    def __init__(self, db: Database, remoteip: str, trusted: bool = False,
                 limit: int = DEFAULT_LIMIT, window: int = DEFAULT_WINDOW,
                 name_limit: int = DEFAULT_NAME_LIMIT) -> None:
        self.db = db
        self.source = None if trusted else source_of(remoteip) or "0.0.0.0"
        self.limit = limit
        self.window = min(window, RETENTION)
        self.name_limit = name_limit

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
        import hashlib  # only on failure: OpenSSL's libcrypto is not free to load

        name = name[:MAX_NAME]
        seed = f"{self.source}\0{name}\0".encode("utf-8", "surrogateescape")
        attempt = int.from_bytes(hashlib.sha256(seed + password).digest()[:2], "big")
        self.db.query(RECORD, {"source": self.source, "name": name, "attempt": attempt,
                               "retention": RETENTION})


def open_throttle(db: Database, controls: "Controls", env: "Mapping[bytes, bytes]",
                  remoteip: str, trusted: bool = False) -> Throttle:
    """The throttle as control files and the environment set it (AUTHFAILLIMIT,
    AUTHFAILWINDOW, AUTHNAMELIMIT; AUTHTRUSTED trusts the client)."""
    return Throttle(
        db, remoteip, trusted or b"AUTHTRUSTED" in env,
        limit=number_setting(controls, env, b"authfaillimit", DEFAULT_LIMIT),
        window=number_setting(controls, env, b"authfailwindow", DEFAULT_WINDOW),
        name_limit=number_setting(controls, env, b"authnamelimit", DEFAULT_NAME_LIMIT))
