"""`qmail-esmtpd-user` against a real PostgreSQL, run as the installed console script."""

import base64
import os
import pwd
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from qmail_esmtpd.auth import passwords

from harness.files import write_launcher
from harness.paths import ROOT
from harness.postgres import Database
from harness.processes import run_with_fd3
from harness.system_users import host_has

SCRIPT = ROOT / ".venv" / "bin" / "qmail-esmtpd-user"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "qmail_esmtpd.admin"]
PASSWORD = "Tr0ub4dor&3-unique-secret"
SQL_NAME = "o'brien\"; DROP TABLE poppass;--"


class Admin:
    """Runs the script with a clean environment: only what each test gives it."""

    def __init__(self, db: Database, control: Path) -> None:
        self.db = db
        self.sql = db.sql
        self.control = control
        self.outputs: list[str] = []

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")
               and k not in ("AUTHDB", "SENDLIMIT", "QMAIL_ESMTPD_ADMINDB")}
        env["QMAIL_CONTROL"] = str(self.control)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, stdin: str = "", env: dict | None = None,
                 db: bool = True) -> subprocess.CompletedProcess:
        argv = [*COMMAND, *(["--db", self.db.dsn()] if db else []), *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              env=self.env(env), timeout=60)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def user(self, name: str) -> tuple | None:
        rows = self.sql("SELECT id, pw, active, sendlimit FROM poppass WHERE name = %s",
                          (name,))
        return rows[0] if rows else None


@pytest.fixture
def admin(pg, tmp_path: Path) -> Admin:
    control = tmp_path / "control"
    control.mkdir()
    return Admin(pg.new_database(), control)


def one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    """One line of error, and at most one indented line of what to do."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  ")), proc.stderr
    assert lines[0].startswith("qmail-esmtpd-user: ")
    assert text in lines[0]
    assert "Traceback" not in proc.stderr


def test_add_hashes_stdin_password_with_argon2(admin: Admin) -> None:
    proc = admin("add", "alice", stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "added alice\n"
    user_id, pw, active, limit = admin.user("alice")
    ctx = passwords.context()
    assert ctx.identify(pw) == "argon2"
    assert pw.startswith("$argon2id$")
    assert ctx.verify(PASSWORD, pw)
    assert not ctx.verify(PASSWORD + "\n", pw)
    assert (active, limit) == (True, None)
    assert admin.sql("SELECT count(*) FROM sendcounts") == [(0,)]


def test_add_with_limit_inactive_and_only_the_newline_stripped(admin: Admin) -> None:
    proc = admin("add", "bob", "--limit", "7", "--inactive", stdin=" spaced pw \t\n")
    assert proc.returncode == 0, proc.stderr
    _, pw, active, limit = admin.user("bob")
    assert (active, limit) == (False, 7)
    assert passwords.context().verify(" spaced pw \t", pw)


def test_add_without_trailing_newline_and_utf8(admin: Admin) -> None:
    assert admin("add", "carol", stdin="pässwörd").returncode == 0
    assert passwords.context().verify("pässwörd".encode(), admin.user("carol")[1])


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_password_is_refused(admin: Admin, stdin: str) -> None:
    proc = admin("add", "alice", stdin=stdin)
    assert proc.returncode == 1
    one_line_error(proc, "empty password")
    assert admin.user("alice") is None


def test_add_existing_user(admin: Admin) -> None:
    assert admin("add", "alice", stdin="first\n").returncode == 0
    before = admin.user("alice")
    proc = admin("add", "alice", stdin="second\n")
    assert proc.returncode == 1
    one_line_error(proc, "user exists: alice")
    assert admin.user("alice") == before


@pytest.mark.parametrize("name", ["", "bad\nname", "tab\tname"])
def test_add_refuses_unusable_names(admin: Admin, name: str) -> None:
    proc = admin("add", name, stdin="pw\n")
    assert proc.returncode == 2
    assert "user name" in proc.stderr
    assert admin.sql("SELECT count(*) FROM poppass") == [(0,)]


def test_passwd_changes_the_hash(admin: Admin) -> None:
    assert admin("add", "alice", stdin="old password\n").returncode == 0
    user_id, old, _, _ = admin.user("alice")
    proc = admin("passwd", "alice", stdin="new password\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "password changed for alice\n"
    same_id, new, _, _ = admin.user("alice")
    assert same_id == user_id and new != old
    ctx = passwords.context()
    assert ctx.verify("new password", new)
    assert not ctx.verify("old password", new)


def test_passwd_unknown_user(admin: Admin) -> None:
    proc = admin("passwd", "nobody", stdin="pw\n")
    assert proc.returncode == 1
    one_line_error(proc, "no such user: nobody")
    assert admin.sql("SELECT count(*) FROM poppass") == [(0,)]


def test_passwd_empty_keeps_the_old_hash(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    before = admin.user("alice")
    assert admin("passwd", "alice", stdin="\n").returncode == 1
    assert admin.user("alice") == before


def test_del_removes_user_and_sendcounts(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    assert admin("add", "bob", stdin="pw\n").returncode == 0
    alice_id = admin.user("alice")[0]
    admin.sql("INSERT INTO sendcounts (id, count, total_count) VALUES (%s, 3, 9)", (alice_id,))
    proc = admin("del", "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "deleted alice\n"
    assert admin.user("alice") is None
    assert admin.user("bob") is not None
    assert admin.sql("SELECT count(*) FROM sendcounts") == [(0,)]


def test_del_unknown_user(admin: Admin) -> None:
    proc = admin("del", "nobody")
    assert proc.returncode == 1
    one_line_error(proc, "no such user: nobody")


def make_accounts(admin: Admin) -> None:
    """alice: counted today; bob: counted yesterday, no limit; carol: never sent, inactive."""
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    assert admin("add", "bob", "--limit", "0", stdin="pw\n").returncode == 0
    assert admin("add", "carol", "--inactive", "--limit", "5", stdin="pw\n").returncode == 0
    admin.sql("INSERT INTO sendcounts (id, last_send, count, total_count) "
                "SELECT id, current_date, 3, 10 FROM poppass WHERE name = 'alice'")
    admin.sql("INSERT INTO sendcounts (id, last_send, count, total_count) "
                "SELECT id, current_date - 1, 5, 7 FROM poppass WHERE name = 'bob'")


def test_list(admin: Admin) -> None:
    make_accounts(admin)
    proc = admin("list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "alice\tactive\tdefault\t3\t10",
        "bob\tactive\t0\t0\t7",
        "carol\tinactive\t5\t0\t0",
    ]


def on_a_terminal(admin: Admin, *args: str) -> list[str]:
    """What the command shows when its standard output is a terminal (a pty)."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*COMMAND, "--db", admin.db.dsn(), *args], stdout=follower,
                              stderr=subprocess.PIPE, env=admin.env(), timeout=60)
        os.close(follower)
        follower = -1
        assert proc.returncode == 0, proc.stderr
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the pty's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return shown.decode().replace("\r\n", "\n").splitlines()


def test_list_and_top_name_their_columns_on_a_terminal_only(admin: Admin) -> None:
    """A person sees the column names; a pipe gets the rows alone (test_list)."""
    make_accounts(admin)
    shown = on_a_terminal(admin, "list")
    assert shown[0] == "name\tstate\tlimit\ttoday\ttotal"
    assert shown[1:] == admin("list").stdout.splitlines() and len(shown) == 4
    shown = on_a_terminal(admin, "top")
    assert shown[0] == "name\ttoday\tlast_send\ttotal\tlimit"
    assert shown[1:] == admin("top").stdout.splitlines() and len(shown) == 3


def test_list_empty(admin: Admin) -> None:
    proc = admin("list")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def fields(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_show(admin: Admin) -> None:
    make_accounts(admin)
    alice = fields(admin("show", "alice").stdout)
    assert alice == {"name": "alice", "active": "yes", "limit": "50 (default)",
                     "today": "3", "total": "10", "hash": "argon2", "sendas": "-",
                     "sysuser": "-", "dir": "-", "hostname": "-", "ip": "-"}
    bob = fields(admin("show", "bob").stdout)
    assert (bob["limit"], bob["today"], bob["total"]) == ("unlimited", "0", "7")
    carol = fields(admin("show", "carol").stdout)
    assert (carol["active"][:2], carol["limit"], carol["today"], carol["total"]) == (
        "no", "5", "0", "0")


def test_show_default_limit_from_control_and_environment(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    (admin.control / "sendlimit").write_text("20\n")
    assert fields(admin("show", "alice").stdout)["limit"] == "20 (default)"
    shown = fields(admin("show", "alice", env={"SENDLIMIT": "7"}).stdout)
    assert shown["limit"] == "7 (default)"
    (admin.control / "sendlimit").write_text("0\n")
    assert fields(admin("show", "alice").stdout)["limit"] == "unlimited (default)"


def test_show_names_an_old_scheme_never_the_hash(admin: Admin) -> None:
    from passlib.hash import des_crypt

    stored = des_crypt.hash("secret")
    admin.sql("INSERT INTO poppass (name, pw) VALUES ('old', %s)", (stored,))
    proc = admin("show", "old")
    assert proc.returncode == 0, proc.stderr
    assert fields(proc.stdout)["hash"].startswith("des_crypt (deprecated")
    assert stored not in proc.stdout


def test_show_unknown_user(admin: Admin) -> None:
    proc = admin("show", "nobody")
    assert proc.returncode == 1
    one_line_error(proc, "no such user: nobody")


def test_limit_number_and_default(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("limit", "alice", "12")
    assert (proc.returncode, proc.stdout) == (0, "limit for alice: 12\n")
    assert admin.user("alice")[3] == 12
    assert admin("limit", "alice", "0").returncode == 0
    assert admin.user("alice")[3] == 0
    proc = admin("limit", "alice", "default")
    assert (proc.returncode, proc.stdout) == (0, "limit for alice: default\n")
    assert admin.user("alice")[3] is None


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "99999999999"])
def test_limit_bad_value_is_usage_error(admin: Admin, value: str) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("limit", "alice", value)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    # the limit counts recipients (messages only with control/sendlimitmessages)
    assert f"not a daily limit: '{value}'" in proc.stderr and "recipients" in proc.stderr
    assert "number of messages" not in proc.stderr
    assert admin.user("alice")[3] is None


@pytest.mark.parametrize("word", ["default", "DEFAULT", "Default"])
def test_default_in_any_case(admin: Admin, word: str) -> None:
    assert admin("add", "alice", "--limit", "3", stdin="pw\n").returncode == 0
    proc = admin("limit", "alice", word)
    assert (proc.returncode, proc.stdout) == (0, "limit for alice: default\n"), proc.stderr
    assert admin.user("alice")[3] is None
    assert admin("add", "bob", "--limit", word, stdin="pw\n").returncode == 0
    assert admin.user("bob")[3] is None


def test_limit_unknown_user(admin: Admin) -> None:
    proc = admin("limit", "nobody", "5")
    assert proc.returncode == 1
    one_line_error(proc, "no such user: nobody")


def test_reset_keeps_total(admin: Admin) -> None:
    make_accounts(admin)
    proc = admin("reset", "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "reset today's count for alice\n"
    rows = admin.sql("SELECT s.count, s.total_count, s.last_send = current_date "
                       "FROM sendcounts s JOIN poppass p USING (id) WHERE p.name = 'alice'")
    assert rows == [(0, 10, True)]
    assert admin("reset", "carol").returncode == 0  # no sendcounts row: nothing to reset
    assert admin.sql("SELECT count(*) FROM sendcounts") == [(2,)]
    proc = admin("reset", "nobody")
    assert proc.returncode == 1
    one_line_error(proc, "no such user: nobody")


def test_database_unreachable(admin: Admin, tmp_path: Path) -> None:
    empty = tmp_path / "nosocket"
    empty.mkdir()
    for command in (["list"], ["show", "alice"], ["add", "alice"]):
        proc = admin("--db", f"host={empty} dbname=mail", *command, stdin="pw\n", db=False)
        assert proc.returncode == 2, command
        one_line_error(proc, "qmail-esmtpd-user: database: ")
        assert proc.stdout == ""


def test_missing_table_is_a_database_error(admin: Admin, pg) -> None:
    proc = admin("--db", pg.dsn("postgres"), "list", db=False)
    assert proc.returncode == 2
    assert "poppass" in proc.stderr and "sql/schema.sql" in proc.stderr


def test_read_only_role_gets_a_hint(admin: Admin, pg) -> None:
    proc = admin("--db", admin.db.dsn("qmaild"), "add", "alice", stdin="pw\n", db=False)
    assert proc.returncode == 2
    first, hint = proc.stderr.splitlines()
    assert first.startswith("qmail-esmtpd-user: database: permission denied for table poppass")
    assert "owner" in hint and "control/admindb" in hint and "postgres" in hint


def test_unknown_role_says_which_role_to_use(admin: Admin, pg) -> None:
    proc = admin("--db", admin.db.dsn("root"), "list", db=False)
    assert proc.returncode == 2
    first, hint = proc.stderr.splitlines()
    assert 'role "root" does not exist' in first
    assert "runuser -u postgres -- qmail-esmtpd-user" in hint and "Traceback" not in hint


def test_the_connection_setting_is_its_own(admin: Admin, pg) -> None:
    """--db, else $QMAIL_ESMTPD_ADMINDB, else control/admindb; never the server's AUTHDB."""
    unusable = "host=/nonexistent dbname=mail"
    proc = admin("add", "alice", stdin="pw\n", db=False,
                 env={"QMAIL_ESMTPD_ADMINDB": admin.db.dsn(), "AUTHDB": unusable})
    assert proc.returncode == 0, proc.stderr
    (admin.control / "admindb").write_text(admin.db.dsn() + "\n")
    (admin.control / "authdb").write_text(unusable + "\n")
    proc = admin("list", db=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("alice\t")
    proc = admin("list", db=False, env={"QMAIL_ESMTPD_ADMINDB": unusable})
    assert proc.returncode == 2 and "is PostgreSQL running there?" in proc.stderr
    proc = admin("--db", admin.db.dsn(), "list", db=False,
                 env={"QMAIL_ESMTPD_ADMINDB": unusable})
    assert proc.returncode == 0, proc.stderr


def test_libpq_defaults_without_configuration(admin: Admin, pg) -> None:
    env = {"PGHOST": str(pg.sock), "PGDATABASE": admin.db.name, "PGUSER": "postgres"}
    proc = admin("list", db=False, env=env)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_sql_metacharacters_in_name_round_trip(admin: Admin) -> None:
    proc = admin("add", SQL_NAME, "--limit", "3", stdin="pw\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"added {SQL_NAME}\n"
    assert admin.sql("SELECT name FROM poppass") == [(SQL_NAME,)]
    assert admin("list").stdout == f"{SQL_NAME}\tactive\t3\t0\t0\n"
    assert fields(admin("show", SQL_NAME).stdout)["limit"] == "3"
    assert admin("passwd", SQL_NAME, stdin="x'; --\n").returncode == 0
    assert admin("limit", SQL_NAME, "default").returncode == 0
    assert admin("reset", SQL_NAME).returncode == 0
    assert admin("del", SQL_NAME).returncode == 0
    assert admin.sql("SELECT count(*) FROM poppass") == [(0,)]
    assert admin.sql("SELECT to_regclass('poppass') IS NOT NULL") == [(True,)]


def test_password_and_hash_never_printed(admin: Admin) -> None:
    make_accounts(admin)
    admin("add", "dave", stdin=PASSWORD + "\n")
    admin("add", "dave", stdin=PASSWORD + "\n")  # refused: exists
    admin("passwd", "dave", stdin=PASSWORD + "\n")
    admin("passwd", "nobody", stdin=PASSWORD + "\n")
    admin("show", "dave")
    admin("list")
    admin("--db", "host=/nonexistent", "passwd", "dave", stdin=PASSWORD + "\n", db=False)
    stored = admin.user("dave")[1]
    text = "".join(admin.outputs)
    assert "dave" in text
    assert PASSWORD not in text
    assert stored not in text
    assert "$argon2" not in text


def test_usage_errors() -> None:
    for argv in ([], ["frobnicate"], ["add"], ["limit", "alice"]):
        proc = subprocess.run([*COMMAND, *argv], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 2, argv
        assert "usage:" in proc.stderr


def test_sendas_addresses(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    assert admin("sendas-add", "alice", "Alice@Example.ORG").returncode == 0
    assert admin("sendas-add", "alice", "alias@example.org").returncode == 0
    assert admin("sendas-add", "alice", "alias@example.org").returncode == 0  # idempotent
    assert fields(admin("show", "alice").stdout)["sendas"] == "alias@example.org alice@example.org"
    assert admin("sendas-del", "alice", "alias@example.org").returncode == 0
    one_line_error(admin("sendas-del", "alice", "alias@example.org"), "has no address")
    one_line_error(admin("sendas-add", "nobody", "x@example.org"), "no such user")
    assert admin("sendas-add", "alice", "not an address").returncode == 2
    assert fields(admin("show", "alice").stdout)["sendas"] == "alice@example.org"


def test_a_closed_pipe_ends_quietly(admin: Admin) -> None:
    for name in ("alice", "bob", "carol", "dave"):
        assert admin("add", name, stdin="pw\n").returncode == 0
    command = " ".join(f"'{arg}'" for arg in [*COMMAND, "--db", admin.db.dsn()])
    proc = subprocess.run(f"{command} show alice | head -1; {command} list | head -c 1",
                          shell=True, capture_output=True, text=True, env=admin.env(),
                          timeout=60)
    assert proc.stdout == "name:     alice\na"
    assert proc.stderr == ""


@pytest.mark.parametrize("stdin", [b"pw\r\n", b"pw\n", b"pw"])
def test_line_endings_one_rule(admin: Admin, stdin: bytes) -> None:
    proc = subprocess.run([*COMMAND, "--db", admin.db.dsn(), "add", "alice"], input=stdin,
                          capture_output=True, env=admin.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    stored = admin.user("alice")[1]
    assert passwords.context().verify("pw", stored)


def test_a_nul_in_the_password_is_refused(admin: Admin) -> None:
    proc = admin("add", "alice", stdin="p\0w\n")
    assert proc.returncode == 1
    one_line_error(proc, "NUL")
    assert admin.user("alice") is None


@pytest.mark.parametrize("name", ["zero\u200bwidth", "next\u0085line", "bidi\u202eabc", " alice",
                                  "nbsp\u00a0name"])
def test_names_with_invisible_characters_are_refused(admin: Admin, name: str) -> None:
    proc = admin("add", name, stdin="pw\n")
    assert proc.returncode == 2 and "invisible" in proc.stderr
    assert admin.sql("SELECT count(*) FROM poppass") == [(0,)]


def test_names_are_stored_nfc_and_found_in_any_form(admin: Admin) -> None:
    nfd, nfc = "jose\u0301", "jos\u00e9"
    assert admin("add", nfd, stdin="pw\n").returncode == 0
    assert admin.sql("SELECT name FROM poppass") == [(nfc,)]
    assert fields(admin("show", nfd).stdout)["name"] == nfc
    one_line_error(admin("add", nfc, stdin="pw\n"), "user exists")


def test_a_name_differing_only_in_case_is_refused(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("add", "Alice", stdin="pw\n")
    assert proc.returncode == 1
    one_line_error(proc, "user alice exists")
    assert admin.user("Alice") is None
    assert "case" in admin("--help").stdout


def test_set_pop3_columns_and_show_them(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("set", "alice", "sysuser=vpopmail", "dir=/home/vmail/alice", "ip=192.0.2.1",
                 "--force")  # vpopmail: a user of the POP3 host, not of this one
    assert proc.returncode == 0, proc.stderr
    shown = fields(admin("show", "alice").stdout)
    assert (shown["sysuser"], shown["dir"], shown["hostname"], shown["ip"]) == (
        "vpopmail", "/home/vmail/alice", "-", "192.0.2.1")
    assert admin("set", "alice", "ip=", "hostname=pop.example.org").returncode == 0
    assert admin.sql("SELECT sysuser, dir, hostname, ip FROM poppass") == [
        ("vpopmail", "/home/vmail/alice", "pop.example.org", None)]
    for bad in (["alice", "pw=x"], ["alice", "sysuser"], ["alice"]):
        assert admin("set", *bad).returncode == 2, bad
    one_line_error(admin("set", "nobody", "dir=/x"), "no such user")


def test_top_lists_todays_heaviest_senders(admin: Admin) -> None:
    make_accounts(admin)
    assert admin("add", "dave", "--limit", "9", stdin="pw\n").returncode == 0
    admin.sql("INSERT INTO sendcounts (id, last_send, count, total_count) "
              "SELECT id, current_date, 8, 8 FROM poppass WHERE name = 'dave'")
    today = str(admin.sql("SELECT current_date")[0][0])
    yesterday = str(admin.sql("SELECT current_date - 1")[0][0])
    proc = admin("top")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"dave\t8\t{today}\t8\t9",
        f"alice\t3\t{today}\t10\t50 (default)",
        f"bob\t0\t{yesterday}\t7\tunlimited",
    ]
    assert admin("top", "1").stdout.splitlines() == [f"dave\t8\t{today}\t8\t9"]


def test_top_says_so_when_nobody_sent(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("top")
    assert proc.returncode == 0
    assert proc.stdout == ""  # stdout stays data for cut and awk
    assert proc.stderr == "nobody has sent mail through AUTH yet: no send counts\n"
    assert admin("top", "0").returncode == 2


@pytest.mark.parametrize("stdin", [b"new\nsecond\n", b"new\r\nsecond", b"new\n\n", b"\nnew\n"])
def test_a_second_line_on_stdin_is_refused(admin: Admin, stdin: bytes) -> None:
    assert admin("add", "bob", stdin="old\n").returncode == 0
    before = admin.user("bob")
    for argv in (["add", "alice"], ["passwd", "bob"]):
        proc = subprocess.run([*COMMAND, "--db", admin.db.dsn(), *argv], input=stdin,
                              capture_output=True, env=admin.env(), timeout=60)
        assert proc.returncode == 1, argv
        assert proc.stderr == (b"qmail-esmtpd-user: stdin has more than one line: give the "
                               b"password alone, on one line\n")
    assert admin.user("alice") is None
    assert admin.user("bob") == before


def test_names_and_passwords_are_bounded(admin: Admin) -> None:
    """128 bytes of UTF-8 for a name, 256 bytes for a password; longer is refused."""
    longest = "é" * 64  # 128 bytes, 64 characters
    for name in ("x" * 129, "é" * 65, "a" * 5000):
        proc = admin("add", name, stdin="pw\n")
        assert proc.returncode == 2
        assert "user name longer than 128 bytes (UTF-8)" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert admin.sql("SELECT count(*) FROM poppass") == [(0,)]
    proc = admin("add", longest, stdin="p" * 257 + "\n")
    assert proc.returncode == 1
    one_line_error(proc, "password longer than 256 bytes")
    assert admin.user(longest) is None
    assert admin("add", longest, stdin="p" * 256 + "\n").returncode == 0
    assert passwords.context().verify("p" * 256, admin.user(longest)[1])
    one_line_error(admin("passwd", longest, stdin="ü" * 129), "password longer than 256 bytes")


def test_disable_and_enable(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("disable", "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("disabled alice: AUTH and POP3 logins fail, sending stops "
                           "(enable alice undoes it)\n")
    assert admin.user("alice")[2] is False
    assert fields(admin("show", "alice").stdout)["active"].startswith("no (disabled")
    assert admin("list").stdout == "alice\tinactive\tdefault\t0\t0\n"
    assert admin("disable", "alice").returncode == 0  # already: still disabled
    proc = admin("enable", "alice")
    assert (proc.returncode, proc.stdout) == (0, "enabled alice\n")
    assert admin.user("alice")[2] is True
    assert fields(admin("show", "alice").stdout)["active"] == "yes"
    for command in ("disable", "enable"):
        one_line_error(admin(command, "nobody"), "no such user: nobody")
    proc = admin("set", "alice", "active=false")
    assert proc.returncode == 2
    assert "`disable NAME` deactivates" in proc.stderr and "`enable NAME`" in proc.stderr
    assert admin.user("alice")[2] is True


def test_a_disabled_account_cannot_log_in_until_enabled(db, control: Path, tcpserver) -> None:
    """Through the real server: 535 while disabled, 235 again once enabled."""
    admin = Admin(db.database, control)
    assert admin("add", "alice", stdin=PASSWORD + "\n").returncode == 0
    server = tcpserver(":allow\n", env=db.env())

    def auth() -> int:
        with smtplib.SMTP(server.host, server.port, timeout=30) as client:
            client.ehlo("client.test")
            return client.docmd("AUTH", "PLAIN " + plain("alice", PASSWORD))[0]

    assert auth() == 235
    assert admin("disable", "alice").returncode == 0
    assert auth() == 535
    assert admin("enable", "alice").returncode == 0
    assert auth() == 235


def plain(name: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{name}\0{password}".encode()).decode()


SYSUSER = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.parametrize("value, status, message", [
    ("sysuser=nosuchuser", 1, "sysuser nosuchuser is not a user of this host: create it "
                              "(useradd), or add --force"),
    ("sysuser=root", 1, "sysuser root is root (uid 0): POP3 sessions never run as root"),
    ("sysuser=bad user", 2, "sysuser is not a system user name: 'bad user'"),
    ("sysuser=../x", 2, "sysuser is not a system user name"),
    ("dir=Maildir/alice", 2, "dir must be an absolute path, e.g. /home/vmail/alice"),
    ("dir=/home/a\nb", 2, "dir has control or invisible characters"),
    ("ip=not-an-ip", 2, "ip is not an IP address: 'not-an-ip'"),
    ("ip=192.0.2.300", 2, "ip is not an IP address"),
    ("hostname=bad host", 2, "hostname is not a host name: 'bad host'"),
    ("hostname=-pop.example.org", 2, "hostname is not a host name"),
    ("hostname=pop..example.org", 2, "hostname is not a host name"),
])
def test_set_refuses_what_the_pop3_program_cannot_use(admin: Admin, value: str, status: int,
                                                      message: str) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    assert admin("set", "alice", f"sysuser={SYSUSER}", "dir=/var/empty").returncode == 0
    before = admin.sql("SELECT sysuser, dir, hostname, ip FROM poppass")
    proc = admin("set", "alice", value, "hostname=pop.example.org")
    assert proc.returncode == status
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert admin.sql("SELECT sysuser, dir, hostname, ip FROM poppass") == before


def test_set_force_accepts_a_sysuser_only_the_pop3_host_knows(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("set", "alice", "sysuser=vmail-on-pop-host", "hostname=pop2.example.org",
                 "--force")
    assert proc.returncode == 0, proc.stderr
    assert admin.sql("SELECT sysuser, hostname FROM poppass") == [
        ("vmail-on-pop-host", "pop2.example.org")]
    proc = admin("set", "alice", "sysuser=root", "--force")  # never, anywhere
    assert proc.returncode == 1 and "is root" in proc.stderr
    assert admin("set", "alice", "sysuser=", "--force").returncode == 0  # NULL: no check
    assert admin.sql("SELECT sysuser FROM poppass") == [(None,)]


def test_set_stores_an_ip_in_canonical_form(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("set", "alice", "ip=2001:DB8:0:0::1")
    assert (proc.returncode, proc.stdout) == (0, "alice: ip 2001:db8::1\n"), proc.stderr
    assert admin.sql("SELECT ip FROM poppass") == [("2001:db8::1",)]


@pytest.mark.parametrize("address, message", [
    ("", "the address is empty: the null sender <> needs no sendas"),
    ("<>", "the address is empty: the null sender <> needs no sendas"),
    ("alice", "not an address: 'alice'"),
    ("alice@", "not an address"),
    ("@example.org", "not an address"),
    ("alice@example..org", "not an address"),
    ("<<alice@example.org>>", "not an address"),
    ("a lice@example.org", "the address has blanks"),
    ("alice\u200b@example.org", "the address has blanks, control or invisible characters"),
    ("a" * 250 + "@example.org", "address longer than 254 bytes"),
])
def test_sendas_refuses_what_is_not_an_address(admin: Admin, address: str,
                                               message: str) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("sendas-add", "alice", address)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "user name" not in proc.stderr
    assert admin.sql("SELECT count(*) FROM sendas") == [(0,)]


def test_sendas_takes_an_address_as_mail_from_writes_it(admin: Admin) -> None:
    assert admin("add", "alice", stdin="pw\n").returncode == 0
    proc = admin("sendas-add", "alice", "<Alias@Example.ORG>")
    assert (proc.returncode, proc.stdout) == (0, "alice may send as alias@example.org\n")
    assert admin("sendas-add", "alice", '"odd@local"@example.org').returncode == 0
    assert admin.sql("SELECT address FROM sendas ORDER BY address") == [
        ('"odd@local"@example.org',), ("alias@example.org",)]
    assert admin("sendas-del", "alice", "<alias@example.org>").returncode == 0


def test_the_longest_name_and_password_log_in_everywhere(db, control: Path, tcpserver,
                                                        tmp_path: Path) -> None:
    """A 128-byte name with a 256-byte password: SMTP AUTH PLAIN (also with the name
    repeated as authorization identity) and POP3 with qmail-popup's timestamp for a
    64-byte host name, through the real programs."""
    name, password = "ü" * 60 + "x" * 8, "pässwörd" * 25 + "p" * 6
    assert (len(name.encode()), len(password.encode())) == (128, 256)
    admin = Admin(db.database, control)
    assert admin("add", name, stdin=password + "\n").returncode == 0
    assert admin("set", name, f"sysuser={SYSUSER}", "dir=/").returncode == 0
    server = tcpserver(":allow\n", env=db.env())
    for authzid in ("", name):
        with smtplib.SMTP(server.host, server.port, timeout=30) as client:
            client.ehlo("client.test")
            code, said = client.docmd("AUTH", "PLAIN " + plain(name, password, authzid))
            assert code == 235, said

    program = write_launcher(tmp_path / "qmail-esmtpd-checkpassword",
                             "qmail_esmtpd.pop3.checkpassword:main")
    timestamp = f"<{'9' * 7}.{'9' * 10}@{'h' * 64}>"
    data = f"{name}\0{password}\0{timestamp}\0".encode()
    assert len(data) <= 512
    # Started as root, the POP3 program may connect with the service user's uid
    # (POPDBUSER, qmaild by default): the socket open to it, as /var/run/postgresql is.
    os.chmod(db.database.cluster.base, 0o711)
    service = {} if os.geteuid() != 0 or host_has("qmaild") else {"POPDBUSER": "nobody"}
    proc = run_with_fd3([str(program), "/bin/sh", "-c", 'echo "$USER"'], data,
                        env={"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(control),
                             **db.env(), **service}, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == name + "\n"


def test_the_name_bound_fits_the_other_paths() -> None:
    from qmail_esmtpd.admin import values
    from qmail_esmtpd.auth import throttle
    from qmail_esmtpd.pop3 import checkpassword

    assert values.MAX_NAME_BYTES <= throttle.MAX_NAME  # bytes: never more characters
    popup_timestamp = len("<1234567.1234567890@>") + 64  # pid.time@host, 64-byte host name
    assert (values.MAX_NAME_BYTES + values.MAX_PASSWORD_BYTES + 3 + popup_timestamp
            <= checkpassword.MAX_INPUT)
