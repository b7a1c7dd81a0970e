"""Failed logins counted across connections and frontends, in `authfailures`.

Every program that checks passwords from poppass (SMTP AUTH, the POP3
checkpassword) goes through here: `begin()` before a password is checked,
`settle()` after.

- begin() records the attempt as a failure before the password is
  checked, in the statement that reads the counts, so that hanging up
  early, or a database that cannot write, gives no free guess: an attempt
  that cannot be recorded (a read-only role, a standby, a revoked INSERT,
  a full disk) is not checked at all, and neither is any later one of the
  session (the caller answers 454 or 111).  A login's account row is read
  by that same statement (begin()'s `lookup`): the hash to check only ever
  arrives with its attempt committed, in one round trip.
- settle() takes a right password's record back, so a right password is
  never counted; a wrong one's time is set anew instead: the same round
  trip either way, so the time to an answer does not tell which it was.
- A source (an IPv4 address, or the /64 an IPv6 client owns) with
  `limit` distinct failed attempts within `window` seconds is refused
  without any password check, a correct one included (else the refusal
  would be an oracle), until its failures age out.
- A name with `name_limit` distinct failures within the window (guessing
  spread over many addresses) is slowed, not locked: every answer for it,
  right or wrong, waits the failure delay, so the owner still gets in.
- Attempts are distinct by a keyed digest (BLAKE2b with the secret in
  control/authfailkey as its key, 63 bits) of (source, name, password): a
  phone retrying one stale password counts once, a guesser counts each
  guess, and nobody without the key can tell in advance which guesses
  would share a value, or test a password against the stored one.  The key
  is a file the database role never sees (`make install` creates it).
  Without it (missing, unreadable, too short) nothing is guessable either:
  every failure counts as a new attempt, and the session logs that once.
- Trusted clients (RELAYCLIENT set by tcpserver, or AUTHTRUSTED in the
  environment, e.g. from tcprules) are neither counted nor refused.
Rows older than a day are deleted as new attempts arrive.
"""

import posix

from ..config import ControlError, number_setting
from ..log import log
from ..sources import source_of
from .db import Database, DatabaseError

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
MAX_KEY = 64  # bytes BLAKE2b takes as a key; a longer one is digested first
# SQLSTATEs of a database that answers but cannot write: a read-only
# transaction (default_transaction_read_only, a hot standby), no privilege
# (INSERT revoked), insufficient resources (a full disk), an I/O error.
# Anything else is the database being unavailable (accounts.Unavailable).
CANNOT_WRITE = ("25", "42501", "53", "58")

_WINDOW = "at > now() - %(window)s * interval '1 second'"
COUNTS = f"""
SELECT (SELECT count(*) FROM authfailures WHERE source = %(source)s AND {_WINDOW}) AS by_source,
       (SELECT count(*) FROM authfailures WHERE name = %(name)s AND {_WINDOW}) AS by_name
"""

# The counts as they were, and this attempt recorded as a failure unless the
# source is refused by them: one statement, one snapshot.
_ADMITTED = "(%(limit)s = 0 OR by_source < %(limit)s)"
_RECORD = f"""
WITH counts AS ({COUNTS}),
expired AS (
    DELETE FROM authfailures WHERE at < now() - %(retention)s * interval '1 second'
),
pending AS (
    INSERT INTO authfailures (source, name, attempt)
    SELECT %(source)s::inet, %(name)s, %(attempt)s::bigint FROM counts
    WHERE {_ADMITTED}
    ON CONFLICT (source, name, attempt) DO UPDATE SET at = now()
)
"""
BEGIN = _RECORD + "SELECT by_source, by_name FROM counts"


def begin_and_read(lookup: str) -> str:
    """BEGIN that also reads the account's row with `lookup` (which takes the
    name as %(user)s), joined only where the attempt is recorded: the row
    comes in the statement that records the attempt, so it cannot be had
    without that record, and a refused source gets none (NULLs)."""
    return (_RECORD + "SELECT by_source, by_name, account.* FROM counts "
            f"LEFT JOIN ({lookup}) AS account ON {_ADMITTED}")


# After the check, the same statement either way: a right password's record
# is taken back, a wrong one's time set to the answer's.
SETTLE = """
WITH taken_back AS (
    DELETE FROM authfailures
    WHERE %(right)s AND source = %(source)s AND name = %(name)s AND attempt = %(attempt)s
)
UPDATE authfailures SET at = now()
WHERE NOT %(right)s AND source = %(source)s AND name = %(name)s AND attempt = %(attempt)s
"""


class Status:
    """What the counts say about one attempt, before the password is checked.

    `unrecorded`: why the attempt could not be recorded (it is then refused,
    and so is every later one of the session).  `row`: the account's row
    begin() read with its `lookup` (None: no such row, or nothing read)."""

    __slots__ = ("refused", "slowed", "failures", "unrecorded", "row")

    def __init__(self, refused: bool = False, slowed: bool = False, failures: int = 0,
                 unrecorded: str | None = None) -> None:
        self.refused = refused
        self.slowed = slowed
        self.failures = failures
        self.unrecorded = unrecorded
        self.row: tuple | None = None


class Throttle:
    """One client's standing: `begin(name, password)` before the check,
    `settle(right)` after; `check(name)` only reads the counts.

    `unrecorded` is why an attempt of this session could not be recorded
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
        self._pending: dict[str, object] | None = None  # begin()'s row, for settle()
        self._key: bytes | None = None
        self._key_read = False
        self._keyless: str | None = None  # why there is no key, until logged

    @property
    def active(self) -> bool:
        return self.source is not None and self.window > 0 and (
            self.limit > 0 or self.name_limit > 0)

    def check(self, name: str) -> Status:
        """Refused (too many failures from this source), slowed, or clear,
        recording nothing.  Raises DatabaseError."""
        if not self.active:
            return Status()
        if self.unrecorded is not None:
            return Status(refused=True, unrecorded=self.unrecorded)
        rows = self.db.query(COUNTS, {"source": self.source, "name": name[:MAX_NAME],
                                      "window": self.window})
        return self._status(*rows[0])

    def begin(self, name: str, password: bytes,
              lookup: "tuple[str, str] | None" = None) -> Status:
        """check(), and unless refused the attempt recorded as a failure until
        settle() says otherwise.  An attempt a database that answers cannot
        write comes back refused, with `unrecorded` saying why; any other
        trouble raises DatabaseError (and nothing is checked either).

        `lookup` (a query reading the account's row by %(user)s, and the user):
        its row comes back as the status's `row`, read by the statement that
        records the attempt (one round trip, not two); never for a refused
        attempt, nor where nothing is recorded (not `active`: the caller
        reads the row itself then)."""
        if not self.active:
            return Status()
        if self.unrecorded is not None:
            return Status(refused=True, unrecorded=self.unrecorded)
        name = name[:MAX_NAME]
        row: dict[str, object] = {"source": self.source, "name": name,
                                  "attempt": self.attempt(name, password)}
        params = {**row, "window": self.window, "limit": self.limit, "retention": RETENTION}
        if lookup is not None:
            params["user"] = lookup[1]
        try:
            rows = self.db.query(BEGIN if lookup is None else begin_and_read(lookup[0]),
                                 params)
        except DatabaseError as e:
            if e.code is None or not e.code.startswith(CANNOT_WRITE):
                raise
            self.unrecorded = str(e)
            return Status(refused=True, unrecorded=self.unrecorded)
        by_source, by_name, *account = rows[0]
        status = self._status(by_source, by_name)
        self._pending = None if status.refused else row
        if not status.refused and account and account[0] is not None:  # id: NOT NULL
            status.row = tuple(account)
        return status

    def settle(self, right: bool) -> None:
        """After the check begin() let through: a right password's record is
        taken back, a wrong one's kept with the time of the answer.
        Raises DatabaseError (a right password then stays counted)."""
        row, self._pending = self._pending, None
        if row is None:
            return
        if not right and self._keyless is not None:  # said once, where a failure is stored
            log(self._keyless)
            self._keyless = None
        self.db.query(SETTLE, {**row, "right": right})

    def _status(self, by_source: int, by_name: int) -> Status:
        if self.limit and by_source >= self.limit:
            return Status(refused=True, failures=by_source)
        return Status(slowed=bool(self.name_limit and by_name >= self.name_limit),
                      failures=by_name)

    def attempt(self, name: str, password: bytes) -> int:
        """The stored value of one try: the same for a retry, unpredictable
        without the key; a fresh random one for every try when there is no key."""
        key = self.key()
        if key is None:
            return int.from_bytes(posix.urandom(8), "big") >> 1
        import _blake2  # keyed BLAKE2b: `hmac` would load OpenSSL's libcrypto (~6 ms)

        seed = f"{self.source}\0{name}\0".encode("utf-8", "surrogateescape")
        digest = _blake2.blake2b(seed + password, key=key, digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def key(self) -> bytes | None:
        """control/authfailkey's first line, read once; None without it (logged
        by settle() with the session's first failure: a right password says nothing)."""
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
                self._keyless = (f"auth throttle: control/authfailkey {why}: every failure "
                                 "counts as a new attempt, retries of one password too "
                                 "(make install creates it)")
            elif len(key) > MAX_KEY:
                import _blake2

                key = _blake2.blake2b(key).digest()
            self._key = key
        return self._key


def reader() -> str:
    """Who this process reads files as, by name: what an admin compares with
    the key file's owner (make install makes it the service user's, 0400)."""
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
