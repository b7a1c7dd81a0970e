"""Who may log in: the `poppass` table checked through the hashing policy.

Independent of SMTP, so every program that logs users in from this table
(SMTP AUTH, a POP3 checkpassword) asks the same question the same way:

    account, status = login(db, name, password, throttle)   # Unavailable on trouble

`login()` asks the throttle (throttle.py) first, refusing a client that
failed too often without checking anything, then `verify()`s, and counts
a failure before the caller delays or answers.  One round trip per check.
A failure the database cannot store (read-only, full, gone) fails closed:
it is still a failure for the caller (who delays and counts it), and every
later try through the same throttle is refused unchecked, so a database
that reads but cannot write gives no free guesses.
An unknown, inactive or undecodable user costs the same hash work as a
wrong password (passwords.check), so timing does not tell which names
exist.  A deprecated hash is replaced on success when the role may UPDATE
pw (the optional grant in sql/grants.sql); either way one log line says
what happened to it.
"""

from ..log import log, printable
from . import passwords
from .db import NO_PRIVILEGE, Database, DatabaseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .throttle import Status, Throttle

USER_QUERY = "SELECT id, pw, active, sendlimit FROM poppass WHERE name = %s"
ADDRESSES = "SELECT address FROM sendas WHERE id = %s"
REHASH = "UPDATE poppass SET pw = %s WHERE id = %s AND pw = %s RETURNING id"


class Unavailable(Exception):
    """The database could not answer: try again later (454, 111...)."""


class Account:
    """A verified row of poppass; `sendlimit` None means the site's default."""

    __slots__ = ("id", "name", "sendlimit")

    def __init__(self, id: int, name: str, sendlimit: int | None) -> None:
        self.id = id
        self.name = name
        self.sendlimit = sendlimit


def login(db: Database, name: bytes, password: bytes, throttle: "Throttle | None",
          plaintext: bool = False) -> "tuple[Account | None, Status | None]":
    """verify() behind the throttle: (account or None, the throttle's status).

    A refused status means nothing was checked.  A failure is counted
    before this returns; when it cannot be, the status says why
    (`unrecorded`) and the throttle refuses every later try.
    """
    if throttle is None:
        return verify(db, name, password, plaintext), None
    if throttle.unrecorded is not None:  # fail closed: no more checks this session
        from .throttle import Status

        return None, Status(refused=True, unrecorded=throttle.unrecorded)
    tried = decoded_name(name) or name.decode("utf-8", "replace").replace("\0", "?")
    try:
        status = throttle.check(tried)
        if status.refused:
            return None, status
        account = verify(db, name, password, plaintext)
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    if account is None:
        try:
            throttle.failed(tried, password)
        except DatabaseError as e:
            throttle.unrecorded = status.unrecorded = str(e)
    return account, status


def verify(db: Database, name: bytes, password: bytes,
           plaintext: bool = False) -> Account | None:
    """The account if `password` is right for an active `name`, else None."""
    text = decoded_name(name)
    if text is None:
        passwords.check(password, "")
        return None
    try:
        rows = db.query(USER_QUERY, (text,))
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    user_id, stored, active, sendlimit = rows[0] if rows else (0, "", False, None)
    ok, stale = passwords.check(password, stored, plaintext)
    if not (ok and active):
        return None
    if stale:
        _rehash(db, name, password, user_id, stored)
    return Account(user_id, text, sendlimit)


def addresses(db: Database, account: Account) -> frozenset[bytes]:
    """The envelope senders listed for the account in `sendas` (lower case)."""
    try:
        rows = db.query(ADDRESSES, (account.id,))
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    return frozenset(address.encode("utf-8") for (address,) in rows)


def nfc(text: str) -> str:
    """Unicode NFC, the one form names are stored and looked up in."""
    if text.isascii():  # already NFC; spares loading unicodedata on the usual path
        return text
    import unicodedata

    return unicodedata.normalize("NFC", text)


# Unicode categories a name may not contain: controls (incl. U+0085), format
# characters (zero-width space and joiners, bidi marks), surrogates, private
# use, unassigned, line and paragraph separators.  Spaces other than U+0020
# are refused too, and so are spaces at either end.
_INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def canonical_name(text: str) -> str | None:
    """The form a new account name is stored in (NFC), or None when the name
    is empty or holds characters that print as nothing or as something else,
    so that no two names in `list` look alike but differ."""
    text = nfc(text)
    if not text or text != text.strip(" "):
        return None
    if text.isascii():
        return text if text.isprintable() else None
    import unicodedata

    for char in text:
        category = unicodedata.category(char)
        if category in _INVISIBLE or (category == "Zs" and char != " "):
            return None
    return text


def decoded_name(name: bytes) -> str | None:
    """A name as the client sent it, in the form to look it up in: UTF-8
    text without NUL, in NFC (as canonical_name stores names); None when it
    cannot be in the table."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else nfc(text)


def _rehash(db: Database, name: bytes, password: bytes, user_id: int, stored: str) -> None:
    """Replace a deprecated hash; one log line either way (the schemes, never a hash)."""
    old, who = passwords.scheme(stored), f"user={printable(name)}"
    try:
        done = db.query(REHASH, (passwords.new_hash(password), user_id, stored))
    except DatabaseError as e:
        if e.code == NO_PRIVILEGE:
            log(f"auth rehash skipped {who}: {old} kept, the database role lacks "
                "GRANT UPDATE (pw) ON poppass (see sql/grants.sql)")
        else:
            log(f"auth rehash skipped {who}: {old} kept: {e}")
        return
    if done:  # else the row changed meanwhile (a new password): nothing to say
        log(f"auth rehash {who}: {old} -> {passwords.scheme(passwords.CURRENT)}")
