"""`qmail-esmtpd-user`: manage the AUTH users and their daily limits in PostgreSQL.

It works on the same tables and the same password policy as the server, so
an account made here is exactly what AUTH checks.  Passwords never come from
the command line (other users can read it in ps): a terminal is asked twice,
anything else gives one line on stdin.  Hashes are never printed, only
their scheme.

It has its own connection setting (--db, else $QMAIL_ESMTPD_ADMINDB, else
control/admindb, else libpq's PG* defaults), never the server's: the server's
role (qmaild, sql/grants.sql) may only read `poppass`, and this tool writes it.
"""

import argparse
import getpass
import os
import signal
import sys

from .auth.accounts import canonical_name, nfc
from .auth.db import NO_PRIVILEGE, Database, DatabaseError
from .config import DEFAULT_CONTROL, ControlError, Controls

PROG = "qmail-esmtpd-user"
ADMINDB_VARIABLE = b"QMAIL_ESMTPD_ADMINDB"
ADMINDB_FILE = b"admindb"
UNDEFINED_TABLE = "42P01"  # SQLSTATE: no table poppass in that database
EXAMPLE_DB = "'host=/var/run/postgresql dbname=mail'"
WHERE = "--db, $QMAIL_ESMTPD_ADMINDB or control/admindb"

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
NAMES = "SELECT name FROM poppass"
# the POP3 columns `set` may change (column names come only from this tuple)
POP_COLUMNS = ("sysuser", "dir", "hostname", "ip")
RESET = """UPDATE sendcounts SET count = 0
WHERE id = (SELECT id FROM poppass WHERE name = %s) AND last_send = current_date"""
# today's count is the stored one only while last_send is today (see limit.py)
TODAY = "CASE WHEN s.last_send = current_date THEN s.count ELSE 0 END"
ACCOUNTS = f"""SELECT p.name, p.active, p.sendlimit, {TODAY}, coalesce(s.total_count, 0), p.pw,
       p.sysuser, p.dir, p.hostname, p.ip
FROM poppass p LEFT JOIN sendcounts s ON s.id = p.id"""
LIST = ACCOUNTS + " ORDER BY p.name"
SHOW = ACCOUNTS + " WHERE p.name = %s"
TOP = f"""SELECT p.name, {TODAY} AS today, s.last_send, s.total_count, p.sendlimit
FROM sendcounts s JOIN poppass p ON p.id = s.id
ORDER BY today DESC, s.total_count DESC, p.name LIMIT %s"""


class Failure(Exception):
    """A refusal the user can act on: one line on stderr and this exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status (0 ok, 1 refused, 2 usage or database)."""
    # `show alice | head -1`: end quietly, as C tools do, when the reader has gone
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = parser().parse_args(argv)
    db = None
    try:
        db = Database(conninfo(args.db))
        return args.run(db, args)
    except Failure as e:
        return fail(str(e), e.status)
    except DatabaseError as e:
        hint = what_to_do(e)
        return fail(f"database: {e}" + (f"\n  {hint}" if hint else ""), 2)
    except ControlError as e:
        return fail(f"unable to read controls: {e}", 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    finally:
        if db is not None:
            db.close()


def what_to_do(e: DatabaseError) -> str:
    """The next step for the errors people meet first (README, database set-up)."""
    text = str(e)
    if e.code == NO_PRIVILEGE:
        return ("this role may not change the tables (the server's role qmaild only reads "
                "poppass): connect as the tables' owner, e.g. run it as the postgres user "
                f"with {EXAMPLE_DB} in {WHERE}")
    if e.code == UNDEFINED_TABLE:
        return ("no poppass table in this database: load sql/schema.sql into it, or name "
                f"the right database (dbname=) in {WHERE}")
    if "Peer authentication failed" in text:
        return ("peer authentication lets a system user in only as the role of the same "
                "name: run the tool as that user (e.g. runuser -u postgres -- "
                f"{PROG} ...), or drop user= from {WHERE}")
    if "role" in text and "does not exist" in text:
        return ("no database role of that name (without user=, libpq uses your login "
                "name): run the tool as the tables' owner, e.g. runuser -u postgres -- "
                f"{PROG} ..., with {EXAMPLE_DB} in {WHERE}")
    if "database" in text and "does not exist" in text:
        return f"create it (README, database set-up) or name another with dbname= in {WHERE}"
    if "password authentication failed" in text or "no password supplied" in text:
        return ("the server wants a password: put it in ~/.pgpass (mode 600) of the user "
                "running the tool, never in the connection string")
    if "No such file or directory" in text or "Connection refused" in text:
        return f"is PostgreSQL running there? host= (socket folder or name) in {WHERE}"
    return ""


HELP = """\
Connection: --db, else $QMAIL_ESMTPD_ADMINDB, else control/admindb (in
$QMAIL_CONTROL), else libpq's PG* defaults.  Never the server's authdb: its
role only reads poppass.  Use a role that owns the tables, e.g. as root:
    runuser -u postgres -- qmail-esmtpd-user --db 'dbname=mail' list

Names are stored in Unicode NFC and compared exactly, case included (as in
the 2002 patch and as AUTH looks them up): `add` refuses a name that equals an
existing one ignoring case, and names with control or invisible characters.

Passwords are read from the terminal (twice), or as one line from stdin (its
LF or CRLF removed); empty passwords and NUL bytes are refused.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage qmail-esmtpd AUTH users (table poppass) and daily limits.",
        epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", metavar="CONNINFO",
                   help="libpq connection string of a role that may change the tables "
                        "(default: $QMAIL_ESMTPD_ADMINDB, else control/admindb, else "
                        "libpq's PG* defaults)")
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

    c = sub.add_parser("set", help="set POP3 columns: sysuser=, dir=, hostname=, ip= "
                                   "(any of them; empty: NULL)")
    c.add_argument("name", type=existing_name)
    c.add_argument("values", type=column_value, nargs="+", metavar="COLUMN=VALUE")
    c.set_defaults(run=cmd_set)

    c = sub.add_parser("top", help="today's heaviest senders: name, today, last send, "
                                   "total, limit")
    c.add_argument("count", type=limit_arg, nargs="?", default=10, metavar="N",
                   help="how many (default 10)")
    c.set_defaults(run=cmd_top)
    return p


def name_arg(text: str, strict: bool) -> str:
    """A user name as AUTH looks it up: UTF-8, in NFC.

    New names must also pass accounts.canonical_name (no control or invisible
    characters, not empty), so that no two names in `list` look alike.
    """
    try:
        text.encode("utf-8")  # argv's undecodable bytes arrive as lone surrogates
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("user name is not UTF-8") from None
    if "\0" in text:
        raise argparse.ArgumentTypeError("user name has a NUL")
    if not strict:
        return nfc(text)
    name = canonical_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(
            "user name is empty, has spaces at an end, or control or invisible characters")
    return name


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


def column_value(text: str) -> tuple[str, str | None]:
    """COLUMN=VALUE for `set`: one of POP_COLUMNS; an empty VALUE means NULL."""
    column, sep, value = text.partition("=")
    if not sep or column not in POP_COLUMNS:
        raise argparse.ArgumentTypeError(
            f"not COLUMN=VALUE with COLUMN one of {', '.join(POP_COLUMNS)}: {text!r}")
    if "\0" in value:
        raise argparse.ArgumentTypeError(f"{column} has a NUL")
    return column, value or None


def conninfo(option: str | None) -> str:
    """--db, else $QMAIL_ESMTPD_ADMINDB, else control/admindb, else "" (libpq's
    PG* variables and .pgpass).  Never $AUTHDB: that role may not write."""
    if option is not None:
        return option
    env = os.environb
    value = env.get(ADMINDB_VARIABLE)
    if value is None:
        value = Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL)).line(ADMINDB_FILE)
    return "" if value is None else value.decode("utf-8", "replace")


def default_limit() -> int:
    """The limit for users without their own: the server's rule exactly."""
    from .auth.postgres import default_send_limit

    env = os.environb
    return default_send_limit(Controls(env.get(b"QMAIL_CONTROL", DEFAULT_CONTROL)), env)


def read_password() -> bytes:
    """A tty asks twice and compares; otherwise one line, minus its LF or CRLF.

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
        password = sys.stdin.buffer.readline()
        if password.endswith(b"\n"):  # one rule for a pipe from any system: LF or CRLF ends it
            password = password[:-2] if password.endswith(b"\r\n") else password[:-1]
    if not password:
        raise Failure("empty password")
    if b"\0" in password:
        raise Failure("the password has a NUL byte, which AUTH cannot carry")
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
    folded = args.name.casefold()
    for (other,) in db.query(NAMES):
        if other.casefold() == folded:
            raise Failure(f"user {other} exists: names that differ only in case are refused "
                          "(AUTH compares names exactly)")
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
    for name, active, limit, today, total, *_ in db.query(LIST):
        state = "active" if active else "inactive"
        shown = "default" if limit is None else str(limit)
        say(f"{name}\t{state}\t{shown}\t{today}\t{total}")
    return 0


def cmd_show(db: Database, args: argparse.Namespace) -> int:
    rows = db.query(SHOW, (args.name,))
    if not rows:
        raise no_such_user(args.name)
    name, active, limit, today, total, pw, *pop = rows[0]
    say(f"name:     {name}")
    say(f"active:   {'yes' if active else 'no (AUTH fails)'}")
    say(f"limit:    {effective_limit(limit)}")
    say(f"today:    {today}")
    say(f"total:    {total}")
    say(f"hash:     {scheme(pw)}")
    senders = [address for (address,) in db.query(SENDAS_LIST, (args.name,))]
    say(f"sendas:   {' '.join(senders) if senders else '-'}")
    for column, value in zip(POP_COLUMNS, pop, strict=True):
        say(f"{column + ':':9} {'-' if value is None else value}")
    return 0


def cmd_top(db: Database, args: argparse.Namespace) -> int:
    """Tab-separated like `list`: name, today, last send, total, limit."""
    rows = db.query(TOP, (args.count,))
    default = default_limit() if any(row[4] is None for row in rows) else 0
    for name, today, last_send, total, limit in rows:
        say(f"{name}\t{today}\t{last_send}\t{total}\t{effective_limit(limit, default)}")
    return 0


def cmd_set(db: Database, args: argparse.Namespace) -> int:
    values = dict(args.values)  # the last of a repeated column wins
    assignments = ", ".join(f"{column} = %s" for column in values)  # names from POP_COLUMNS
    sql = f"UPDATE poppass SET {assignments} WHERE name = %s RETURNING id"
    if not db.query(sql, (*values.values(), args.name)):
        raise no_such_user(args.name)
    say(f"{args.name}: " + ", ".join(f"{column} {'NULL' if value is None else value}"
                                     for column, value in values.items()))
    return 0


def effective_limit(limit: int | None, default: int | None = None) -> str:
    """The account's limit, or the site's default (read once) marked as such."""
    if limit is not None:
        return describe_limit(limit)
    return describe_limit(default_limit() if default is None else default) + " (default)"


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
