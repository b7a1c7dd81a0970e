"""accounts.verify() and DailyLimit against real PostgreSQL, with no SMTP around them:
what a POP3 checkpassword program (or any other) gets from the auth package."""

import pytest

from qmail_esmtpd.auth.accounts import Account, Unavailable, canonical_name, verify
from qmail_esmtpd.auth.db import Database
from qmail_esmtpd.auth.limit import DailyLimit
from qmail_esmtpd.auth.passwords import context


@pytest.fixture
def mail(pg):
    db = pg.new_database()
    hashed = context().hash
    db.sql("INSERT INTO poppass (name, pw, active, sendlimit) VALUES"
           " ('alice', %s, true, NULL), ('bob', %s, true, 2), ('sleepy', %s, false, NULL)",
           (hashed("alice-pw"), hashed("bob-pw"), hashed("sleepy-pw")))
    yield db
    db.close()


def test_verify_answers_with_the_account_or_none(mail):
    server = Database(mail.dsn("qmaild"))
    try:
        alice = verify(server, b"alice", b"alice-pw")
        assert isinstance(alice, Account) and (alice.name, alice.sendlimit) == ("alice", None)
        assert verify(server, b"bob", b"bob-pw").sendlimit == 2
        for name, password in ((b"alice", b"bob-pw"), (b"nobody", b"x"), (b"sleepy", b"sleepy-pw"),
                               (b"\xff\xfe", b"x"), (b"al\0ice", b"alice-pw"), (b"alice", b"")):
            assert verify(server, name, password) is None, name
    finally:
        server.close()


@pytest.mark.parametrize("trouble", ["no such role", "no tables"])
def test_database_trouble_is_one_exception(pg, mail, trouble):
    dsn = (mail.dsn("nosuchrole") if trouble == "no such role"
           else pg.empty_database().dsn("qmaild"))
    server = Database(dsn)
    with pytest.raises(Unavailable):
        verify(server, b"alice", b"alice-pw")
    server.close()


def test_the_limit_keeps_its_own_charge(mail):
    server = Database(mail.dsn("qmaild"))
    bob = verify(server, b"bob", b"bob-pw")
    limit = DailyLimit(server, bob.id, 50)  # bob's own sendlimit (2) wins over the default

    def count() -> int:
        return mail.sql("SELECT count FROM sendcounts WHERE id = %s", (bob.id,))[0][0]

    try:
        assert limit.remaining() == 2 and limit.charge(1) is True and count() == 1
        limit.refund()
        limit.refund()  # only the last charge, and only once
        assert count() == 0
        assert limit.charge(3) is False and count() == 0  # never more than the limit
        assert limit.charge(2) and count() == 2
        assert limit.remaining() == 0 and limit.charge(1) is False
        limit.refund()  # the refused charge gave nothing to refund
        assert count() == 2
    finally:
        server.close()


def test_the_limit_reads_the_account_as_it_is_now(mail):
    server = Database(mail.dsn("qmaild"))
    alice = verify(server, b"alice", b"alice-pw")
    limit = DailyLimit(server, alice.id, 50)
    try:
        assert limit.charge(10) and limit.remaining() == 40
        mail.sql("UPDATE poppass SET sendlimit = 12 WHERE id = %s", (alice.id,))
        assert limit.remaining() == 2 and limit.charge(3) is False and limit.charge(2)
        mail.sql("UPDATE poppass SET sendlimit = NULL, active = false WHERE id = %s",
                 (alice.id,))
        assert limit.remaining() == 0 and limit.charge(1) is False
        assert limit.why == "account disabled" or "disabled" in limit.why
    finally:
        server.close()


def test_messages_per_day_when_asked(mail):
    server = Database(mail.dsn("qmaild"))
    bob = verify(server, b"bob", b"bob-pw")
    limit = DailyLimit(server, bob.id, 50, per_message=True)
    try:
        assert limit.charge(100) and limit.charge(100) and limit.charge(1) is False
        assert mail.sql("SELECT count, total_count FROM sendcounts")[0] == (2, 2)
    finally:
        server.close()


@pytest.mark.parametrize("raw, stored", [
    ("alice", "alice"), ("Alice", "Alice"), ("a b", "a b"), ("名前", "名前"),
    ("e\u0301", "\u00e9"),  # NFD is stored as NFC
    ("", None), (" alice", None), ("alice ", None), ("a\tb", None), ("a\u00a0b", None),
    ("a\u200bb", None), ("a\u0085", None), ("a\u2028b", None), ("a\u202eb", None),
])
def test_canonical_name_stores_nfc_and_refuses_invisible_characters(raw, stored):
    assert canonical_name(raw) == stored


def test_a_name_in_nfd_finds_its_nfc_row(mail):
    hashed = context().hash
    mail.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s)", ("\u00e9mile", hashed("pw")))
    server = Database(mail.dsn("qmaild"))
    try:
        assert verify(server, "e\u0301mile".encode(), b"pw").name == "\u00e9mile"
    finally:
        server.close()


def test_the_database_client_does_not_load_python_ssl(mail):
    """psycopg2 imports `ssl` (15 ms) only for OpenSSL < 1.1; db.py declines it."""
    import subprocess
    import sys

    from harness.paths import ROOT

    code = ("import sys\n"
            "from qmail_esmtpd.auth.db import Database\n"
            f"assert Database({mail.dsn('qmaild')!r}).query('SELECT 1') == [(1,)]\n"
            "print('ssl' in sys.modules, 'psycopg2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "True"]


class Recorded(Database):
    """A Database that keeps the statements it ran, and what the attempts
    table held when each of them answered."""

    def __init__(self, conninfo: str, mail) -> None:
        super().__init__(conninfo)
        self.mail = mail
        self.ran: list[tuple[str, int]] = []

    def query(self, sql: str, params: "tuple | dict" = ()) -> list:
        rows = super().query(sql, params)
        self.ran.append((sql, self.mail.sql("SELECT count(*) FROM authfailures")[0][0]))
        return rows


def test_login_reads_the_row_in_the_statement_that_records_the_attempt(mail, monkeypatch):
    """One round trip records the attempt and reads the hash: the hash comes
    back only with the attempt already committed, then SETTLE takes a right
    password's record back; a wrong one's stays."""
    from qmail_esmtpd.auth import accounts
    from qmail_esmtpd.auth.throttle import Throttle

    checked = []
    real = accounts.passwords.check
    monkeypatch.setattr(accounts.passwords, "check", lambda password, stored, plaintext=False: (
        checked.append(mail.sql("SELECT count(*) FROM authfailures")[0][0])
        or real(password, stored, plaintext)))
    server = Recorded(mail.dsn("qmaild"), mail)
    try:
        throttle = Throttle(server, "192.0.2.1")
        account, status = accounts.login(server, b"alice", b"alice-pw", throttle)
        assert account is not None and account.name == "alice" and not status.refused
        assert checked == [1]  # checked with its attempt recorded
        [(first, recorded), (settle, after)] = server.ran
        assert "INSERT INTO authfailures" in first and "FROM poppass" in first
        assert recorded == 1 and "DELETE FROM authfailures" in settle and after == 0
        server.ran.clear()
        for name in (b"alice", b"nobody"):  # a wrong password, an unknown name: the same work
            account, _ = accounts.login(server, name, b"wrong", throttle)
            assert account is None
        assert len(server.ran) == 4 and checked == [1, 1, 2]
        assert mail.sql("SELECT name FROM authfailures ORDER BY name") == [("alice",), ("nobody",)]
    finally:
        server.close()


def test_a_refused_attempt_reads_no_row(mail, monkeypatch):
    """Refused by the counts, or not recordable: no hash comes back, nothing is checked."""
    from qmail_esmtpd.auth import accounts
    from qmail_esmtpd.auth.throttle import Throttle

    monkeypatch.setattr(accounts.passwords, "check", lambda *args, **kw: pytest.fail("checked"))
    server = Database(mail.dsn("qmaild"))
    try:
        mail.sql("INSERT INTO authfailures (source, name, attempt) VALUES"
                 " ('192.0.2.1', 'x', 1), ('192.0.2.1', 'x', 2)")
        throttle = Throttle(server, "192.0.2.1", limit=2)
        status = throttle.begin("alice", b"alice-pw", (accounts.USER_QUERY, "alice"))
        assert status.refused and status.row is None
        assert accounts.login(server, b"alice", b"alice-pw", throttle)[0] is None
        mail.sql("REVOKE INSERT ON authfailures FROM qmaild")
        unrecorded = Throttle(server, "192.0.2.2")
        status = unrecorded.begin("alice", b"alice-pw", (accounts.USER_QUERY, "alice"))
        assert status.refused and status.unrecorded and status.row is None
        assert mail.sql("SELECT count(*) FROM authfailures") == [(2,)]
    finally:
        server.close()


def test_a_trusted_client_reads_the_row_alone(mail):
    """Nothing is recorded for a trusted client: login() reads the row by itself."""
    from qmail_esmtpd.auth import accounts
    from qmail_esmtpd.auth.throttle import Throttle

    server = Recorded(mail.dsn("qmaild"), mail)
    try:
        throttle = Throttle(server, "192.0.2.1", trusted=True)
        account, _ = accounts.login(server, b"bob", b"bob-pw", throttle)
        assert account is not None and account.sendlimit == 2
        assert [sql for sql, _ in server.ran] == [accounts.USER_QUERY]
        assert accounts.login(server, b"bob", b"wrong", throttle)[0] is None
        assert mail.sql("SELECT count(*) FROM authfailures") == [(0,)]
    finally:
        server.close()
