"""SMTPUTF8 (RFC 6531, issue 27): the switch, the keyword, the parameter and
the Received line's `with`, as the qmail-smtputf8 patch has them (the
recorded transcripts in tests/conformance/golden-utf8 are the reference);
one address everywhere else: rcpthosts, morercpthosts.cdb, locals and
virtualdomains with a domain in either IDNA form, sender binding, plugins,
the daily limit and the logs; end to end with smtplib through real
tcpserver and through the warm server."""

import base64
import os
import smtplib
import subprocess
import sys

import cdblib
import pytest

from qmail_esmtpd import protocol, replies
from qmail_esmtpd.check_authsender import AuthenticatedSender, sender_key
from qmail_esmtpd.check_rcpthosts import RcptHosts
from qmail_esmtpd.check_smtputf8 import Smtputf8
from qmail_esmtpd.config import Settings, configured_checks
from qmail_esmtpd.idn import ascii_form, unicode_form
from qmail_esmtpd.log import printable
from qmail_esmtpd.mailboxes import DELIVERED, REMOTE, UNKNOWN, Mailboxes
from qmail_esmtpd.protocol import Checks, Peer, Session

from harness.core_checks import Hooks
from harness.paths import SERVER
from harness.processes import imported_modules

JORG = "jörg@müller.example"
JORG_ACE = "jörg@xn--mller-kva.example"
YONGHU = "用户@例子.中国"
MESSAGE = "From: Jörg <jörg@müller.example>\r\nSubject: Grüße\r\n\r\n你好\r\n".encode()


def session(*checks, **kw) -> Session:
    return Session(b"mx.example.com", Peer(b"198.51.100.7", b"client.example.net", None,
                                           b"mx.example.com"),
                   checks=Checks.assemble(checks), **kw)


def received_with(s: Session) -> bytes:
    return s.received_header().split(b" with ")[1].split(b";")[0]


# -- the switch ------------------------------------------------------------------

@pytest.mark.parametrize("control, env, on", [
    (None, None, False), ("1", None, True), ("0", None, False), ("yes", None, False),
    ("0", "1", True), ("1", "0", False), (None, "2", True), ("1", "", False),
])
def test_control_file_and_variable(tmp_path, control, env, on):
    """control/smtputf8 (the notqmail PR's name), $SMTPUTF8 over it, so tcprules
    can turn it on or off for some clients."""
    (tmp_path / "me").write_text("mx.example.com\n")
    if control is not None:
        (tmp_path / "smtputf8").write_text(control + "\n")
    environ = {b"QMAIL_CONTROL": str(tmp_path).encode()}
    if env is not None:
        environ[b"SMTPUTF8"] = env.encode()
    settings = Settings(environ)
    assert settings.smtputf8 is on
    assert any(isinstance(c, Smtputf8) for c in configured_checks(settings)) is on


def test_off_nothing_changes_and_nothing_is_imported(tmp_path):
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "rcpthosts").write_text("example.com\n")
    loaded = imported_modules({"QMAIL_CONTROL": str(tmp_path), "QMAILQUEUE": "/bin/true"},
                              b"EHLO x\r\nMAIL FROM:<a@b> SMTPUTF8\r\nQUIT\r\n")
    assert "qmail_esmtpd.check_smtputf8" not in loaded
    s = session()
    assert b"SMTPUTF8" not in s.handle(b"EHLO x")[0]
    s.handle(b"MAIL FROM:<%s> SMTPUTF8" % JORG.encode())
    assert received_with(s) == b"SMTP"  # a client that asks anyway gets notqmail's word


def test_on_a_plain_session_loads_no_idna(tmp_path):
    """With the switch on, an ASCII session pays for the check module only."""
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "rcpthosts").write_text("müller.example\nexample.com\n", encoding="utf-8")
    (tmp_path / "smtputf8").write_text("1\n")
    env = {"QMAIL_CONTROL": str(tmp_path), "QMAILQUEUE": "/bin/true"}
    plain = b"EHLO x\r\nMAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"
    loaded = imported_modules(env, plain)
    assert "qmail_esmtpd.check_smtputf8" in loaded
    assert not loaded & {"idna", "qmail_esmtpd.idn", "unicodedata"}
    international = plain.replace(b"u@example.com", b"u@xn--mller-kva.example")
    assert {"idna", "qmail_esmtpd.idn"} <= imported_modules(env, international)
    (tmp_path / "rcpthosts").write_text("xn--mller-kva.example\nexample.com\n")
    assert not {"idna", "qmail_esmtpd.idn"} & imported_modules(env, international)  # as listed
    unlisted = plain.replace(b"u@example.com", b"u@xn--fsqu00a.xn--fiqs8s")
    loaded = imported_modules(env, unlisted)  # an A-label against A-labels: no idna
    assert "qmail_esmtpd.idn" in loaded and "idna" not in loaded


# -- keyword, parameter, Received ------------------------------------------------

def test_keyword_after_pipelining_wherever_the_others_are():
    s = session(Smtputf8())
    assert s.handle(b"EHLO x")[0] == (b"250-mx.example.com\r\n250-PIPELINING\r\n"
                                      b"250-SMTPUTF8\r\n250 8BITMIME\r\n")

    class Auth:
        mechanisms = (b"LOGIN", b"PLAIN")

    s = session(Smtputf8(), auth=Auth(), tls_offered=True)
    assert s.ehlo_keywords() == [b"STARTTLS", b"PIPELINING", b"SMTPUTF8", b"8BITMIME",
                                 b"SIZE 0", b"AUTH LOGIN PLAIN"]


def test_with_words_are_rfc_6531s_per_transaction():
    s = session(Smtputf8())
    s.handle(b"EHLO x")
    assert s.handle(b"MAIL FROM:<%s> smtputf8" % JORG.encode())[0] == replies.OK
    assert received_with(s) == b"UTF8SMTP"
    s.handle(b"RSET")
    s.handle(b"MAIL FROM:<a@b>")
    assert received_with(s) == b"SMTP"  # the patch would still say UTF8 (kept-back U11)
    s.handle(b"MAIL FROM:<a@b> SMTPUTF8")
    s.user = b"alice"
    assert received_with(s) == b"UTF8SMTPA"
    s.user, s.tls = None, b"TLS_AES_256_GCM_SHA384"
    assert s.protocol() == b"UTF8SMTPS (TLS_AES_256_GCM_SHA384 encrypted)"
    s.user = b"alice"
    assert s.protocol() == b"UTF8SMTPSA (TLS_AES_256_GCM_SHA384 encrypted, authenticated)"
    assert s.handle(b"MAIL FROM:<a@b> SMTPUTF8=yes")[0] == replies.OK  # another name
    assert s.protocol().startswith(b"ESMTPSA (")


def test_a_refused_mail_leaves_the_transaction_as_it_was():
    def refuse_bad(session, sender):
        return (b"553 no\r\n", protocol.BUFFER) if sender.startswith(b"bad") else None

    s = session(Smtputf8(), Hooks(mail=refuse_bad))
    s.handle(b"MAIL FROM:<a@b>")
    assert s.handle(b"MAIL FROM:<bad@b> SMTPUTF8")[0] == b"553 no\r\n"
    assert received_with(s) == b"SMTP"
    s.handle(b"MAIL FROM:<%s> SMTPUTF8" % JORG.encode())
    assert s.handle(b"MAIL FROM:<bad@b>")[0] == b"553 no\r\n"
    assert received_with(s) == b"UTF8SMTP"


def test_addresses_pass_byte_for_byte_and_nothing_is_refused():
    s = session(Smtputf8())
    for sender in (JORG.encode(), b"\xff\xfe@x.example", b"\xed\xa0\x80@x.example", b""):
        assert s.handle(b"MAIL FROM:<%s> SMTPUTF8" % sender)[0] == replies.OK
        assert s.handle(b"RCPT TO:<%s>" % YONGHU.encode())[0] == replies.OK
        assert s.handle(b"DATA") == (b"", protocol.DATA)
        assert s.envelope() == b"F%s\0T%s\0\0" % (sender, YONGHU.encode())


# -- one domain, two forms -------------------------------------------------------

@pytest.mark.parametrize("domain, a_form, u_form", [
    ("müller.example", "xn--mller-kva.example", "müller.example"),
    ("MÜLLER.Example", "xn--mller-kva.example", "müller.example"),
    ("XN--MLLER-KVA.example", "xn--mller-kva.example", "müller.example"),
    ("例子。中国", "xn--fsqu00a.xn--fiqs8s", "例子.中国"),  # the ideographic full stop
    (".müller.example", ".xn--mller-kva.example", ".müller.example"),
    ("mail_1.müller.example", "mail_1.xn--mller-kva.example", "mail_1.müller.example"),
    ("xn--zz.example", "xn--zz.example", "xn--zz.example"),  # not punycode: as it is
    ("a\u0308.example", "xn--4ca.example", "ä.example"),  # NFC
])
def test_domain_forms(domain, a_form, u_form):
    assert ascii_form(domain.encode()) == a_form.encode()
    assert unicode_form(domain.encode()) == u_form.encode()


def test_domains_that_are_not_utf8_stay_as_they_are():
    assert ascii_form(b"\xff.Example") == b"\xff.example"


def test_without_the_library_domains_match_as_written(monkeypatch, capfd):
    """A broken installation refuses no more than qmail-smtpd would, and says so once."""
    from qmail_esmtpd import idn

    monkeypatch.setitem(sys.modules, "idna", None)  # import idna fails
    monkeypatch.setattr(idn, "_missing", False)
    assert ascii_form("MÜLLER.example".encode()) == "mÜller.example".encode()
    assert unicode_form(b"xn--mller-kva.example") == b"xn--mller-kva.example"
    assert not RcptHosts([b"xn--mller-kva.example"])(JORG.encode())
    assert capfd.readouterr().err.count("international domains compared as written") == 1


@pytest.mark.parametrize("entries, listed, refused", [
    ([b"xn--mller-kva.example"], [JORG, "x@MÜLLER.example", "x@xn--mller-kva.example"],
     ["x@müller.test", "x@sub.müller.example"]),
    ([b"m\xc3\xbcller.example"], [JORG, JORG_ACE, "x@XN--MLLER-KVA.EXAMPLE"],
     ["x@xn--mller-kva.test"]),
    ([".例子.中国".encode()], ["x@mail.xn--fsqu00a.xn--fiqs8s", "x@a.例子.中国"],
     [YONGHU, "x@xn--fsqu00a.xn--fiqs8s"]),
    ([b"example.com"], ["x@example.com", "x@EXAMPLE.com"], [JORG, "x@\xff.example"]),
])
def test_rcpthosts_either_form(entries, listed, refused):
    rcpthosts = RcptHosts(entries)
    for address in listed:
        assert rcpthosts(address.encode("utf-8", "surrogateescape")) is True, address
    for address in refused:
        encoded = address.encode("latin-1") if "\xff" in address else address.encode()
        assert rcpthosts(encoded) is False, address


def test_morercpthosts_keys_in_either_form(tmp_path):
    cdb = tmp_path / "morercpthosts.cdb"
    with open(cdb, "wb") as f, cdblib.Writer(f) as writer:
        writer.put(b"xn--mller-kva.example", b"")
        writer.put(".例子.中国".encode(), b"")
    rcpthosts = RcptHosts([b"example.com"], str(cdb).encode())
    assert rcpthosts(JORG.encode()) and rcpthosts(b"x@XN--MLLER-KVA.example")
    assert rcpthosts(b"x@mail.xn--fsqu00a.xn--fiqs8s") and rcpthosts("x@a.例子.中国".encode())
    assert not rcpthosts(YONGHU.encode()) and not rcpthosts(b"x@\xff.example")


def homes(tmp_path):
    """One system user, jorg, whose home delivers `jorg-jörg` (.qmail-jörg)."""
    home = tmp_path / "jorg"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / ".qmail-jörg").write_text("./Maildir/\n", encoding="utf-8")
    (home / ".qmail-jörg").chmod(0o644)
    uid = os.getuid() or 1000
    if os.getuid() == 0:
        os.chown(home, uid, uid)
        os.chown(home / ".qmail-jörg", uid, uid)
    return {b"jorg": (uid, uid, str(home).encode())}


def test_locals_and_virtualdomains_in_either_form(tmp_path):
    """A domain qmail-send would send away, listed in its other form, is ours;
    the local part goes on as qmail has it (UTF-8 bytes, ASCII lower-cased)."""
    users = homes(tmp_path)
    boxes = Mailboxes([b"xn--mller-kva.example"], ["例子.中国:jorg".encode()], b"mx.example",
                      str(tmp_path / "users" / "cdb").encode(), users.get)
    assert boxes.local_part(JORG.encode()) == "jörg".encode()
    assert boxes.local_part(b"J\xc3\xb6rg@M\xc3\x9cLLER.example") == "Jörg".encode()
    assert boxes.local_part(b"x@xn--fsqu00a.xn--fiqs8s") == b"jorg-x"
    assert boxes.local_part(b"x@example.org") is None
    assert boxes.verdict("jorg-jörg@例子.中国".encode())[0] == UNKNOWN  # jorg-jorg-jörg
    assert boxes.verdict("jörg@xn--fsqu00a.xn--fiqs8s".encode())[0] == DELIVERED


def test_what_qmail_send_matches_as_written_stands(tmp_path):
    """qmail-send compares bytes: a catch-all or an explicit `domain:` (remote)
    it matches wins over a listing of the other form."""
    users = homes(tmp_path)
    catchall = Mailboxes([], [b"xn--mller-kva.example:nobody", b":jorg"], b"mx.example",
                         b"/nonexistent", users.get)
    assert catchall.local_part(JORG.encode()) == "jorg-jörg".encode()
    remote = Mailboxes([b"xn--mller-kva.example"], ["müller.example:".encode()], b"mx.example",
                       b"/nonexistent", users.get)
    assert remote.verdict(JORG.encode())[0] == REMOTE
    assert remote.local_part(JORG_ACE.encode()) == "jörg".encode()


# -- sender binding --------------------------------------------------------------

@pytest.mark.parametrize("one, other", [
    ("alice@example.org", "Alice@EXAMPLE.org"),
    (JORG, "JÖRG@MÜLLER.example"),
    (JORG, "JÖRG@xn--mller-kva.example"),
    ("jo\u0308rg@müller.example", JORG),  # NFD from the client, NFC in the table
    ("ärger@例子.中国", "ÄRGER@xn--fsqu00a.xn--fiqs8s"),
    ("straße@x.example", "STRASSE@x.example"),  # full case folding
])
def test_sender_keys_equal(one, other):
    assert sender_key(one.encode()) == sender_key(other.encode())


@pytest.mark.parametrize("one, other", [
    (JORG, "jorg@müller.example"), (JORG, "jörg@muller.example"),
    ("a@example.org", "a@example.org.evil"), ("\xff@x", "\xfe@x"),
])
def test_sender_keys_differ(one, other):
    assert sender_key(one.encode("latin-1") if "\xff" in one else one.encode()) != \
        sender_key(other.encode("latin-1") if "\xfe" in other else other.encode())


def test_sender_binding_by_keys():
    s = session(AuthenticatedSender(), Smtputf8())
    s.user = JORG.encode()
    s.senders = frozenset([JORG.encode(), "ärger@例子.中国".encode()])
    for sender in ("JÖRG@xn--mller-kva.example", "Ärger@例子.中国", ""):
        assert s.handle(b"MAIL FROM:<%s> SMTPUTF8" % sender.encode())[0] == replies.OK
    assert s.handle(b"MAIL FROM:<jorg@m\xc3\xbcller.example>")[0] == replies.SENDER_NOT_YOURS


# -- the logs --------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    (JORG.encode(), JORG),
    (YONGHU.encode(), YONGHU),
    (b"a b\\c", "a\\x20b\\x5cc"),
    (b"x\r\nqmail-esmtpd: auth ok", "x\\x0d\\x0aqmail-esmtpd:\\x20auth\\x20ok"),
    ("x\u2028y\u0085z".encode(), "x\\xe2\\x80\\xa8y\\xc2\\x85z"),  # line separators
    ("\u202egnp.exe".encode(), "\\xe2\\x80\\xaegnp.exe"),  # a bidi override
    ("a\u00a0b\u3000c\u200bd".encode(), "a\\xc2\\xa0b\\xe3\\x80\\x80c\\xe2\\x80\\x8bd"),
    (b"\xff\xc3(\xed\xa0\x80", "\\xff\\xc3(\\xed\\xa0\\x80"),  # not UTF-8, a surrogate
])
def test_log_shows_utf8_and_escapes_the_rest(raw, shown):
    assert printable(raw, 256) == shown


def test_log_limit_counts_characters():
    assert printable("é".encode() * 70) == "é" * 64 + "..."
    assert printable("é".encode() * 64) == "é" * 64
    assert printable(b"x" * 65) == "x" * 64 + "..."


def test_log_plain_ascii_shortcut_escapes_what_the_walk_escapes():
    """printable() returns plain ASCII names as they are without looking at
    each character: only bytes 0x21-0x7E but the backslash may take it."""
    for byte in range(256):
        alone = 0x21 <= byte < 0x7F and byte != 0x5C
        assert printable(b"ab" + bytes([byte])) == "ab" + (
            chr(byte) if alone else f"\\x{byte:02x}"), byte
    assert printable(b"alice@example.org") == "alice@example.org"
    assert printable(b"") == ""
    assert printable(b"abc", 2) == "ab..." and printable(b"ab", 2) == "ab"


# -- end to end ------------------------------------------------------------------

def sendmail(port: int, recipients: list[str], sender: str = JORG) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as c:
        c.sendmail(sender, recipients, MESSAGE, mail_options=["SMTPUTF8"])


def check_queued(queue, recipients):
    (run,) = queue.queued()
    envelope = base64.b64decode(run["envelope_b64"])
    assert envelope == b"F%s\0%s\0" % (JORG.encode(), b"".join(
        b"T%s\0" % r.encode() for r in recipients))
    first, second = run["message"].split(b"\n")[:2]
    assert second.startswith(b"  by localhost with UTF8SMTP; ")
    assert run["message"].endswith("Subject: Grüße\n\n你好\n".encode())


@pytest.mark.parametrize("frontend", ["tcpserver", "forkserver"])
def test_smtplib_through_a_real_frontend(request, frontend, control, queue):
    """smtplib speaks SMTPUTF8 only where EHLO offers it (else it refuses to
    send); recipients in either form of an rcpthosts domain are taken."""
    (control / "rcpthosts").write_text("example.com\nxn--mller-kva.example\n.例子.中国\n",
                                       encoding="utf-8")
    (control / "smtputf8").write_text("1\n")
    for name in ("rcpthosts", "smtputf8"):
        (control / name).chmod(0o644)
    start = request.getfixturevalue(frontend)
    server = start(":allow\n")
    recipients = [JORG, "x@mail.xn--fsqu00a.xn--fiqs8s", "用户@mail.例子.中国"]
    sendmail(server.port, recipients)
    check_queued(queue, recipients)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        sendmail(server.port, [YONGHU])  # not a subdomain: 553
    assert "Traceback" not in server.log()


def test_only_for_the_clients_tcprules_name(tcpserver, control, queue):
    """SMTPUTF8="1" for loopback in the rules, off for the rest (the file says 0)."""
    (control / "smtputf8").write_text("0\n")
    (control / "rcpthosts").write_text("müller.example\n", encoding="utf-8")
    on = tcpserver('127.0.0.1:allow,SMTPUTF8="1"\n:allow\n')
    off = tcpserver(':allow,SMTPUTF8="0"\n')
    sendmail(on.port, [JORG])
    check_queued(queue, [JORG])
    with pytest.raises(smtplib.SMTPNotSupportedError):
        sendmail(off.port, [JORG])


def test_plugins_see_the_bytes_and_rcpthosts_either_form(tcpserver, control, queue, tmp_path):
    seen = tmp_path / "seen"
    (control / "rcpthosts").write_text("müller.example\n", encoding="utf-8")
    (control / "smtputf8").write_text("1\n")
    (control / "smtpplugins").write_text(
        f"[mail]\n:printf '%s\\n' \"$SMTPMAILFROM\" >> {seen}\n"
        f"[rcpt]\n:printf '%s %s\\n' \"$SMTPRCPTTO\" \"$SMTPRCPTHOSTSOK\" >> {seen}\n")
    server = tcpserver()
    sendmail(server.port, [JORG_ACE, JORG])
    assert seen.read_bytes() == (f"{JORG}\n{JORG_ACE} 1\n{JORG} 1\n").encode()


def auth_plain(c: smtplib.SMTP, user: str, password: str) -> None:
    """smtplib sends AUTH in ASCII only; a UTF-8 name goes by hand."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    assert c.docmd("AUTH", "PLAIN " + token)[0] == 235


def test_utf8_account_binding_and_daily_limit(db, tcpserver, control, queue):
    uid = db.add(JORG, "geheim", sendlimit=2)
    db.sql("INSERT INTO sendas (id, address) VALUES (%s, %s)", (uid, "ärger@例子.中国"))
    (control / "smtputf8").write_text("1\n")
    server = tcpserver(":allow\n", env=db.env(SENDERBINDING="1"))
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=60) as c:
        c.ehlo()
        auth_plain(c, JORG, "geheim")
        c.command_encoding = "utf-8"
        for sender in ("JÖRG@xn--mller-kva.example", "Ärger@XN--FSQU00A.xn--fiqs8s"):
            assert c.mail(sender, ["SMTPUTF8"])[0] == 250, sender
            c.rset()
        code, _ = c.mail("jorg@müller.example", ["SMTPUTF8"])
        assert code == 553
        c.sendmail(JORG, [YONGHU, "x@example.org"], MESSAGE, mail_options=["SMTPUTF8"])
        code, _ = c.mail(JORG, ["SMTPUTF8"])
        assert code == 451  # the limit: two recipients today
    (run,) = queue.queued()
    assert run["message"].split(b"\n")[1].startswith(b"  by localhost with UTF8SMTPA; ")
    assert run["message"].startswith(
        b"Received: from unknown (HELO client.test) (j??rg@m??ller.example@127.0.0.1)")
    assert db.counts(JORG) == (2, 2)
    log = server.log()
    assert f"auth ok user={JORG} ip=127.0.0.1" in log
    assert f"sendlimit refused user={JORG} ip=127.0.0.1 at=MAIL" in log


def test_the_server_program_offers_it_on_pipes(tmp_path):
    """The installed launcher, no frontend: the keyword with the switch on."""
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "smtputf8").write_text("1\n")
    out = subprocess.run([str(SERVER)], input=b"EHLO x\r\nQUIT\r\n", capture_output=True,
                         env={"QMAIL_CONTROL": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         timeout=30)
    assert b"250-PIPELINING\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n" in out.stdout
