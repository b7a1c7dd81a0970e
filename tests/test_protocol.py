"""Unit tests of the pure protocol core: Session, DataDecoder, addresses, Received."""

import pytest

from qmail_esmtpd import protocol, replies
from qmail_esmtpd.address import bracketed_ipv4, parse, rewrite_localiphost
from qmail_esmtpd.message import BARE_LF, END, MORE, DataDecoder, date822, received, safe
from qmail_esmtpd.protocol import Peer, Session

from harness.core_checks import Hooks, core_checks, ours


def make_session(rcpthosts=ours, badmailfrom=None, plugins=(), last=(), auth_checks=False,
                 **kw) -> Session:
    auth_checks = auth_checks or kw.get("auth") is not None
    kw.setdefault("checks", core_checks(rcpthosts, badmailfrom, auth_checks, plugins, last))
    return Session(b"mx.example.com", Peer(b"198.51.100.7", b"client.example.net",
                                           None, b"mx.example.com"), **kw)


def test_banner_and_quit():
    s = make_session()
    assert s.banner() == b"220 mx.example.com ESMTP\r\n"
    assert s.handle(b"quit now") == (b"221 mx.example.com\r\n", protocol.QUIT)


def test_verbs_are_case_insensitive_but_exact():
    s = make_session()
    assert s.handle(b"nOoP")[0] == replies.OK
    for line in (b"HELO\tx", b" HELO x", b"HELOx", b"", b"AUTH LOGIN", b"STARTTLS"):
        assert s.handle(line) == (replies.UNIMPLEMENTED, protocol.FLUSH)


def test_nul_ends_the_line():
    s = make_session()
    assert s.handle(b"\0HELO x")[0] == replies.UNIMPLEMENTED
    s.handle(b"HELO good\0bad")
    assert s.helo == b"good"


def test_ehlo_lists_only_pipelining_and_8bitmime():
    s = make_session()
    assert s.handle(b"EHLO x")[0] == (
        b"250-mx.example.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n")


def test_transaction_order():
    s = make_session()
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.WANT_MAIL
    assert s.handle(b"DATA")[0] == replies.WANT_MAIL
    assert s.handle(b"MAIL FROM:<a@x>")[0] == replies.OK
    assert s.handle(b"DATA")[0] == replies.WANT_RCPT
    assert s.handle(b"RCPT TO:<b@elsewhere.org>")[0] == replies.NO_GATEWAY
    assert s.handle(b"DATA")[0] == replies.WANT_RCPT
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.OK
    assert s.handle(b"DATA") == (b"", protocol.DATA)
    assert s.envelope() == b"Fa@x\0Tb@example.com\0\0"
    assert s.handle(b"DATA")[0] == replies.WANT_MAIL  # DATA always ends the transaction


def test_rset_helo_end_the_transaction_but_bad_mail_does_not():
    s = make_session()
    s.handle(b"MAIL FROM:<a@x>")
    assert s.handle(b"MAIL FROM:<" + b"a" * 900 + b">")[0] == replies.SYNTAX
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.OK
    assert s.handle(b"RSET")[0] == replies.FLUSHED
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.WANT_MAIL


def test_badmailfrom_is_reported_at_rcpt_even_with_relayclient():
    s = make_session(badmailfrom=frozenset({b"spam@evil.org", b"@bad.example"}),
                     relayclient=b"")
    for sender in (b"SPAM@Evil.ORG", b"x@BAD.example"):
        assert s.handle(b"MAIL FROM:<" + sender + b">")[0] == replies.OK
        assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.BADMAILFROM
    s.handle(b"MAIL FROM:<x@sub.bad.example>")
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.OK


def test_relayclient_suffix_is_appended():
    s = make_session(relayclient=b"@fixup.example")
    s.handle(b"MAIL FROM:<>")
    s.handle(b"RCPT TO:<b@anywhere.org>")
    s.handle(b"RCPT TO:<>")
    assert s.recipients == [b"b@anywhere.org@fixup.example", b"@fixup.example"]


def test_rcpthosts_error_drops_with_421():
    s = make_session(rcpthosts=lambda addr: None)
    s.handle(b"MAIL FROM:<a@x>")
    assert s.handle(b"RCPT TO:<b@x.org>") == (replies.CONTROLS, protocol.DROP)


@pytest.mark.parametrize("arg, address", [
    (b"FROM:<>", b""), (b"FROM: <>", b""), (b"FROM:", b""), (b"FROM", b""), (b"", b""),
    (b"FROM:a@b", b"a@b"), (b"FROM:   a@b SIZE=1", b"a@b"),
    (b"FROM:<a@b> SIZE=100 BODY=8BITMIME", b"a@b"), (b"<a@b>", b"a@b"), (b"junk:b@c", b"b@c"),
    (b'<"john doe"@x>', b"john doe@x"), (b'<"x>y"@x>', b"x>y@x"), (b"<a\\>b@x>", b"a>b@x"),
    (b"<@r1,@r2:user@x>", b"user@x"), (b"<@example.com>", b""),
    (b"<unterminated@x", b"unterminated@x"), (b"<first@x> <second@y>", b"first@x"),
])
def test_address_forms(arg, address):
    assert parse(arg) == address


def test_localiphost_rewrite():
    def local(ip):
        return ip in {"127.0.0.1", "0.0.0.0"}
    assert rewrite_localiphost(b"u@[127.0.0.1]", b"mx.example.com", local) == b"u@mx.example.com"
    assert rewrite_localiphost(b"u@[127.0.0.257]", b"mx", local) == b"u@mx"  # low byte
    assert rewrite_localiphost(b"u@[127.0.0.1]x", b"mx", local) == b"u@[127.0.0.1]x"
    assert rewrite_localiphost(b"u@[10.0.0.1]", b"mx", local) == b"u@[10.0.0.1]"
    assert rewrite_localiphost(b"u@[127.0.0.1]", None, local) == b"u@[127.0.0.1]"
    assert bracketed_ipv4(b"[1.2.3]") is None
    assert bracketed_ipv4(b"[1..2.3]") is None


def test_address_length_limit():
    s = make_session(rcpthosts=None)
    assert s.handle(b"MAIL FROM:<" + b"a" * 899 + b">")[0] == replies.OK
    assert s.handle(b"RCPT TO:<" + b"x" * 899 + b">")[0] == replies.OK
    assert s.handle(b"RCPT TO:<" + b"x" * 900 + b">")[0] == replies.SYNTAX


def decode(raw: bytes, databytes: int = 0, chunk: int = 0):
    """Feed `raw` whole or in `chunk`-byte pieces; -> (queued, status, rest, decoder)."""
    d = DataDecoder(databytes)
    out = []
    pieces = [raw] if not chunk else [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    for n, piece in enumerate(pieces):
        data, used, status = d.feed(piece)
        out.append(data)
        if status != MORE:
            rest = piece[used:] + b"".join(pieces[n + 1:])
            return b"".join(out), status, rest, d
    return b"".join(out), MORE, b"", d


DOTS_IN = (b"Subject: dots\r\n\r\n..two\r\n.one\r\n...\r\n..\r\n. space\r\n"
           b"not.at.start.\r\n.\rX\r\n..\r\r\na\r\r\r\nb\rc\r\n.\r\nNOOP\r\n")
DOTS_OUT = (b"Subject: dots\n\n.two\none\n..\n.\n space\nnot.at.start.\n.\rX\n.\r\n"
            b"a\r\r\nb\rc\n")


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 7])
def test_data_transparency_any_chunking(chunk):
    queued, status, rest, _ = decode(DOTS_IN, chunk=chunk)
    assert (queued, status, rest) == (DOTS_OUT, END, b"NOOP\r\n")


@pytest.mark.parametrize("raw", [b"a\nb\r\n.\r\n", b"\n.\r\n", b"x\r\n.\n", b"x\r\n.\nb"])
@pytest.mark.parametrize("chunk", [0, 1])
def test_bare_lf_is_fatal(raw, chunk):
    assert decode(raw, chunk=chunk)[1] == BARE_LF


def blast(raw: bytes) -> tuple[bytes, int, bytes]:
    """qmail-smtpd's blast(), one byte at a time: the reference the decoder's
    whole-line shortcut must agree with.  -> (queued, status, rest)."""
    out, state = bytearray(), "start"
    for n, byte in enumerate(raw):
        c = bytes((byte,))
        if state in ("start", "mid", "dot"):
            if c == b"\n":
                return bytes(out), BARE_LF, raw[n + 1:]
            if state == "start" and c == b".":
                state = "dot"
            elif c == b"\r":
                state = "dotcr" if state == "dot" else "cr"
            else:  # a dot that began the line is dropped
                out, state = out + c, "mid"
        elif state == "cr":
            if c == b"\n":
                out, state = out + b"\n", "start"
            else:
                out += b"\r" if c == b"\r" else b"\r" + c
                state = "cr" if c == b"\r" else "mid"
        else:  # dotcr
            if c == b"\n":
                return bytes(out), END, raw[n + 1:]
            out += b".\r" if c == b"\r" else b".\r" + c
            state = "cr" if c == b"\r" else "mid"
    return bytes(out), MORE, b""


@pytest.mark.parametrize("seed", range(40))
def test_decoder_agrees_with_blast_byte_by_byte(seed):
    import random

    rng = random.Random(seed)
    pieces = [b"a", b"b", b"\r\n", b"\r\n", b"\r\n", b".", b"..", b"\r", b"\n", b" ",
              b"Received: x", b"\r\n.\r\n"]
    raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))
    expected = blast(raw)
    for chunk in (0, 1, rng.randint(2, 9)):
        queued, status, rest, _ = decode(raw, chunk=chunk)
        if status == BARE_LF:  # the session ends; nothing is queued, nothing follows
            assert expected[1] == BARE_LF, (raw, chunk)
        else:
            assert (queued, status, rest if status == END else b"") == expected, (raw, chunk)


def test_empty_message():
    assert decode(b".\r\n")[:3] == (b"", END, b"")


def test_hops_counted_in_header_only():
    header = b"Received: x\r\nrEcEiVeDX\r\nDelivered-To: y\r\n Received: folded\r\n"
    body = b"\r\nReceived: in body\r\n.\r\n"
    *_, d = decode(header + body, chunk=5)
    assert d.hops == 3
    *_, d = decode(b"Received: x\r\n" * 100 + b".\r\n")
    assert d.hops == 100


def test_databytes_counts_queued_bytes():
    raw = b"..12345678\r\n.\r\n"  # queued as ".12345678\n": 10 bytes
    assert not decode(raw, databytes=10)[3].overflow
    queued, status, _, d = decode(raw, databytes=9)
    assert d.overflow and status == END and queued == b""


def message(s: Session, raw: bytes) -> bytes | None:
    """Open a message, feed `raw` whole, and return what finish_message() says."""
    assert s.open_message(True) == replies.GO_AHEAD
    assert s.decoder is not None
    s.decoder.feed(raw)
    return s.finish_message()


def test_final_reply_order():
    s = make_session(clock=lambda: 1764100000.0, databytes=5)
    s.handle(b"MAIL FROM:<a@x>")
    s.handle(b"RCPT TO:<b@example.com>")
    assert message(s, b"hi\r\n.\r\n") == b"Fa@x\0Tb@example.com\0\0"
    assert s.queued(b"", 4242) == b"250 ok 1764100000 qp 4242\r\n"
    assert message(s, b"Received: x\r\n" * 100 + b".\r\n") is None  # looping and too big
    assert s.queued(replies.QQ_READ_ERROR, 1) == replies.TOO_MANY_HOPS
    assert message(s, b"123456\r\n.\r\n") is None
    assert s.queued(replies.QQ_READ_ERROR, 1) == replies.TOO_BIG
    message(s, b".\r\n")
    assert s.queued(b"Dno way", 1) == b"554 no way\r\n"
    message(s, b".\r\n")
    assert s.queued(b"Zlater", 1) == b"451 later\r\n"


def test_queue_that_cannot_start_is_451_and_ends_the_transaction():
    s = make_session()
    s.handle(b"MAIL FROM:<a@x>")
    s.handle(b"RCPT TO:<b@example.com>")
    s.handle(b"DATA")
    assert s.open_message(False) == replies.QQT_FAILURE and s.decoder is None
    assert s.handle(b"DATA")[0] == replies.WANT_MAIL


def test_huge_numbers_are_replies_not_tracebacks():
    s = make_session(rcpthosts=None, databytes=1000, auth=None)
    digits = b"9" * 5000
    s.handle(b"MAIL FROM:<a@b>")
    assert s.handle(b"RCPT TO:<u@[127.0.0." + digits + b"]>")[0] == replies.SYNTAX
    assert s.handle(b"RCPT TO:<u@[127.0.0.1]>")[0] == replies.OK
    assert protocol.mail_parameters(b"FROM:<a@b> SIZE=" + digits) == [(b"SIZE=", digits)]
    low_byte = 0
    for _ in range(4999):  # 4999 ones modulo 256, digit by digit as scan_ulong goes
        low_byte = (low_byte * 10 + 1) % 256
    assert bracketed_ipv4(b"[127.0.0." + b"1" * 4999 + b"]") == f"127.0.0.{low_byte}"


def test_received_line():
    line = received(b"client.example.net", b"liar.example.org", None, b"198.51.100.7",
                    b"mx.example.com", b"SMTP", 1764100000)
    assert line == (b"Received: from client.example.net (HELO liar.example.org) "
                    b"(198.51.100.7)\n  by mx.example.com with SMTP; 25 Nov 2025 19:46:40 -0000\n")
    assert safe("h\u00e9<x> [1]".encode()) == b"h???x??[1]"
    assert date822(0) == b"1 Jan 1970 00:00:00 -0000"


def test_received_helo_omitted_when_it_matches_remotehost():
    s = make_session(clock=lambda: 0)
    s.handle(b"HELO CLIENT.example.NET")
    assert b"(HELO" not in s.received_header()
    s.handle(b"HELO")
    assert b"(HELO ) (198.51.100.7)" in s.received_header()


def test_starttls_only_with_a_certificate_and_the_session_starts_over():
    s = make_session(tls_offered=True, clock=lambda: 0)
    assert s.handle(b"EHLO x")[0] == (b"250-mx.example.com\r\n250-STARTTLS\r\n"
                                      b"250-PIPELINING\r\n250 8BITMIME\r\n")
    assert s.handle(b"STARTTLS now") == (replies.STARTTLS_PARAMETERS, protocol.FLUSH)
    s.handle(b"MAIL FROM:<a@x>")
    assert s.handle(b"STARTTLS") == (b"", protocol.STARTTLS)
    assert s.starttls_ready(False) == replies.TLS_UNAVAILABLE
    assert s.starttls_ready(True) == replies.STARTTLS_READY
    s.tls_started(b"TLS_AES_256_GCM_SHA384")
    assert s.helo is None and s.handle(b"RCPT TO:<b@example.com>")[0] == replies.WANT_MAIL
    assert b"STARTTLS" not in s.handle(b"EHLO x")[0]
    assert s.handle(b"STARTTLS")[0] == replies.UNIMPLEMENTED
    assert s.protocol() == b"ESMTPS (TLS_AES_256_GCM_SHA384 encrypted)"
    s.user = b"alice"
    assert s.protocol() == b"ESMTPSA (TLS_AES_256_GCM_SHA384 encrypted, authenticated)"


class Mechanisms:
    mechanisms = (b"LOGIN", b"PLAIN")


def test_auth_only_under_tls_when_a_certificate_is_configured():
    notes: list[str] = []
    s = make_session(tls_offered=True, auth=Mechanisms(), auth_needs_tls=True, note=notes.append)
    assert s.handle(b"EHLO x")[0] == (b"250-mx.example.com\r\n250-STARTTLS\r\n250-PIPELINING\r\n"
                                      b"250-8BITMIME\r\n250 SIZE 0\r\n")
    assert s.handle(b"AUTH PLAIN") == (replies.AUTH_NEEDS_TLS, protocol.FLUSH)
    assert notes == ["auth refused without tls ip=198.51.100.7"]
    s.tls_started(b"TLS_AES_128_GCM_SHA256")
    assert s.handle(b"EHLO x")[0].endswith(b"250 AUTH LOGIN PLAIN\r\n")
    assert s.handle(b"AUTH PLAIN")[0] == replies.AUTH_PROMPT_PLAIN


def test_submission_mode_wants_auth_before_mail():
    s = make_session(auth=Mechanisms(), auth_required=True)
    assert s.handle(b"MAIL FROM:<a@x>") == (replies.AUTH_REQUIRED, protocol.BUFFER)
    assert s.handle(b"RCPT TO:<b@example.com>")[0] == replies.WANT_MAIL
    s.user = b"alice"
    assert s.handle(b"MAIL FROM:<a@x>")[0] == replies.OK


def test_sender_binding_at_mail():
    s = make_session(auth_checks=True)
    s.user, s.senders = b"alice", frozenset({b"alice@example.org"})
    assert s.handle(b"MAIL FROM:<Alice@Example.org>")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<>")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<boss@example.org>") == (replies.SENDER_NOT_YOURS, protocol.BUFFER)


def test_starttls_after_auth_forgets_the_login():
    s = make_session(tls_offered=True, auth=Mechanisms(), relayclient=None)
    s.user, s.relayclient, s.peer.remoteinfo = b"alice", b"", b"alice"
    s.senders = frozenset({b"alice@example.org"})
    s.tls_started(b"TLS_AES_128_GCM_SHA256")
    assert (s.user, s.limit, s.senders, s.relayclient, s.peer.remoteinfo) == (
        None, None, None, None, None)
    s.handle(b"MAIL FROM:<a@x>")
    assert s.handle(b"RCPT TO:<b@elsewhere.org>")[0] == replies.NO_GATEWAY


# -- the check seam ------------------------------------------------------------
REFUSED = (b"550 no (#5.7.1)\r\n", protocol.BUFFER)


def test_checks_are_asked_in_order_and_the_first_refusal_wins():
    asked = []

    def first(session, value):
        asked.append(("first", value))
        return None

    def second(session, value):
        asked.append(("second", value))
        return REFUSED

    s = make_session(plugins=(Hooks(rcpt=first),), last=(Hooks(rcpt=second),))
    s.handle(b"MAIL FROM:<a@b.c>")
    assert s.handle(b"RCPT TO:<u@elsewhere.org>") == (replies.NO_GATEWAY, protocol.BUFFER)
    assert s.handle(b"RCPT TO:<u@example.com>") == REFUSED
    assert asked == [("first", b"u@elsewhere.org"), ("first", b"u@example.com"),
                     ("second", b"u@example.com")]
    assert s.recipients == []


def test_accept_now_skips_the_later_builtin_checks_and_a_check_may_change_the_address():
    def redirect(session, value):
        session.recipient = b"spam@example.com"
        return protocol.ACCEPT_NOW

    def accept(session, value):
        return protocol.ACCEPT_NOW

    s = make_session(plugins=(Hooks(rcpt=redirect, mail=accept),),
                     badmailfrom=frozenset({b"a@b.c"}))
    s.handle(b"MAIL FROM:<a@b.c>")  # accepted at MAIL: badmailfrom is not looked at
    # nor is rcpthosts at RCPT
    assert s.handle(b"RCPT TO:<u@elsewhere.org>") == (replies.OK, protocol.BUFFER)
    assert s.recipients == [b"spam@example.com"]


def test_a_refused_mail_keeps_the_transaction_in_hand():
    def refuse_xyz(session, value):
        return REFUSED if value == b"x@y.z" else None

    s = make_session(plugins=(Hooks(mail=refuse_xyz),))
    s.handle(b"MAIL FROM:<a@b.c>")
    s.handle(b"RCPT TO:<u@example.com>")
    assert s.handle(b"MAIL FROM:<x@y.z>") == REFUSED
    assert (s.sender, s.recipients, s.seen_mail) == (b"a@b.c", [b"u@example.com"], True)


def test_a_connect_check_replaces_the_greeting_and_may_hang_up():
    s = make_session(plugins=(Hooks(connect=lambda session, value: REFUSED),))
    assert (s.banner(), s.ends_after_banner) == (REFUSED[0], 0)
    assert s.handle(b"HELO x")[0] == b"250 mx.example.com\r\n"
    s = make_session(plugins=(Hooks(connect=lambda session, value: (b"554 go\r\n",
                                                                     protocol.DROP)),))
    assert (s.banner(), s.ends_after_banner) == (b"554 go\r\n", protocol.DROP)


def test_later_refusals_preface_text_and_headers_last_one_transaction():
    def plugin(session, value):
        session.later[protocol.AT_DATA] = b"451 greylisted\r\n"
        session.headers += b"X-Checked: yes\n"
        session.preface += b"250-note\r\n"
        return None

    s = make_session(plugins=(Hooks(mail=plugin),))
    assert s.handle(b"MAIL FROM:<a@b.c>")[0] == b"250-note\r\n" + replies.OK
    s.handle(b"RCPT TO:<u@example.com>")
    assert s.handle(b"DATA") == (b"451 greylisted\r\n", protocol.FLUSH)
    s.handle(b"RSET")
    assert (s.later, s.headers) == ({}, b"")
    s.handle(b"MAIL FROM:<a@b.c>")
    s.handle(b"RCPT TO:<u@example.com>")
    s.later = {}
    assert s.handle(b"DATA") == (b"", protocol.DATA)
    assert s.received_header().endswith(b"-0000\nX-Checked: yes\n")
    assert s.headers == b""


def test_data_and_helo_checks_refuse_their_command():
    def refuse_bad(session, value):
        return REFUSED if value == b"bad" else None

    s = make_session(plugins=(Hooks(data=lambda session, value: REFUSED, helo=refuse_bad),))
    assert s.handle(b"HELO bad") == REFUSED
    assert s.helo is None
    s.handle(b"HELO good")
    s.handle(b"MAIL FROM:<a@b.c>")
    s.handle(b"RCPT TO:<u@example.com>")
    assert s.handle(b"DATA") == (REFUSED[0], protocol.FLUSH)
    assert s.seen_mail


def test_a_command_check_answers_any_verb_before_the_verb_itself():
    """As rblsmtpd would: every command but QUIT refused, QUIT left to the core."""
    def blocked(session, line):
        return None if line.lower().startswith(b"quit") else (b"451 blocked\r\n", protocol.FLUSH)

    s = make_session(plugins=(Hooks(command=blocked),), tls_offered=True)
    for line in (b"NOOP", b"RSET", b"VRFY x", b"HELP", b"STARTTLS", b"HELO x", b"XYZZY"):
        assert s.handle(line) == (b"451 blocked\r\n", protocol.FLUSH), line
    assert s.helo is None
    assert s.handle(b"QUIT") == (b"221 mx.example.com\r\n", protocol.QUIT)


def test_a_check_adds_an_ehlo_keyword_and_a_mail_parameter():
    class Utf8:
        def __init__(self):
            self.mail_parameters = {b"SMTPUTF8": self.take}

        def ehlo_keyword(self, session):
            return b"SMTPUTF8"

        def take(self, session, value):
            return (b"555 no value wanted\r\n", protocol.BUFFER) if value else None

    s = make_session(plugins=(Utf8(),))
    assert s.handle(b"EHLO x")[0].endswith(b"250-8BITMIME\r\n250 SMTPUTF8\r\n")
    assert s.handle(b"MAIL FROM:<a@b> smtputf8")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<a@b> SMTPUTF8=x")[0] == replies.OK  # `SMTPUTF8=` is another name
    assert s.handle(b"MAIL FROM:<x@y> SMTPUTF8 SIZE=1")[0] == replies.OK


def test_a_refusing_mail_parameter_keeps_the_transaction():
    def refuse(session, value):
        return (b"555 bad body\r\n", protocol.BUFFER) if value != b"7BIT" else None

    check = Hooks()
    check.mail_parameters = {b"BODY=": refuse}
    s = make_session(plugins=(check,))
    assert s.handle(b"MAIL FROM:<a@b> BODY=7BIT")[0] == replies.OK
    assert s.handle(b"MAIL FROM:<c@d> BODY=8BITMIME") == (b"555 bad body\r\n", protocol.BUFFER)
    assert s.sender == b"a@b"


def test_badrcptto_and_recipient_checks_judge_the_address_a_plugin_rewrote():
    """qmail-spp's `C`: rcpthosts judges the address as given, the later checks
    what will be queued (a rewrite to a trap is refused, to a real user taken)."""
    from qmail_esmtpd.check_badrcptto import BadRcptTo
    from qmail_esmtpd.check_recipients import RecipientCheck
    from qmail_esmtpd.mailboxes import DELIVERED, UNKNOWN

    class Known:
        def verdict(self, address):
            return (DELIVERED, "") if address == b"joe@example.com" else (UNKNOWN, "")

    def rewrite(session, value):
        session.recipient = {b"sales@example.com": b"joe@example.com",
                             b"info@example.com": b"trap@example.com"}.get(value, value)
        return None

    s = make_session(plugins=(Hooks(rcpt=rewrite),),
                     last=(BadRcptTo([b"trap@example.com"]), RecipientCheck(Known())))
    s.handle(b"MAIL FROM:<a@b.c>")
    assert s.handle(b"RCPT TO:<sales@example.com>")[0] == replies.OK
    assert s.handle(b"RCPT TO:<info@example.com>")[0] == replies.BADRCPTTO
    assert s.handle(b"RCPT TO:<nobody@example.com>")[0] == replies.NO_MAILBOX
    assert s.recipients == [b"joe@example.com"]
