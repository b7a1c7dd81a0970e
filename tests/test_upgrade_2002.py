"""sql/upgrade-2002.sql on a database made from the 2002 article's DDL."""

import datetime
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from qmail_esmtpd.auth import passwords
from qmail_esmtpd.auth.accounts import USER_QUERY
from qmail_esmtpd.auth.db import Database as ServerDatabase
from qmail_esmtpd.auth.limit import CHARGE, REFUND, REMAINING

from harness.paths import ROOT
from harness.postgres import Database

UPGRADE = ROOT / "sql" / "upgrade-2002.sql"
GRANTS = ROOT / "sql" / "grants.sql"
SCHEMA = ROOT / "sql" / "schema.sql"
SCHEMA_2002 = Path(__file__).resolve().parent / "data" / "schema-2002.sql"
PSQL = shutil.which("psql") or ("/usr/bin/psql" if Path("/usr/bin/psql").exists() else None)

DES = "abNANd1rDfiNc"  # crypt("secret", "ab"): what a 2002 pw column holds
USERS = [  # id, name, pw, sysuser, hostname, ip, dir
    (1, "alice", DES, "vpopmail", "mail.example.com", "192.0.2.1", "/home/vpopmail/d/alice"),
    (2, "bob", "plain-2002", None, None, None, None),
    (5, "carol", DES, "vpopmail", None, "192.0.2.55", None),
    (None, "dave", DES, None, None, None, None),
]
COUNTS = [  # id, last_send, count, total_count
    (1, datetime.date(2002, 6, 1), 3, 10),
    (2, None, None, None),
]


def old_database(pg, users=USERS, counts=COUNTS) -> Database:
    """An empty database with the 2002 tables and the given rows."""
    db = pg.empty_database("old")
    db.sql(SCHEMA_2002.read_text())
    for row in users:
        db.sql("INSERT INTO poppass VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
    for row in counts:
        db.sql("INSERT INTO sendcounts VALUES (%s, %s, %s, %s)", row)
    return db


def upgrade(db: Database) -> list[str]:
    """Runs the file's text as the tables' owner; returns the server's notices."""
    with Database(db.cluster, db.name) as fresh:  # a connection of its own: only its notices
        fresh.sql(UPGRADE.read_text())
        return list(fresh.conn.notices)


def upgrade_psql(db: Database) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-h", str(db.cluster.sock),
         "-U", "postgres", "-d", db.name, "-f", str(UPGRADE)],
        capture_output=True, text=True, timeout=60)


# the README's upgrade line, an indented display in "Setting up the database"
README_LINE = re.compile(r"^    (runuser -u postgres -- psql .* sql/upgrade-2002\.sql)$", re.M)


def upgrade_as_the_readme_says(db: Database) -> subprocess.CompletedProcess:
    """The README's line as written, as root, in a checkout only root can enter
    (as under /root); only the socket (PGHOST) and the database name put in."""
    [line] = README_LINE.findall((ROOT / "README.md").read_text())
    assert " -d mail " in line
    with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-checkout-") as checkout:  # 0700
        (Path(checkout) / "sql").mkdir()
        shutil.copy(UPGRADE, Path(checkout) / "sql")
        return subprocess.run(["sh", "-ec", line.replace(" -d mail ", f" -d {db.name} ")],
                              cwd=checkout, capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "PGHOST": str(db.cluster.sock)})


def _can_run_the_readme() -> bool:
    try:
        pwd.getpwnam("postgres")  # the test cluster runs as postgres, trusting local users
    except KeyError:
        return False
    return os.geteuid() == 0 and PSQL is not None


RUNNERS = ["psycopg2", pytest.param("psql", marks=pytest.mark.skipif(
    PSQL is None, reason="psql is not installed")),
    pytest.param("readme", marks=pytest.mark.skipif(
        not _can_run_the_readme(), reason="the README's line runs as root, psql as postgres"))]


def run_upgrade(db: Database, runner: str) -> None:
    if runner in ("psql", "readme"):
        proc = upgrade_psql(db) if runner == "psql" else upgrade_as_the_readme_says(db)
        assert proc.returncode == 0, proc.stderr
    else:
        upgrade(db)


def data(db: Database) -> tuple:
    return (
        db.sql("SELECT id, name, pw, sysuser, hostname, ip, dir FROM poppass ORDER BY name"),
        db.sql("SELECT id, last_send, count, total_count FROM sendcounts ORDER BY id"),
    )


def structure(db: Database) -> tuple:
    """Columns (in order, with types, nullability, defaults, identity) and constraints."""
    columns = db.sql("""
        SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name IN ('poppass', 'sendcounts')
        ORDER BY table_name, ordinal_position""")
    constraints = db.sql("""
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE conrelid IN ('poppass'::regclass, 'sendcounts'::regclass)
        ORDER BY 1, 2""")
    return columns, constraints


def everything(db: Database) -> tuple:
    sequences = db.sql("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    return data(db), structure(db), sequences


@pytest.mark.parametrize("runner", RUNNERS)
def test_upgrade_keeps_rows_and_matches_schema(pg, runner: str) -> None:
    db = old_database(pg)
    run_upgrade(db, runner)
    users, counts = data(db)
    dave = (6, *USERS[3][1:])  # numbered after max(id)
    assert users == [USERS[0], USERS[1], USERS[2], dave]
    assert counts == [COUNTS[0], (2, datetime.date.today(), 0, 0)]
    assert db.sql("SELECT DISTINCT active, sendlimit FROM poppass") == [(True, None)]
    assert structure(db) == structure(pg.new_database())


def test_upgraded_database_serves_auth_and_limits(pg) -> None:
    db = old_database(pg)
    upgrade(db)
    db.sql(SCHEMA.read_text())  # the documented next step: tables added since (sendas)
    db.sql(GRANTS.read_text())
    server = ServerDatabase(db.dsn("qmaild"))
    try:
        # AUTH: the old DES hash still verifies, and is due for replacement
        [(user_id, stored, active, limit)] = server.query(USER_QUERY, {"user": "alice"})
        assert (user_id, stored, active, limit) == (1, DES, True, None)
        ctx = passwords.context()
        assert ctx.verify("secret", stored) and ctx.needs_update(stored)
        # the daily limit: an old day's row restarts, a NULL-filled row counts on
        today = datetime.date.today()
        assert server.query(CHARGE, {"id": 1, "default": 50, "n": 1}) == [(today,)]
        assert server.query(REMAINING, {"id": 1, "default": 50}) == [(True, 50, 1)]
        assert server.query(CHARGE, {"id": 2, "default": 1, "n": 1}) == [(today,)]
        assert server.query(CHARGE, {"id": 2, "default": 1, "n": 1}) == []  # at the limit
        assert server.query(CHARGE, {"id": 5, "default": 50, "n": 1}) == [(today,)]
        server.query(REFUND, {"id": 5, "day": today, "n": 1})
    finally:
        server.close()
    assert db.sql("SELECT id, count, total_count FROM sendcounts ORDER BY id") == [
        (1, 1, 11), (2, 1, 1), (5, 0, 0)]
    # a modern hash fits in pw, new users are numbered after the old ones
    modern = passwords.context().hash("new secret")
    assert len(modern) > 90
    db.sql("UPDATE poppass SET pw = %s WHERE name = 'alice'", (modern,))
    db.sql("UPDATE poppass SET pw = %s WHERE name = 'bob'", ("x" * 100,))
    assert db.sql("SELECT pw FROM poppass WHERE name = 'alice'") == [(modern,)]
    assert db.sql("INSERT INTO poppass (name, pw) VALUES ('erin', 'x') RETURNING id") == [
        (7,)]
    # the constraints now hold
    with pytest.raises(psycopg2.errors.UniqueViolation):
        db.sql("INSERT INTO poppass (name, pw) VALUES ('alice', 'x')")
    with pytest.raises(psycopg2.errors.NotNullViolation):
        db.sql("INSERT INTO poppass (pw) VALUES ('x')")
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        db.sql("INSERT INTO sendcounts (id) VALUES (99)")
    with pytest.raises(psycopg2.errors.CheckViolation):
        db.sql("UPDATE poppass SET sendlimit = -1 WHERE name = 'alice'")
    db.sql("DELETE FROM poppass WHERE name = 'bob'")
    assert db.sql("SELECT id FROM sendcounts ORDER BY id") == [(1,), (5,)]


@pytest.mark.parametrize("runner", RUNNERS)
def test_second_run_changes_nothing(pg, runner: str) -> None:
    db = old_database(pg)
    notices = upgrade(db)
    assert any("poppass.pw character varying(20) -> text" in n for n in notices)
    db.sql(SCHEMA.read_text())
    db.sql(GRANTS.read_text())
    before = everything(db)
    privileges = db.sql("SELECT relname, relacl::text FROM pg_class "
                             "WHERE relname IN ('poppass', 'sendcounts') ORDER BY 1")
    if runner == "psql":
        proc = upgrade_psql(db)
        assert proc.returncode == 0, proc.stderr
        assert "already up to date" in proc.stderr
    else:
        assert any("already up to date" in n for n in upgrade(db))
    assert everything(db) == before
    assert db.sql("SELECT relname, relacl::text FROM pg_class "
                       "WHERE relname IN ('poppass', 'sendcounts') ORDER BY 1") == privileges
    db.sql(GRANTS.read_text())  # and the grants apply again


def test_current_schema_is_already_up_to_date(pg) -> None:
    db = pg.new_database()
    before = everything(db)
    assert any("already up to date" in n for n in upgrade(db))
    assert everything(db) == before


BAD_DATA = {
    "duplicate names": (
        [(1, "alice", DES, None, None, None, None), (2, "bob", DES, None, None, None, None),
         (3, "bob", DES, None, None, None, None)], [],
        ["duplicate name", "'bob' (2 rows)"]),
    "NULL names": (
        [(1, "alice", DES, None, None, None, None), (7, None, DES, None, None, None, None)], [],
        ["NULL name", "id: 7"]),
    "NULL passwords": (
        [(1, "alice", DES, None, None, None, None), (2, "nopw", None, None, None, None, None)],
        [], ["NULL pw", "'nopw' (id 2)"]),
    "duplicate poppass ids": (
        [(4, "alice", DES, None, None, None, None), (4, "bob", DES, None, None, None, None)], [],
        ["duplicate id", "4 (2 rows)"]),
    "duplicate sendcounts ids": (
        USERS[:2], [(1, None, 1, 1), (1, None, 2, 2), (2, None, 0, 0)],
        ["sendcounts: 1 duplicate id", "1 (2 rows)"]),
    "sendcounts for unknown ids": (
        USERS[:2], [(1, None, 1, 1), (42, None, 1, 1), (43, None, 1, 1)],
        ["ids not in poppass", "42, 43"]),
    "sendcounts without id": (
        USERS[:2], [(None, None, 1, 1)], ["sendcounts: 1 row(s) with a NULL id"]),
    "negative count": (
        USERS[:2], [(2, None, -1, 0)], ["negative count", "2 (count -1)"]),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_refuses_data_that_cannot_be_kept_and_changes_nothing(pg, case: str) -> None:
    users, counts, expected = BAD_DATA[case]
    db = old_database(pg, users, counts)
    before = everything(db)
    with pytest.raises(psycopg2.errors.RaiseException) as info:
        upgrade(db)
    message = info.value.pgerror
    assert "nothing changed" in message
    for text in expected:
        assert text in message
    assert everything(db) == before


def test_reports_every_problem_at_once(pg) -> None:
    users = [(1, "bob", DES, None, None, None, None), (2, "bob", DES, None, None, None, None),
             (3, None, DES, None, None, None, None)]
    db = old_database(pg, users, [(9, None, 1, 1)])
    with pytest.raises(psycopg2.errors.RaiseException) as info:
        upgrade(db)
    message = info.value.pgerror
    assert "'bob' (2 rows)" in message and "NULL name" in message and "not in poppass" in message


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_stops_on_duplicate_names(pg) -> None:
    users = [(1, "o'brien", DES, None, None, None, None),
             (2, "o'brien", DES, None, None, None, None)]
    db = old_database(pg, users, [])
    before = everything(db)
    proc = upgrade_psql(db)
    assert proc.returncode != 0
    assert "'o''brien' (2 rows)" in proc.stderr
    assert everything(db) == before


def test_serial_id_keeps_its_sequence_moved_past_max(pg) -> None:
    db = old_database(pg)
    db.sql("CREATE SEQUENCE poppass_id_seq OWNED BY poppass.id")
    db.sql("ALTER TABLE poppass ALTER COLUMN id SET DEFAULT nextval('poppass_id_seq')")
    notices = upgrade(db)
    assert any("moved past 5" in n for n in notices)
    users, _ = data(db)
    assert users[3] == (6, *USERS[3][1:])
    assert db.sql("INSERT INTO poppass (name, pw) VALUES ('erin', 'x') RETURNING id") == [
        (7,)]
    before = everything(db)
    upgrade(db)
    assert everything(db) == before


def test_foreign_key_without_cascade_is_replaced(pg) -> None:
    db = old_database(pg, USERS[:3], COUNTS)
    db.sql("ALTER TABLE poppass ADD PRIMARY KEY (id)")
    db.sql("ALTER TABLE sendcounts ADD CONSTRAINT old_fk FOREIGN KEY (id) "
                "REFERENCES poppass (id)")
    upgrade(db)
    assert structure(db) == structure(pg.new_database())
    db.sql("DELETE FROM poppass WHERE id = 1")
    assert db.sql("SELECT id FROM sendcounts") == [(2,)]


def test_missing_sendcounts_is_created(pg) -> None:
    db = old_database(pg, USERS, [])
    db.sql("DROP TABLE sendcounts")
    upgrade(db)
    assert structure(db) == structure(pg.new_database())


def test_no_poppass_at_all(pg) -> None:
    db = pg.empty_database("empty")
    with pytest.raises(psycopg2.errors.RaiseException) as info:
        upgrade(db)
    assert "no table poppass" in info.value.pgerror
    assert db.sql("SELECT to_regclass('sendcounts')") == [(None,)]
