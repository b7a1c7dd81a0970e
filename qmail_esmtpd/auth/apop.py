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
  recorded by the throttle before the check as every other one (an
  attempt that cannot be recorded is not checked);
- else it cannot be checked: the caller refuses it at once, without the
  failure delay and without counting it.
The throttle's refusal of a source applies first, as for any login.
"""

from .accounts import USER_QUERY, Account, Unavailable, decoded_name, verify
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
          plaintext: bool, query: str = USER_QUERY
          ) -> "tuple[Account | None, Status | None, bool]":
    """(account or None, the throttle's status, whether the attempt could be
    checked) for what looks like an APOP digest; Unavailable on trouble.
    `query` reads the row as accounts.verify() does."""
    import hashlib
    import hmac

    text = decoded_name(name)
    tried = text if text is not None else name.decode("utf-8", "replace")
    try:
        status = throttle.check(tried)
        if status.refused:
            return None, status, True
        account = verify(db, name, digest, plaintext, query)
        if account is not None:
            return account, status, True
        rows = db.query(query, {"user": text}) if text is not None else []
        secret = stored_plaintext(rows[0][1], plaintext) if rows and rows[0][2] else None
        if secret is None:
            return None, status, False
        status = throttle.begin(tried, digest)  # a wrong digest is a wrong password
        if status.refused:
            return None, status, True
        expected = hashlib.md5(timestamp + secret, usedforsecurity=False).hexdigest()
        right = hmac.compare_digest(expected.encode("ascii"), digest)
        throttle.settle(right)
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    if not right:
        return None, status, True
    user_id, _, _, sendlimit, *more = rows[0]
    return Account(user_id, text or "", sendlimit, tuple(more)), status, True
