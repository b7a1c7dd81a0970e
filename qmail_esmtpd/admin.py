"""`qmail-esmtpd-user`: manage the AUTH users and their daily limits in PostgreSQL.

It works on the same tables and the same password policy as the server, so
an account made here is exactly what AUTH checks.  Passwords never come from
the command line (other users can read it in ps): a terminal is asked twice,
anything else gives one line on stdin.  Hashes are never printed, only
their scheme.  It connects like the server (`$AUTHDB`, else control/authdb)
unless `--db` says otherwise, but needs a role that may write `poppass`:
the server's own role (see sql/grants.sql) only reads it.
"""

import argparse
import getpass
import os
import sys

from .auth.db import NO_PRIVILEGE, Database, DatabaseError
from .config import DEFAULT_CONTROL, ControlError, Controls, authdb_conninfo

PROG = "qmail-esmtpd-user"

FIND = "SELECT id FROM poppass WHERE name = %s"
ADD = """INSERT INTO poppass (name, pw, active, sendlimit) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING RETURNING id"""
PASSWD = "UPDATE poppass SET pw = %s WHERE name = %s RETURNING id"
DELETE = "DELETE FROM poppass WHERE name = %s RETURNING id"
SENDAS_ADD = """INSERT INTO sendas (id, address) SELECT id, %s FROM poppass WHERE name = %s
ON CONFLICT DO NOTHING RETURNING id"""
SENDAS_DEL = """DELETE FROM sendas WHERE address = %s
AND id = (SELECT id FROM poppass WHERE name = %s) RETURNING id"""
SENDAS_LIST = """SELECT address FROM sendas WHERE id = (SELECT id FROM poppass WHERE name = %s)
ORDER BY address"""
SET_LIMIT = "UPDATE poppass SET sendlimit = %s WHERE name = %s RETURNING id"
RESET = """UPDATE sendcounts SET count = 0
WHERE id = (SELECT id FROM poppass WHERE name = %s) AND last_send = current_date"""
# today's count is the stored one only while last_send is today (see limit.py)
ACCOUNTS = """SELECT p.name, p.active, p.sendlimit,
       CASE WHEN s.last_send = current_date THEN s.count ELSE 0 END,
       coalesce(s.total_count, 0), p.pw
FROM poppass p LEFT JOIN sendcounts s ON s.id = p.id"""
LIST = ACCOUNTS + " ORDER BY p.name"
SHOW = ACCOUNTS + " WHERE p.name = %s"


class Failure(Exception):
    """A refusal the user can act on: one line on stderr and this exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status (0 ok, 1 refused, 2 usage or database)."""
    args = parser().parse_args(argv)
    db = None
    try:
        db = Database(conninfo(args.db))
        return args.run(db, args)
    except Failure as e:
        return fail(str(e), e.status)
    except DatabaseError as e:
        hint = ""
        if e.code == NO_PRIVILEGE:
            hint = " (connect as the tables' owner, e.g. --db 'dbname=mail user=postgres')"
        return fail(f"database: {e}{hint}", 2)
    except ControlError as e:
        return fail(f"unable to read controls: {e}", 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    finally:
        if db is not None:
            db.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage qmail-esmtpd AUTH users (table poppass) and daily limits.",
        epilog="Passwords are read from the terminal (twice), or as one line from stdin.")
    p.add_argument("--db", metavar="CONNINFO",
                   help="libpq connection string (default: $AUTHDB, else control/authdb, "
                        "else libpq's PG* defaults)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("add", help="create a user (password from tty or stdin)")
    c.add_argument("name", type=new_name)
    c.add_argument("--limit", type=limit_arg, metavar="N",
                   help="messages a day (0: no limit; default: control/sendlimit)")
    c.add_argument("--inactive", action="store_true", help="create the account disabled")
    c.set_defaults(run=cmd_add)

    for command, run, text in (
        ("passwd", cmd_passwd, "set a new password (from tty or stdin)"),
        ("del", cmd_del, "delete a user and its send counts"),
        ("show", cmd_show, "one user's counts, limit, state and hash scheme"),
        ("reset", cmd_reset, "set today's count to 0 (the total stays)"),
    ):
        c = sub.add_parser(command, help=text)
        c.add_argument("name", type=existing_name)
        c.set_defaults(run=run)

    c = sub.add_parser("list", help="all users: name, state, limit, today, total")
    c.set_defaults(run=cmd_list)

    for command, run, text in (
        ("sendas-add", cmd_sendas_add, "let a user send as ADDRESS (with control/senderbinding)"),
        ("sendas-del", cmd_sendas_del, "take ADDRESS back from a user"),
    ):
        c = sub.add_parser(command, help=text)
        c.add_argument("name", type=existing_name)
        c.add_argument("address", type=address_arg)
        c.set_defaults(run=run)

    c = sub.add_parser("limit", help="set a user's daily limit (N, 0: none, or default)")
    c.add_argument("name", type=existing_name)
    c.add_argument("limit", type=limit_or_default, metavar="N|default")
    c.set_defaults(run=cmd_limit)
    return p


def name_arg(text: str, strict: bool) -> str:
    """A user name as AUTH sees it: UTF-8 (the server decodes it so).

    New names are also refused when empty or holding control characters:
    no client can send those usefully, and they would garble `list`.
    """
    try:
        text.encode("utf-8")  # argv's undecodable bytes arrive as lone surrogates
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("user name is not UTF-8") from None
    if strict and (not text or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)):
        raise argparse.ArgumentTypeError("user name is empty or has control characters")
    if "\0" in text:
        raise argparse.ArgumentTypeError("user name has a NUL")
    return text


def address_arg(text: str) -> str:
    """An envelope sender as the server compares it: lower case, no blanks."""
    address = name_arg(text, strict=True).lower()
    if " " in address or "@" not in address:
        raise argparse.ArgumentTypeError("an address is local@domain, without blanks")
    return address


def new_name(text: str) -> str:
    return name_arg(text, strict=True)


def existing_name(text: str) -> str:
    return name_arg(text, strict=False)


def limit_arg(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of messages: {text!r}")
    value = int(text)
    if value > 2**31 - 1:  # sendlimit is an integer column
        raise argparse.ArgumentTypeError(f"too large: {text}")
    return value


def limit_or_default(text: str) -> int | None:
    return None if text == "default" else limit_arg(text)


def conninfo(option: str | None) -> str:
    """--db, else the server's own setting, else "" (libpq's PG* variables, .pgpass)."""
    if option is not None:
        return option
    env = os.environb
    found = authdb_conninfo(env, Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL)))
    return found if found is not None else ""


def default_limit() -> int:
    """The limit for users without their own: the server's rule exactly."""
    from .auth.postgres import default_send_limit

    env = os.environb
    return default_send_limit(Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL)), env)


def read_password() -> bytes:
    """A tty asks twice and compares; otherwise one line, minus its newline.

    Bytes, because the server checks the bytes the client sent: a UTF-8
    password hashed here matches the same password typed into a mail client.
    """
    if sys.stdin.isatty():
        try:
            first = getpass.getpass("New password: ")
            second = getpass.getpass("Retype new password: ")
        except EOFError:
            raise Failure("no password given") from None
        if first != second:
            raise Failure("passwords do not match")
        password = first.encode("utf-8", "surrogateescape")
    else:
        line = sys.stdin.buffer.readline()
        password = line[:-1] if line.endswith(b"\n") else line
    if not password:
        raise Failure("empty password")
    return password


def hash_password(password: bytes) -> str:
    from .auth.passwords import context

    try:
        return context().hash(password)
    except ValueError as e:  # passlib's messages never include the secret
        raise Failure(f"password refused: {e}") from None


def exists(db: Database, name: str) -> bool:
    return bool(db.query(FIND, (name,)))


def cmd_add(db: Database, args: argparse.Namespace) -> int:
    # Ask before prompting, so a typo'd name does not cost a password entry.
    if exists(db, args.name):
        raise Failure(f"user exists: {args.name}")
    db.close()  # no connection idles while someone types
    pw = hash_password(read_password())
    if not db.query(ADD, (args.name, pw, not args.inactive, args.limit)):
        raise Failure(f"user exists: {args.name}")
    say(f"added {args.name}" + (" (inactive)" if args.inactive else ""))
    return 0


def cmd_passwd(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.close()
    pw = hash_password(read_password())
    if not db.query(PASSWD, (pw, args.name)):
        raise no_such_user(args.name)
    say(f"password changed for {args.name}")
    return 0


def cmd_del(db: Database, args: argparse.Namespace) -> int:
    if not db.query(DELETE, (args.name,)):
        raise no_such_user(args.name)
    say(f"deleted {args.name}")
    return 0


def cmd_list(db: Database, args: argparse.Namespace) -> int:
    """Tab-separated, one user a line, for people and for cut/awk alike."""
    for name, active, limit, today, total, _pw in db.query(LIST):
        state = "active" if active else "inactive"
        shown = "default" if limit is None else str(limit)
        say(f"{name}\t{state}\t{shown}\t{today}\t{total}")
    return 0


def cmd_show(db: Database, args: argparse.Namespace) -> int:
    rows = db.query(SHOW, (args.name,))
    if not rows:
        raise no_such_user(args.name)
    name, active, limit, today, total, pw = rows[0]
    if limit is None:
        effective = describe_limit(default_limit()) + " (default)"
    else:
        effective = describe_limit(limit)
    say(f"name:    {name}")
    say(f"active:  {'yes' if active else 'no (AUTH fails)'}")
    say(f"limit:   {effective}")
    say(f"today:   {today}")
    say(f"total:   {total}")
    say(f"hash:    {scheme(pw)}")
    senders = [address for (address,) in db.query(SENDAS_LIST, (args.name,))]
    say(f"sendas:  {' '.join(senders) if senders else '-'}")
    return 0


def describe_limit(limit: int) -> str:
    return "unlimited" if limit == 0 else str(limit)


def scheme(stored: str | None) -> str:
    """The hash's scheme name, never the hash: argon2, bcrypt, des_crypt..."""
    from .auth.passwords import context

    if not stored:
        return "none (AUTH fails)"
    ctx = context()
    try:
        name = ctx.identify(stored)
    except (ValueError, TypeError):
        name = None
    if name is None:
        return "unknown or plaintext (see control/authplaintext)"
    if ctx.needs_update(stored):
        return f"{name} (deprecated: replaced at the next login if the grant allows)"
    return name


def cmd_limit(db: Database, args: argparse.Namespace) -> int:
    if not db.query(SET_LIMIT, (args.limit, args.name)):
        raise no_such_user(args.name)
    shown = "default" if args.limit is None else describe_limit(args.limit)
    say(f"limit for {args.name}: {shown}")
    return 0


def cmd_sendas_add(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.query(SENDAS_ADD, (args.address, args.name))
    say(f"{args.name} may send as {args.address}")
    return 0


def cmd_sendas_del(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    if not db.query(SENDAS_DEL, (args.address, args.name)):
        raise Failure(f"{args.name} has no address {args.address}")
    say(f"{args.name} may no longer send as {args.address}")
    return 0


def cmd_reset(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.query(RESET, (args.name,))
    say(f"reset today's count for {args.name}")
    return 0


def no_such_user(name: str) -> Failure:
    return Failure(f"no such user: {name}")


def say(line: str) -> None:
    print(line, flush=True)


def fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
