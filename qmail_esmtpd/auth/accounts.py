"""Who may log in: the `poppass` table checked through the hashing policy.

Independent of SMTP, so every program that logs users in from this table
(SMTP AUTH, a POP3 checkpassword) asks the same question the same way:

    account, status = login(db, name, password, throttle)   # Unavailable on trouble
    ...                       # the caller's own conditions for the account
    upgrade(db, account, password)                           # a deprecated hash

`login()` has the throttle (throttle.py) record the attempt as a failure
first, refusing a client that failed too often, or whose attempt cannot be
recorded, without checking anything; the statement that records it also
reads the account's row, which is then checked, and the record is taken
back for a right password.  The bound on guesses holds whatever the
database can do: no attempt is checked that was not recorded first.
An unknown, inactive or undecodable user costs the same hash work as a
wrong password (passwords.check), so timing does not tell which names
exist, and a right password costs the same database round trips as a wrong
one.  `upgrade()` replaces a deprecated hash when the role may UPDATE pw
(the optional grant in sql/grants.sql), with one log line either way;
callers run it once the login is good, so that an account refused for
other reasons costs no more than a wrong password.
"""

from ..log import log, printable
from . import passwords
from .db import NO_PRIVILEGE, Database, DatabaseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .throttle import Status, Throttle

# id, pw, active, sendlimit first; a caller's own query may read more columns.
# The name is %(user)s: the throttle's statement (throttle.begin_and_read) has
# named parameters of its own.
USER_QUERY = "SELECT id, pw, active, sendlimit FROM poppass WHERE name = %(user)s"
ADDRESSES = "SELECT address FROM sendas WHERE id = %s"
REHASH = "UPDATE poppass SET pw = %s WHERE id = %s AND pw = %s RETURNING id"


class Unavailable(Exception):
    """The database could not answer: try again later (454, 111...)."""


class Account:
    """A verified row of poppass; `sendlimit` None means the site's default;
    `more`: the columns a caller's query reads after the first four;
    `stale`: the stored hash while it is a deprecated one (upgrade())."""

    __slots__ = ("id", "name", "sendlimit", "more", "stale")

    def __init__(self, id: int, name: str, sendlimit: int | None, more: tuple = (),
                 stale: str | None = None) -> None:
        self.id = id
        self.name = name
        self.sendlimit = sendlimit
        self.more = more
        self.stale = stale


def login(db: Database, name: bytes, password: bytes, throttle: "Throttle | None",
          plaintext: bool = False, query: str = USER_QUERY
          ) -> "tuple[Account | None, Status | None]":
    """verify() behind the throttle: (account or None, the throttle's status).

    A refused status means nothing was checked: too many failures from the
    source, or (`unrecorded`) the attempt could not be recorded.
    """
    if throttle is None:
        return verify(db, name, password, plaintext, query), None
    text = decoded_name(name)
    tried = text or name.decode("utf-8", "replace").replace("\0", "?")
    try:
        status = throttle.begin(tried, password, None if text is None else (query, text))
        if status.refused:
            return None, status
        if throttle.active:
            account = checked(text, status.row, password, plaintext)
        else:  # a trusted client: nothing recorded, so the row was not read with it
            account = verify(db, name, password, plaintext, query)
        throttle.settle(account is not None)
    except DatabaseError as e:
        raise Unavailable(str(e)) from None
    return account, status


def verify(db: Database, name: bytes, password: bytes, plaintext: bool = False,
           query: str = USER_QUERY) -> Account | None:
    """The account if `password` is right for an active `name`, else None."""
    text = decoded_name(name)
    rows = []
    if text is not None:
        try:
            rows = db.query(query, {"user": text})
        except DatabaseError as e:
            raise Unavailable(str(e)) from None
    return checked(text, tuple(rows[0]) if rows else None, password, plaintext)


def checked(text: str | None, row: tuple | None, password: bytes,
            plaintext: bool = False) -> Account | None:
    """The account if `password` is right for the active `row` read for the
    name `text` (None: undecodable, so never read), else None; a missing
    row costs the hash work a wrong password does."""
    if text is None:
        passwords.check(password, "")
        return None
    user_id, stored, active, sendlimit, *more = row or (0, "", False, None)
    ok, stale = passwords.check(password, stored, plaintext)
    if not (ok and active):
        return None
    return Account(user_id, text, sendlimit, tuple(more), stored if stale else None)


def upgrade(db: Database, account: Account, password: bytes) -> None:
    """Replace the account's deprecated hash, if it has one; one log line
    either way (the schemes, never a hash)."""
    if account.stale is not None:
        _rehash(db, account.name.encode(), password, account.id, account.stale)
        account.stale = None


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
