"""`qmail-esmtpd-user`: manage the AUTH users and their daily limits in PostgreSQL.

It works on the same tables and the same password policy as the server, so
an account made here is exactly what AUTH checks.  Passwords never come from
the command line (other users can read it in ps): a terminal is asked twice,
anything else gives one line on stdin.  Hashes are never printed, only
their scheme.

Names and passwords are bounded (MAX_NAME_BYTES, MAX_PASSWORD_BYTES) so
that an account made here can log in on every path: SMTP AUTH, POP3 through
the checkpassword interface (at most 512 bytes of name, password and
timestamp) and the failure throttle (which keeps 256 characters of a name).
The POP3 columns `set` writes are checked the way the POP3 program reads
them, so that no row is stored that could never log in.

It has its own connection setting (--db, else $QMAIL_ESMTPD_ADMINDB, else
control/admindb, else libpq's PG* defaults), never the server's: the server's
role (qmaild, sql/grants.sql) may only read `poppass`, and this tool writes it.
"""

import argparse
import getpass
import ipaddress
import os
import pwd
import re
import signal
import sys

from .auth.accounts import canonical_name, nfc
from .auth.db import NO_PRIVILEGE, Database, DatabaseError
from .config import ControlError, controls_of

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
SET_ACTIVE = "UPDATE poppass SET active = %s WHERE name = %s RETURNING id"
NAMES = "SELECT name FROM poppass"
# the POP3 columns `set` may change (column names come only from this tuple)
POP_COLUMNS = ("sysuser", "dir", "hostname", "ip")

# A name of MAX_NAME_BYTES and a password of MAX_PASSWORD_BYTES, with three
# NULs and qmail-popup's timestamp (<pid.time@host>, 85 bytes with a 64-byte
# host name), fit the 512 bytes a checkpassword program reads; the name stays
# under the throttle's 256-character cut; AUTH PLAIN carries both in a
# 700-byte line even with the name repeated as authorization identity.
MAX_NAME_BYTES = 128
MAX_PASSWORD_BYTES = 256
MAX_ADDRESS_BYTES = 254  # RFC 5321's 256-octet path, without its < >
# POSIX's portable user names (useradd's default rule), at most 32 characters
SYSUSER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?")
HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
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
existing one ignoring case, names with control or invisible characters, and
names over 128 bytes of UTF-8.

Passwords are read from the terminal (twice), or as exactly one line from
stdin (its LF or CRLF removed); empty passwords, NUL bytes, a second line and
passwords over 256 bytes are refused (POP3 logins carry at most 512 bytes of
name, password and timestamp).

`disable NAME` deactivates an account (AUTH and POP3 logins fail, sending
stops, nothing is deleted); `enable NAME` reactivates it.  `set` checks the
POP3 columns as the POP3 program reads them: sysuser a user of this host,
never root (--force accepts one only the POP3 host knows), dir an absolute
path, hostname a host name, ip an IP address (stored in canonical form).
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
    c.add_argument("--limit", type=limit_or_default, metavar="N",
                   help="recipients a day (0: no limit; default: control/sendlimit)")
    c.add_argument("--inactive", action="store_true", help="create the account disabled")
    c.set_defaults(run=cmd_add)

    for command, run, text in (
        ("passwd", cmd_passwd, "set a new password (from tty or stdin)"),
        ("del", cmd_del, "delete a user and its send counts"),
        ("show", cmd_show, "one user's counts, limit, state and hash scheme"),
        ("reset", cmd_reset, "set today's count to 0 (the total stays)"),
        ("disable", cmd_disable, "deactivate a user: AUTH and POP3 logins fail, sending "
                                 "stops; nothing is deleted"),
        ("enable", cmd_enable, "reactivate a disabled user"),
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
    c.add_argument("--force", action="store_true",
                   help="accept a sysuser unknown on this host (it must exist on the "
                        "POP3 host that serves the account)")
    c.set_defaults(run=cmd_set)

    c = sub.add_parser("top", help="today's heaviest senders: name, today, last send, "
                                   "total, limit")
    c.add_argument("count", type=count_arg, nargs="?", default=10, metavar="N",
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
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise argparse.ArgumentTypeError(
            f"user name longer than {MAX_NAME_BYTES} bytes (UTF-8): POP3 logins carry at "
            "most 512 bytes of name, password and timestamp; choose a shorter name")
    return name


def address_arg(text: str) -> str:
    """An envelope sender as the server compares it (MAIL FROM's address without
    its < >, lower case): local@domain, no blanks, no invisible characters."""
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]  # as written in MAIL FROM:<...>
    if not text:
        raise argparse.ArgumentTypeError(
            "the address is empty: the null sender <> needs no sendas, it is always accepted")
    address = canonical_name(text)
    if address is None or " " in address:
        raise argparse.ArgumentTypeError(
            f"the address has blanks, control or invisible characters: {text!r}")
    local, _, domain = address.rpartition("@")
    labels = domain.split(".")
    if not local or not domain or "<" in address or ">" in address or not all(labels):
        raise argparse.ArgumentTypeError(
            f"not an address: {text!r} (want local@domain, e.g. alias@example.org)")
    if len(address.encode("utf-8")) > MAX_ADDRESS_BYTES:
        raise argparse.ArgumentTypeError(
            f"address longer than {MAX_ADDRESS_BYTES} bytes, more than SMTP allows")
    return address.lower()


def new_name(text: str) -> str:
    return name_arg(text, strict=True)


def existing_name(text: str) -> str:
    return name_arg(text, strict=False)


def limit_or_default(text: str) -> int | None:
    """A daily limit: recipients (messages with control/sendlimitmessages), 0 for
    none, or `default` in any case for the site's."""
    if text.lower() == "default":
        return None
    if not text.isascii() or not text.isdigit() or int(text) > 2**31 - 1:  # an integer column
        raise argparse.ArgumentTypeError(
            f"not a daily limit: {text!r} (want a whole number of recipients up to "
            "2147483647, 0 for no limit, or default)")
    return int(text)


def count_arg(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"not a number of users to list: {text!r}")
    return int(text)


def column_value(text: str) -> tuple[str, str | None]:
    """COLUMN=VALUE for `set`: one of POP_COLUMNS, its value as the POP3 program
    can use it; an empty VALUE means NULL."""
    column, sep, value = text.partition("=")
    if column == "active":
        raise argparse.ArgumentTypeError(
            "active is not set here: `disable NAME` deactivates an account, `enable NAME` "
            "reactivates it")
    if not sep or column not in POP_COLUMNS:
        raise argparse.ArgumentTypeError(
            f"not COLUMN=VALUE with COLUMN one of {', '.join(POP_COLUMNS)}: {text!r}")
    if not value:
        return column, None
    if not value.isprintable():
        raise argparse.ArgumentTypeError(f"{column} has control or invisible characters")
    return column, POP_CHECKS[column](value)


def sysuser_value(value: str) -> str:
    """A system user name; whether this host knows it is cmd_set's question."""
    if not SYSUSER.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"sysuser is not a system user name: {value!r} (letters, digits, _ . -)")
    return value


def dir_value(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"dir must be an absolute path, e.g. /home/vmail/alice, not {value!r}: "
            "the POP3 session starts there")
    return value


def hostname_value(value: str) -> str:
    """A host name as control/pophost names the POP3 host (compared ignoring case)."""
    labels = value.split(".")
    if len(value) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(
            f"hostname is not a host name: {value!r} (want e.g. pop.example.org, as "
            "control/pophost names the POP3 host)")
    return value


def ip_value(value: str) -> str:
    """An IPv4 or IPv6 address in its canonical text, the form to write in control/popip."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ip is not an IP address: {value!r} (want e.g. 192.0.2.1, as control/popip "
            "names the POP3 host)") from None


POP_CHECKS = {"sysuser": sysuser_value, "dir": dir_value, "hostname": hostname_value,
              "ip": ip_value}


def conninfo(option: str | None) -> str:
    """--db, else $QMAIL_ESMTPD_ADMINDB, else control/admindb, else "" (libpq's
    PG* variables and .pgpass).  Never $AUTHDB: that role may not write."""
    if option is not None:
        return option
    env = os.environb
    value = env.get(ADMINDB_VARIABLE)
    if value is None:
        value = controls_of(env).line(ADMINDB_FILE)
    return "" if value is None else value.decode("utf-8", "replace")


def default_limit() -> int:
    """The limit for users without their own: the server's rule exactly."""
    from .auth.postgres import default_send_limit

    env = os.environb
    return default_send_limit(controls_of(env), env)


def read_password() -> bytes:
    """A tty asks twice and compares; otherwise exactly one line, minus its LF or CRLF.

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
        password = piped_password(sys.stdin.buffer.read(MAX_PASSWORD_BYTES + 3))
    if not password:
        raise Failure("empty password")
    if b"\0" in password:
        raise Failure("the password has a NUL byte, which AUTH cannot carry")
    if len(password) > MAX_PASSWORD_BYTES:
        raise Failure(f"password longer than {MAX_PASSWORD_BYTES} bytes: POP3 logins carry at "
                      "most 512 bytes of name, password and timestamp; choose a shorter one")
    return password


def piped_password(data: bytes) -> bytes:
    """The one line of `data` without its LF or CRLF (one rule for a pipe from
    any system); a second line is refused, not silently dropped."""
    line, newline, rest = data.partition(b"\n")
    if rest:
        raise Failure("stdin has more than one line: give the password alone, on one line")
    if newline and line.endswith(b"\r"):
        line = line[:-1]
    return line


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
    say(f"active:   {'yes' if active else 'no (disabled: logins fail; enable undoes it)'}")
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
    """Tab-separated like `list`: name, today, last send, total, limit.  With
    no counts at all, a line on stderr says so (stdout stays data only)."""
    rows = db.query(TOP, (args.count,))
    if not rows:
        print("nobody has sent mail through AUTH yet: no send counts", file=sys.stderr,
              flush=True)
    default = default_limit() if any(row[4] is None for row in rows) else 0
    for name, today, last_send, total, limit in rows:
        say(f"{name}\t{today}\t{last_send}\t{total}\t{effective_limit(limit, default)}")
    return 0


def cmd_set(db: Database, args: argparse.Namespace) -> int:
    values = dict(args.values)  # the last of a repeated column wins
    if values.get("sysuser"):
        check_sysuser(values["sysuser"], args.force)
    assignments = ", ".join(f"{column} = %s" for column in values)  # names from POP_COLUMNS
    sql = f"UPDATE poppass SET {assignments} WHERE name = %s RETURNING id"
    if not db.query(sql, (*values.values(), args.name)):
        raise no_such_user(args.name)
    say(f"{args.name}: " + ", ".join(f"{column} {'NULL' if value is None else value}"
                                     for column, value in values.items()))
    return 0


def check_sysuser(name: str, force: bool) -> None:
    """Refuse what the POP3 program refuses at login: root, and (without
    --force, for tables several hosts share) a user this host does not know."""
    try:
        uid: int | None = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if name == "root" or uid == 0:
        raise Failure(f"sysuser {name} is root (uid 0): POP3 sessions never run as root; "
                      "choose an unprivileged user, e.g. vmail")
    if uid is None and not force:
        raise Failure(f"sysuser {name} is not a user of this host: create it (useradd), or "
                      "add --force if the POP3 host that serves this account has it")


def set_active(db: Database, name: str, active: bool) -> None:
    if not db.query(SET_ACTIVE, (active, name)):
        raise no_such_user(name)


def cmd_disable(db: Database, args: argparse.Namespace) -> int:
    set_active(db, args.name, False)
    say(f"disabled {args.name}: AUTH and POP3 logins fail, sending stops "
        f"(enable {args.name} undoes it)")
    return 0


def cmd_enable(db: Database, args: argparse.Namespace) -> int:
    set_active(db, args.name, True)
    say(f"enabled {args.name}")
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
