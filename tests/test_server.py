"""The server loop in-process: a fake channel and a fake qmail-queue, no subprocess.

The loop only moves bytes; these show it moves them as the core decides,
including the cases that end a session (bare LF, timeout, client gone).
"""

import pytest

from qmail_esmtpd import replies
from qmail_esmtpd.lineio import Gone, LineTooLong, Timeout
from qmail_esmtpd.protocol import COMMAND_LINE, SASL_LINE, Peer, Session
from qmail_esmtpd.server import serve

from harness.core_checks import Hooks, core_checks


class FakeChannel:
    """A Transport over a list of input pieces; what ends the input is `then`."""

    def __init__(self, *pieces: bytes, then: type[Exception] = Gone) -> None:
        self.pieces = list(pieces)
        self.buffer = b""
        self.then = then
        self.sent = b""
        self.pending = b""
        self.flushes = 0
        self.closed = False
        self.limits: list[int] = []  # what each readline() was allowed

    def _more(self) -> None:
        self.flush()  # as the real channel: replies go out before we wait for input
        if not self.pieces:
            raise self.then()
        self.buffer += self.pieces.pop(0)

    def readline(self, limit: int) -> bytes:
        self.limits.append(limit)
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise LineTooLong()
            self._more()
        line, self.buffer = self.buffer.split(b"\n", 1)
        if len(line) > limit:
            raise LineTooLong()
        return line[:-1] if line.endswith(b"\r") else line

    def read_chunk(self) -> bytes:
        if not self.buffer:
            self._more()
        data, self.buffer = self.buffer, b""
        return data

    def unread(self, data: bytes) -> None:
        self.buffer = data + self.buffer

    def discard_input(self) -> None:
        self.buffer = b""

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.pending += data

    def flush(self) -> None:
        if self.pending:
            self.flushes += 1
        self.sent += self.pending
        self.pending = b""


class FakeJob:
    def __init__(self, jobs: list, verdict: bytes) -> None:
        self.message = b""
        self.envelope: bytes | None = None
        self.finished = 0
        self.verdict = verdict
        self.pid = 4242
        jobs.append(self)

    def write(self, data: bytes) -> None:
        self.message += data

    def finish(self, envelope: bytes | None) -> bytes:
        self.finished += 1
        self.envelope = envelope
        return self.verdict if envelope is not None else replies.QQ_READ_ERROR


def run(*pieces: bytes, verdict: bytes = b"", then: type[Exception] = Gone,
        can_start: bool = True, **kw):
    kw.setdefault("checks", core_checks(auth=kw.get("auth") is not None))
    session = Session(b"mx.example.com", Peer(b"198.51.100.7", b"client.example.net"),
                      clock=lambda: 7, **kw)
    jobs: list[FakeJob] = []

    def open_queue() -> FakeJob:
        if not can_start:
            raise OSError("no pipes")
        return FakeJob(jobs, verdict)

    channel = FakeChannel(*pieces, then=then)
    status = serve(session, channel, open_queue)
    return status, channel.sent, jobs


ENVELOPE = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"


def test_a_message_pipelined_with_the_next_command():
    status, sent, (job,) = run(ENVELOPE + b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    assert status == 0
    assert sent == (b"220 mx.example.com ESMTP\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n"
                    b"250 ok 7 qp 4242\r\n221 mx.example.com\r\n")
    assert job.message == (b"Received: from client.example.net (198.51.100.7)\n"
                           b"  by unknown with SMTP; 1 Jan 1970 00:00:07 -0000\n"
                           b"Subject: x\n\n.dot\n")
    assert job.envelope == b"Fa@b\0Tc@example.com\0\0" and job.finished == 1


def test_data_split_across_many_reads():
    body = b"Subject: x\r\n\r\nline one\r\nline two\r\n.\r\n"
    pieces = [body[i:i + 3] for i in range(0, len(body), 3)]
    status, sent, (job,) = run(ENVELOPE, *pieces, b"QUIT\r\n")
    assert status == 0 and job.message.endswith(b"Subject: x\n\nline one\nline two\n")


def test_bare_lf_in_data_ends_the_session_and_queues_nothing():
    status, sent, (job,) = run(ENVELOPE + b"bad\nline\r\n.\r\nQUIT\r\n")
    assert status == 1 and sent.endswith(b"354 go ahead\r\n" + replies.STRAY_NEWLINE)
    assert job.envelope is None and job.finished == 1


def test_client_gone_mid_data_abandons_the_message():
    status, sent, (job,) = run(ENVELOPE + b"half a mess")
    assert status == 1 and job.envelope is None and job.finished == 1


def test_timeout_mid_data_says_451_timeout():
    status, sent, (job,) = run(ENVELOPE + b"half", then=Timeout)
    assert status == 1 and sent.endswith(replies.TIMEOUT) and job.envelope is None


def test_queue_that_cannot_start():
    status, sent, jobs = run(ENVELOPE + b"QUIT\r\n", can_start=False)
    assert jobs == [] and status == 0
    assert b"\r\n451 qqt failure (#4.3.0)\r\n221 " in sent


def test_queue_refusal_and_oversized_message():
    status, sent, _ = run(ENVELOPE + b"x\r\n.\r\nQUIT\r\n", verdict=b"Dgo away (#5.3.0)")
    assert b"\r\n554 go away (#5.3.0)\r\n221 " in sent
    status, sent, (job,) = run(ENVELOPE + b"0123456789\r\n.\r\nQUIT\r\n", databytes=5)
    assert b"\r\n" + replies.TOO_BIG + b"221 " in sent and job.envelope is None


def test_quit_exits_0_and_eof_exits_1():
    assert run(b"QUIT\r\n")[0] == 0
    assert run(b"NOOP\r\n")[:2] == (1, b"220 mx.example.com ESMTP\r\n250 ok\r\n")


def test_a_command_line_over_the_limit_gets_500_and_ends_the_session():
    notes: list[str] = []
    ok = b"NOOP " + b"n" * (COMMAND_LINE - 6) + b"\r\n"  # COMMAND_LINE bytes before the LF
    status, sent, _ = run(ok, b"NOOP " + b"x" * COMMAND_LINE, b"\r\nQUIT\r\n", note=notes.append)
    assert status == 1
    assert sent == b"220 mx.example.com ESMTP\r\n250 ok\r\n" + replies.LINE_TOO_LONG
    assert notes == [f"command line too long ip=198.51.100.7: over {COMMAND_LINE} bytes, "
                     "session ended"]


class NeverAsked:
    """An authenticator the tests below never reach: the line is refused first."""

    mechanisms = (b"LOGIN", b"PLAIN")


def serve_auth(*pieces: bytes) -> tuple[int, FakeChannel, list[str]]:
    notes: list[str] = []
    session = Session(b"mx.example.com", Peer(b"198.51.100.7"), auth=NeverAsked(),  # type: ignore
                      note=notes.append)
    channel = FakeChannel(*pieces)
    return serve(session, channel, lambda: FakeJob([], b"")), channel, notes


SASL_NOTE = f"auth line too long ip=198.51.100.7: over {SASL_LINE} bytes, session ended"


def test_inside_auth_the_line_limit_is_sasls():
    status, channel, notes = serve_auth(b"AUTH LOGIN\r\n", b"d" * (SASL_LINE + 1) + b"\r\n")
    assert status == 1 and channel.limits == [COMMAND_LINE, SASL_LINE]
    assert channel.sent.endswith(b"334 VXNlcm5hbWU6\r\n" + replies.AUTH_LINE_TOO_LONG)
    assert notes == [SASL_NOTE]


def test_an_auth_line_over_the_sasl_limit_gets_the_same_end():
    status, channel, notes = serve_auth(b"AUTH PLAIN " + b"A" * (SASL_LINE + 1) + b"\r\nNOOP\r\n")
    assert status == 1 and notes == [SASL_NOTE]
    assert channel.sent == b"220 mx.example.com ESMTP\r\n" + replies.AUTH_LINE_TOO_LONG


@pytest.mark.parametrize("ending", [b"QUIT\r\n", b"", b"MAIL FROM:<a@b>\r\nDATA\r\nx\n"])
def test_the_end_checks_hear_once_that_the_session_is_over(ending):
    ended = []
    checks = core_checks(plugins=(Hooks(end=lambda session, value: ended.append(value)),))
    run(b"HELO x\r\n" + ending, checks=checks)
    assert ended == [b""]
