"""APOP (RFC 1939) as qmail-popup hands it to a checkpassword program.

`APOP name digest` reaches the program as `name NUL digest NUL <timestamp>
NUL`, the shape of USER/PASS (`name NUL password NUL <timestamp> NUL`): only
the second field tells them apart, and not for certain.  The digest is
md5(timestamp + password) in 32 lower-case hex digits, which only a password
kept readable can check; argon2 and crypt hashes cannot.  So a 32-hex-digit
"password" that comes with a timestamp (Dovecot sends none) is:

- checked as the password itself first, since a password may look like
  that (USER/PASS keeps working), but a wrong one is not counted: it is
  most likely an APOP digest, new with every greeting, which a client like
  mutt sends at each poll and would lock its owner out with.  Not counting
  it gives a guesser nothing: only strings of 32 hex digits are checked
  this way, and such a password, chosen at random, is beyond guessing;
- checked as the digest where the row keeps its password in plaintext and
  authplaintext allows it: right logs in, wrong is a wrong password,
  counted by accounts.login() as every other one (failing closed alike);
- else it cannot be checked: the caller refuses it at once, without the
  failure delay and without counting it.
The throttle's refusal of a source applies first, as for any login.
"""

from .accounts import USER_QUERY, Account, Unavailable, decoded_name, verify
from .accounts import login as password_login
from .db import Database, DatabaseError
from .passwords import stored_plaintext

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .throttle import Status, Throttle

DIGEST_DIGITS = frozenset(b"0123456789abcdef")


def looks_like_apop(password: bytes, timestamp: bytes) -> bool:
    """An APOP digest, as qmail-popup passes one: 32 lower-case hex digits
    after a greeting that carried a timestamp."""
    return bool(timestamp) and len(password) == 32 and DIGEST_DIGITS.issuperset(password)


def login(db: Database, name: bytes, digest: bytes, timestamp: bytes, throttle: "Throttle",
          plaintext: bool) -> "tuple[Account | None, Status | None, bool]":
    """(account or None, the throttle's status, whether the attempt could be
    checked) for what looks like an APOP digest; Unavailable on trouble."""
    import hashlib
    import hmac

    text = decoded_name(name)
    try:
        status = throttle.check(text if text is not None else name.decode("utf-8", "replace"))
        if status.refused:
            return None, status, True
        account = verify(db, name, digest, plaintext)
        if account is not None:
            return account, status, True
        rows = db.query(USER_QUERY, (text,)) if text is not None else []
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    secret = stored_plaintext(rows[0][1], plaintext) if rows and rows[0][2] else None
    if secret is None:
        return None, status, False
    expected = hashlib.md5(timestamp + secret, usedforsecurity=False).hexdigest()
    if hmac.compare_digest(expected.encode("ascii"), digest):
        user_id, _, _, sendlimit = rows[0]
        return Account(user_id, text or "", sendlimit), status, True
    # a wrong digest is a wrong password: counted as every other one is
    account, counted = password_login(db, name, digest, throttle, plaintext)
    return account, counted, True
