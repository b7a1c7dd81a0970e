"""`qmail-esmtpd-user`: manage the AUTH users and their daily limits in PostgreSQL.

It works on the same tables and the same password policy as the server, so
an account made here is exactly what AUTH checks.  This module is the
command line: the parser, where to connect, and how errors are told;
values.py checks what the user gives, commands.py does the work.

It has its own connection setting (--db, else $QMAIL_ESMTPD_ADMINDB, else
control/admindb, else libpq's PG* defaults), never the server's: the server's
role (qmaild, sql/grants.sql) may only read `poppass`, and this tool writes it.
"""

import argparse
import os
import signal
import sys

from .. import __version__
from ..auth.db import NO_PRIVILEGE, Database, DatabaseError
from ..config import ControlError, controls_of
from .commands import (
    cmd_add,
    cmd_del,
    cmd_disable,
    cmd_enable,
    cmd_limit,
    cmd_list,
    cmd_passwd,
    cmd_reset,
    cmd_sendas_add,
    cmd_sendas_del,
    cmd_set,
    cmd_show,
    cmd_top,
)
from .rcpt import cmd_rcpt
from .values import (
    Failure,
    address_arg,
    column_value,
    count_arg,
    existing_name,
    limit_or_default,
    new_name,
)

PROG = "qmail-esmtpd-user"
ADMINDB_VARIABLE = b"QMAIL_ESMTPD_ADMINDB"
ADMINDB_FILE = b"admindb"
UNDEFINED_TABLE = "42P01"  # SQLSTATE: no table poppass in that database
EXAMPLE_DB = "'host=/var/run/postgresql dbname=mail'"
WHERE = "--db, $QMAIL_ESMTPD_ADMINDB or control/admindb"


def main(argv: list[str] | None = None) -> int:
    """The program; returns the exit status (0 ok, 1 refused, 2 usage or database)."""
    # `show alice | head -1`: end quietly, as C tools do, when the reader has gone
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = parser().parse_args(argv)
    db = None
    try:
        if args.database:
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


def fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return status


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
        epilog=HELP + "\nThe manual: man 8 qmail-esmtpd-user\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--db", metavar="CONNINFO",
                   help="libpq connection string of a role that may change the tables "
                        "(default: $QMAIL_ESMTPD_ADMINDB, else control/admindb, else "
                        "libpq's PG* defaults)")
    p.set_defaults(database=True)
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

    c = sub.add_parser("rcpt", help="what RCPT TO:<ADDRESS> would get from a client that "
                                    "may not relay, with recipient checking on, and why "
                                    "(control files only, no database)")
    c.add_argument("address")
    c.set_defaults(run=cmd_rcpt, database=False)
    return p
