"""The commands of `qmail-esmtpd-user`, each beside the SQL it runs.

Every command gets an open Database and the parsed arguments (checked by
values.py), writes its result on stdout and returns the exit status; a
refusal is raised as Failure.  Hashes are never printed, only their scheme.
"""

import argparse
import os
import sys

from ..auth.db import Database
from ..config import controls_of
from .values import POP_COLUMNS, Failure, check_sysuser, read_password

FIND_USER = "SELECT id FROM poppass WHERE name = %s"


def exists(db: Database, name: str) -> bool:
    return bool(db.query(FIND_USER, (name,)))


def no_such_user(name: str) -> Failure:
    return Failure(f"no such user: {name}")


def say(line: str) -> None:
    print(line, flush=True)


def heading(*columns: str) -> None:
    """The column names above tab-separated rows, for a person at a terminal
    only: a pipe (cut, awk, a script) gets the rows alone, as it always did."""
    if sys.stdout.isatty():
        say("\t".join(columns))


LIST_COLUMNS = ("name", "state", "limit", "today", "total")
TOP_COLUMNS = ("name", "today", "last_send", "total", "limit")


def hash_password(password: bytes) -> str:
    from ..auth.passwords import context

    try:
        return context().hash(password)
    except ValueError as e:  # passlib's messages never include the secret
        raise Failure(f"password refused: {e}") from None


ALL_NAMES = "SELECT name FROM poppass"
ADD = """INSERT INTO poppass (name, pw, active, sendlimit) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING RETURNING id"""


def cmd_add(db: Database, args: argparse.Namespace) -> int:
    # Ask before prompting, so a typo'd name does not cost a password entry.
    if exists(db, args.name):
        raise Failure(f"user exists: {args.name}")
    folded = args.name.casefold()
    for (other,) in db.query(ALL_NAMES):
        if other.casefold() == folded:
            raise Failure(f"user {other} exists: names that differ only in case are refused "
                          "(AUTH compares names exactly)")
    db.close()  # no connection idles while someone types
    pw = hash_password(read_password())
    if not db.query(ADD, (args.name, pw, not args.inactive, args.limit)):
        raise Failure(f"user exists: {args.name}")
    say(f"added {args.name}" + (" (inactive)" if args.inactive else ""))
    return 0


PASSWD = "UPDATE poppass SET pw = %s WHERE name = %s RETURNING id"


def cmd_passwd(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.close()
    pw = hash_password(read_password())
    if not db.query(PASSWD, (pw, args.name)):
        raise no_such_user(args.name)
    say(f"password changed for {args.name}")
    return 0


DELETE = "DELETE FROM poppass WHERE name = %s RETURNING id"


def cmd_del(db: Database, args: argparse.Namespace) -> int:
    if not db.query(DELETE, (args.name,)):
        raise no_such_user(args.name)
    say(f"deleted {args.name}")
    return 0


# today's count is the stored one only while last_send is today (see auth/limit.py)
TODAYS_COUNT = "CASE WHEN s.last_send = current_date THEN s.count ELSE 0 END"
ACCOUNTS = f"""SELECT p.name, p.active, p.sendlimit, {TODAYS_COUNT}, coalesce(s.total_count, 0),
       p.pw, p.sysuser, p.dir, p.hostname, p.ip
FROM poppass p LEFT JOIN sendcounts s ON s.id = p.id"""
LIST = ACCOUNTS + " ORDER BY p.name"


def cmd_list(db: Database, args: argparse.Namespace) -> int:
    """Tab-separated, one user a line, for people and for cut/awk alike."""
    rows = db.query(LIST)
    if rows:
        heading(*LIST_COLUMNS)
    for name, active, limit, today, total, *_ in rows:
        state = "active" if active else "inactive"
        shown = "default" if limit is None else str(limit)
        say(f"{name}\t{state}\t{shown}\t{today}\t{total}")
    return 0


SHOW = ACCOUNTS + " WHERE p.name = %s"
SENDAS_LIST = """SELECT address FROM sendas WHERE id = (SELECT id FROM poppass WHERE name = %s)
ORDER BY address"""


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


def scheme(stored: str | None) -> str:
    """The hash's scheme name, never the hash: argon2, bcrypt, des_crypt..."""
    from ..auth.passwords import context

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


def default_limit() -> int:
    """The limit for users without their own: the server's rule exactly."""
    from ..auth.postgres import default_send_limit

    env = os.environb
    return default_send_limit(controls_of(env), env)


def effective_limit(limit: int | None, default: int | None = None) -> str:
    """The account's limit, or the site's default (read once) marked as such."""
    if limit is not None:
        return describe_limit(limit)
    return describe_limit(default_limit() if default is None else default) + " (default)"


def describe_limit(limit: int) -> str:
    return "unlimited" if limit == 0 else str(limit)


TOP = f"""SELECT p.name, {TODAYS_COUNT} AS today, s.last_send, s.total_count, p.sendlimit
FROM sendcounts s JOIN poppass p ON p.id = s.id
ORDER BY today DESC, s.total_count DESC, p.name LIMIT %s"""


def cmd_top(db: Database, args: argparse.Namespace) -> int:
    """Tab-separated like `list`: name, today, last send, total, limit.  With
    no counts at all, a line on stderr says so (stdout stays data only)."""
    rows = db.query(TOP, (args.count,))
    if not rows:
        print("nobody has sent mail through AUTH yet: no send counts", file=sys.stderr,
              flush=True)
    else:
        heading(*TOP_COLUMNS)
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


SET_ACTIVE = "UPDATE poppass SET active = %s WHERE name = %s RETURNING id"


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


SET_LIMIT = "UPDATE poppass SET sendlimit = %s WHERE name = %s RETURNING id"


def cmd_limit(db: Database, args: argparse.Namespace) -> int:
    if not db.query(SET_LIMIT, (args.limit, args.name)):
        raise no_such_user(args.name)
    shown = "default" if args.limit is None else describe_limit(args.limit)
    say(f"limit for {args.name}: {shown}")
    return 0


SENDAS_ADD = """INSERT INTO sendas (id, address) SELECT id, %s FROM poppass WHERE name = %s
ON CONFLICT DO NOTHING RETURNING id"""


def cmd_sendas_add(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.query(SENDAS_ADD, (args.address, args.name))
    say(f"{args.name} may send as {args.address}")
    return 0


SENDAS_DEL = """DELETE FROM sendas WHERE address = %s
AND id = (SELECT id FROM poppass WHERE name = %s) RETURNING id"""


def cmd_sendas_del(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    if not db.query(SENDAS_DEL, (args.address, args.name)):
        raise Failure(f"{args.name} has no address {args.address}")
    say(f"{args.name} may no longer send as {args.address}")
    return 0


RESET = """UPDATE sendcounts SET count = 0
WHERE id = (SELECT id FROM poppass WHERE name = %s) AND last_send = current_date"""


def cmd_reset(db: Database, args: argparse.Namespace) -> int:
    if not exists(db, args.name):
        raise no_such_user(args.name)
    db.query(RESET, (args.name,))
    say(f"reset today's count for {args.name}")
    return 0
