"""Unit tests of AUTH and the sending limit inside the pure protocol core."""

import base64

from qmail_esmtpd import auth, protocol, replies
from qmail_esmtpd.auth import Authenticator, Verdict, sasl
from qmail_esmtpd.config import MAX_SECONDS, Controls, auth_backend
from qmail_esmtpd.protocol import Peer, Session

from harness.core_checks import Hooks, core_checks


class FakeLimit:
    """alice's sending limit: 2 recipients a day."""

    why = "2 of 2 recipients a day already sent"

    def __init__(self, used: int = 0, broken: bool = False, limit: int = 2) -> None:
        self.used, self.broken, self.refunds, self.limit = used, broken, 0, limit
        self.charged = 0

    def remaining(self):
        return None if self.broken else max(self.limit - self.used, 0)

    def charge(self, recipients):
        self.charged = 0
        if self.broken:
            return None
        if self.used + recipients > self.limit:
            return False
        self.used += recipients
        self.charged = recipients
        return True

    def refund(self):
        if self.charged:
            self.used -= self.charged
            self.refunds += 1
        self.charged = 0


class FakeAuth:
    mechanisms = auth.MECHANISMS

    def __init__(self, tempfail: str | None = None, limit: FakeLimit | None = None,
                 max_failures: int = 3) -> None:
        self.calls, self.tempfail, self.limit = [], tempfail, limit
        self.max_failures = max_failures

    def check(self, user: bytes, password: bytes, mechanism: bytes,
              authzid: bytes = b"") -> Verdict:
        self.calls.append((user, password, mechanism))
        if self.tempfail:
            return Verdict(False, tempfail=self.tempfail)
        ok = (user, password) == (b"alice", b"pw")
        return Verdict(ok, user=user, limit=self.limit if ok else None)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def session(auth=None, limits=None, **kw) -> Session:
    kw.setdefault("checks", core_checks(auth=True, plugins=kw.pop("plugins", ())))
    return Session(b"mx.example.com", Peer(b"198.51.100.7", b"client.example.net"),
                   auth=auth or FakeAuth(limit=limits), **kw)


def test_no_authenticator_means_vanilla_qmail():
    s = Session(b"mx", Peer())
    assert s.handle(b"AUTH LOGIN")[0] == replies.UNIMPLEMENTED
    assert s.handle(b"EHLO x")[0].endswith(b"250 8BITMIME\r\n")


def test_ehlo_advertises_size_and_auth():
    assert session(databytes=1000).handle(b"EHLO x")[0] == (
        b"250-mx.example.com\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n"
        b"250 AUTH LOGIN PLAIN\r\n")


def test_login_exchange_and_what_success_changes():
    s = session()
    assert s.handle(b"AUTH login")[0] == replies.AUTH_PROMPT_USER
    assert s.handle(b64(b"alice"))[0] == replies.AUTH_PROMPT_PASSWORD
    assert s.handle(b64(b"pw")) == (replies.AUTH_OK, protocol.FLUSH)
    assert s.protocol() == b"ESMTPA" and s.peer.remoteinfo == b"alice"
    assert s.child_environment() == {b"TCPREMOTEINFO": b"alice", b"RELAYCLIENT": b""}
    s.handle(b"MAIL FROM:<a@b>")
    assert s.handle(b"RCPT TO:<x@elsewhere.org>")[0] == replies.OK
    assert s.handle(b"AUTH PLAIN")[0] == replies.AUTH_ALREADY


def test_plain_with_initial_response_and_prompt():
    s = session()
    assert s.handle(b"AUTH PLAIN " + b64(b"authz\0alice\0pw"))[0] == replies.AUTH_OK
    s = session()
    assert s.handle(b"AUTH PLAIN")[0] == replies.AUTH_PROMPT_PLAIN
    assert s.handle(b64(b"\0alice\0pw"))[0] == replies.AUTH_OK


def test_malformed_cancelled_and_unknown():
    s = session()
    for line in (b"AUTH PLAIN " + b64(b"alice\0pw"), b"AUTH PLAIN " + b64(b"\0alice\0"),
                 b"AUTH PLAIN not*base64", b"AUTH PLAIN YWxpY2U"):
        assert s.handle(line)[0] == replies.AUTH_MALFORMED, line
    assert s.handle(b"AUTH LOGIN")[0] == replies.AUTH_PROMPT_USER
    assert s.handle(b"*")[0] == replies.AUTH_CANCELED
    assert s.handle(b"AUTH LOGIN")[0] == replies.AUTH_PROMPT_USER
    assert s.handle(b"")[0] == replies.AUTH_MALFORMED
    for line in (b"AUTH", b"AUTH CRAM-MD5", b"AUTH DIGEST-MD5 xyz"):
        assert s.handle(line)[0] == replies.AUTH_MECHANISM
    assert s.handle(b"NOOP")[0] == replies.OK  # the exchange is over, commands again
    assert s.auth.calls == []


def test_no_auth_inside_a_transaction():
    s = session()
    s.handle(b"MAIL FROM:<a@b>")
    assert s.handle(b"AUTH PLAIN")[0] == replies.AUTH_IN_TRANSACTION
    s.handle(b"RSET")
    assert s.handle(b"AUTH PLAIN")[0] == replies.AUTH_PROMPT_PLAIN


def test_failures_then_421_and_tempfail_does_not_count():
    s = session(auth=FakeAuth(max_failures=2))
    assert s.handle(b"AUTH PLAIN " + b64(b"\0alice\0no")) == (replies.AUTH_FAILED, protocol.FLUSH)
    assert s.handle(b"AUTH PLAIN " + b64(b"\0alice\0no")) == (replies.AUTH_TOO_MANY, protocol.DROP)
    t = session(auth=FakeAuth(tempfail=auth.DATABASE, max_failures=1))
    assert t.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))[0] == replies.AUTH_TEMP_DB
    assert t.handle(b"RCPT TO:<x@elsewhere.org>")[0] == replies.WANT_MAIL  # still a session
    assert t.user is None


def test_size_parameter_only_in_angle_form():
    s = session(databytes=1000)
    assert s.handle(b"MAIL FROM:<a@b> SIZE=2000")[0] == replies.SIZE_EXCEEDED
    assert s.handle(b"RCPT TO:<x@example.com>")[0] == replies.WANT_MAIL
    assert s.handle(b"MAIL FROM:<a@b> size=1000")[0] == replies.OK
    assert s.handle(b"MAIL FROM:a@b SIZE=2000")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<a@b> SIZE=junk")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<a@b> BODY=8BITMIME SIZE=12 SIZE=2000")[0] == replies.OK
    assert s.size == 12  # the first SIZE= counts


def test_auth_parameter_is_ignored_before_authentication():
    s = session(clock=lambda: 0)
    s.handle(b"MAIL FROM:<a@b> AUTH=mallory@evil.example")
    assert b"mallory" not in s.received_header() and s.peer.remoteinfo is None


def send(s: Session, verdict: bytes = b"") -> bytes:
    """One whole message through the core; qmail-queue answers `verdict`."""
    s.handle(b"MAIL FROM:<a@b>")
    s.handle(b"RCPT TO:<x@example.com>")
    assert s.handle(b"DATA") == (b"", protocol.DATA)
    s.open_message(True)
    s.decoder.feed(b"Subject: x\r\n\r\nx\r\n.\r\n")
    envelope = s.finish_message()
    return s.queued(verdict if envelope else replies.QQ_READ_ERROR, 1)


def test_daily_limit_at_mail_and_at_data_end():
    limit = FakeLimit()
    s = session(limits=limit, clock=lambda: 5)
    s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))
    assert send(s) == b"250 ok 5 qp 1\r\n" and send(s) == b"250 ok 5 qp 1\r\n"
    assert limit.used == 2
    assert s.handle(b"MAIL FROM:<a@b>")[0] == replies.LIMIT_REACHED
    limit.used = 1
    assert s.handle(b"MAIL FROM:<a@b>")[0] == replies.OK
    limit.used = 2  # a parallel session takes the last one between MAIL and the end of DATA
    s.handle(b"RCPT TO:<x@example.com>")
    s.handle(b"DATA")
    s.open_message(True)
    s.decoder.feed(b"x\r\n.\r\n")
    assert s.finish_message() is None
    assert s.queued(replies.QQ_READ_ERROR, 1) == replies.LIMIT_REACHED and limit.used == 2
    limit.used = 1
    assert send(s, verdict=b"Zqq temporary problem (#4.3.0)") == (
        b"451 qq temporary problem (#4.3.0)\r\n")
    assert limit.used == 1 and limit.refunds == 1  # charged, refused, given back
    limit.broken = True
    assert s.handle(b"MAIL FROM:<a@b>")[0] == replies.LIMIT_UNAVAILABLE
    limit.broken = False
    s.handle(b"RCPT TO:<x@example.com>")
    s.handle(b"DATA")
    s.open_message(True)
    s.decoder.feed(b"x\r\n.\r\n")
    limit.broken = True
    assert s.finish_message() is None
    assert s.queued(replies.QQ_READ_ERROR, 1) == replies.LIMIT_UNAVAILABLE


def test_recipients_beyond_what_is_left_get_452_and_the_rest_are_charged():
    limit = FakeLimit(used=1, limit=4)
    notes = []
    s = session(limits=limit, clock=lambda: 5, note=notes.append)
    s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))
    assert s.handle(b"MAIL FROM:<a@b>")[0] == replies.OK
    answers = [s.handle(b"RCPT TO:<r%d@example.com>" % i)[0] for i in range(5)]
    assert answers == [replies.OK] * 3 + [replies.LIMIT_RECIPIENTS] * 2
    assert len(notes) == 1 and "user=alice ip=198.51.100.7 at=RCPT" in notes[0]
    s.handle(b"DATA")
    s.open_message(True)
    s.decoder.feed(b"x\r\n.\r\n")
    assert s.finish_message().count(b"T") == 3
    assert s.queued(b"", 1) == b"250 ok 5 qp 1\r\n" and limit.used == 4
    assert s.handle(b"MAIL FROM:<a@b>")[0] == replies.LIMIT_REACHED and len(notes) == 2


def test_a_message_the_rest_of_the_day_cannot_hold_is_refused_whole():
    limit = FakeLimit(limit=3)
    s = session(limits=limit, note=lambda text: None)
    s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))
    s.handle(b"MAIL FROM:<a@b>")
    s.handle(b"RCPT TO:<r1@example.com>")
    s.handle(b"RCPT TO:<r2@example.com>")
    limit.used = 2  # a parallel session used two of the three meanwhile
    s.handle(b"DATA")
    s.open_message(True)
    s.decoder.feed(b"x\r\n.\r\n")
    assert s.finish_message() is None
    assert s.queued(replies.QQ_READ_ERROR, 1) == replies.LIMIT_REACHED and limit.used == 2


def test_oversized_message_is_never_charged():
    limit = FakeLimit()
    s = session(limits=limit, databytes=3)
    s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))
    assert send(s) == replies.TOO_BIG and limit.used == 0


def test_unauthenticated_sessions_are_never_charged():
    limit = FakeLimit(used=99)
    s = session(limits=limit, clock=lambda: 5)
    assert send(s) == b"250 ok 5 qp 1\r\n" and limit.used == 99
    s.handle(b"AUTH PLAIN " + b64(b"\0alice\0wrong"))
    assert send(s) == b"250 ok 5 qp 1\r\n" and limit.used == 99


def test_tempfail_reasons_each_have_their_454():
    for reason, reply in replies.AUTH_TEMPORARY.items():
        s = session(auth=FakeAuth(tempfail=reason))
        assert s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))[0] == reply
        assert reply.startswith(b"454 ")


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def authenticator(tmp_path, env: dict, argv: list[bytes]) -> tuple[Authenticator, Recorder]:
    sleep = Recorder()
    return Authenticator("checkpassword", argv, Controls(bytes(tmp_path)), env,
                         b"192.0.2.1", sleep=sleep), sleep


def test_authenticator_delays_failures_only(tmp_path, capfd):
    from harness.paths import FAKE_CHECKPASSWORD

    checker = [str(FAKE_CHECKPASSWORD).encode()]  # reads fd 3, as a real one does
    (tmp_path / "authfaildelay").write_text("7\n")
    ok, sleep = authenticator(tmp_path, {}, checker)
    assert ok.check(b"alice", b"wonderland", b"PLAIN").ok and sleep.sleeps == []
    bad, sleep = authenticator(tmp_path, {b"AUTHFAILDELAY": b"99999999999999999999999"},
                               checker)
    verdict = bad.check(b"mallory", b"pw", b"LOGIN")
    assert not verdict.ok and verdict.tempfail is None
    assert sleep.sleeps == [MAX_SECONDS]  # a huge delay is clamped, not an OverflowError
    log = capfd.readouterr().err
    assert "auth ok user=alice ip=192.0.2.1 mech=PLAIN" in log
    assert "auth fail user=mallory ip=192.0.2.1 mech=LOGIN" in log


def test_authenticator_turns_a_missing_program_into_a_tempfail(tmp_path):
    a, sleep = authenticator(tmp_path, {b"AUTHMAXFAIL": b"0"}, [b"/nonexistent/checkpassword"])
    verdict = a.check(b"alice", b"pw", b"PLAIN")
    assert verdict.tempfail == auth.NO_START and sleep.sleeps == []
    assert a.max_failures == 1  # at least one try, whatever the file says


def test_backend_is_chosen_by_the_first_setting_present(tmp_path):
    controls = Controls(bytes(tmp_path))
    assert auth_backend([], {}, controls) is None
    assert auth_backend([], {b"AUTHDB": b"dbname=mail"}, controls) == ("postgres", "dbname=mail")
    assert auth_backend([b"/bin/cp", b"/bin/true"], {b"AUTHDB": b"x"}, controls) == (
        "checkpassword", [b"/bin/cp", b"/bin/true"])
    (tmp_path / "authdb").write_text("dbname=fromfile\n")
    assert auth_backend([], {}, controls) == ("postgres", "dbname=fromfile")


def test_sasl_decoding_is_strict():
    assert sasl.decode(b"YWxpY2U=") == b"alice"
    for bad in (b"YWxpY2U", b"YWx pY2U=", b"YWxpY2U=junk", b"!!!!"):
        assert sasl.decode(bad) is None
    assert sasl.split_plain(b"\0u\0p\0q") == (b"", b"u", b"p\0q")
    assert sasl.split_plain(b"bob\0alice\0pw") == (b"bob", b"alice", b"pw")


def test_the_account_check_needs_nothing_from_smtp():
    """A POP3 checkpassword program reuses accounts.verify() without the SMTP side."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from qmail_esmtpd.auth import accounts, db\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('qmail_esmtpd'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "qmail_esmtpd.auth.accounts" in out
    smtp = {"replies", "protocol", "server", "lineio", "queue", "cli", "auth.sasl",
            "auth.postgres", "rcpthosts", "received"}
    assert not {f"qmail_esmtpd.{name}" for name in smtp} & set(out), out


def test_senders_are_the_login_when_binding_is_on(tmp_path):
    from harness.paths import FAKE_CHECKPASSWORD

    checker = [str(FAKE_CHECKPASSWORD).encode(), b"/bin/true"]
    bound, _ = authenticator(tmp_path, {b"SENDERBINDING": b"1"}, checker)
    assert bound.check(b"bob@example.com", b"s3cret", b"PLAIN").senders == frozenset(
        {b"bob@example.com"})
    assert bound.check(b"alice", b"wonderland", b"PLAIN").senders == frozenset()
    free, _ = authenticator(tmp_path, {}, checker)
    assert free.check(b"alice", b"wonderland", b"PLAIN").senders is None


def test_an_auth_check_sees_the_user_and_may_refuse_the_login():
    seen = []

    def second_try_only(session, user):
        seen.append(user)
        return None if len(seen) > 1 else (b"535 not now\r\n", protocol.BUFFER)

    s = session(plugins=(Hooks(auth=second_try_only),))
    assert s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw")) == (b"535 not now\r\n",
                                                              protocol.FLUSH)
    assert (s.user, s.relayclient, s.protocol()) == (None, None, b"SMTP")
    assert s.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw"))[0] == replies.AUTH_OK
    assert seen == [b"alice", b"alice"] and s.user == b"alice"
