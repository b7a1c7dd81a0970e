"""The fd adapter: lines, CRs, long lines, pipelined input handed back, timeouts."""

import os
import threading

import pytest

from qmail_esmtpd.lineio import READ_SIZE, Channel, Gone, LineTooLong, Timeout

LIMIT = 200_000  # bytes before the LF, for these tests


def channel_with(data: bytes, timeout: float = 5) -> Channel:
    r, w = os.pipe()
    out_r, out_w = os.pipe()

    def feed() -> None:
        os.write(w, data)
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return Channel(timeout, rfd=r, wfd=out_w)


def test_lines_strip_one_cr_only():
    c = channel_with(b"HELO a\r\nHELO b\r\r\nbare\n\r\n")
    assert [c.readline(LIMIT) for _ in range(4)] == [b"HELO a", b"HELO b\r", b"bare", b""]
    with pytest.raises(Gone):
        c.readline(LIMIT)


def test_a_line_of_the_limit_across_many_reads():
    c = channel_with(b"X" * (LIMIT - 1) + b"\r\nNEXT\r\n")  # CR included: LIMIT bytes
    assert c.readline(LIMIT) == b"X" * (LIMIT - 1)
    assert c.readline(LIMIT) == b"NEXT"


def test_one_byte_more_is_too_long_even_with_its_lf_in_the_same_read():
    c = channel_with(b"NOOP\r\n" + b"X" * LIMIT + b"\r\n")
    assert c.readline(LIMIT) == b"NOOP"
    with pytest.raises(LineTooLong):
        c.readline(LIMIT)


def test_no_lf_at_all_stops_at_the_limit_not_at_the_end_of_input():
    c = channel_with(b"NOOP " + b"x" * (20 * LIMIT))
    with pytest.raises(LineTooLong):
        c.readline(LIMIT)
    assert len(c.inbuf) <= LIMIT + READ_SIZE  # what was buffered: the rest was never read


def test_partial_line_at_eof_is_dropped():
    c = channel_with(b"QUIT")
    with pytest.raises(Gone):
        c.readline(LIMIT)


def test_chunks_and_unread_keep_order():
    c = channel_with(b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
    assert c.readline(LIMIT) == b"DATA"
    chunk = c.read_chunk()
    end = chunk.index(b".\r\n") + 3
    c.unread(chunk[end:])
    assert c.readline(LIMIT) == b"QUIT"


def test_silence_is_a_timeout():
    r, w = os.pipe()
    c = Channel(0.2, rfd=r, wfd=os.pipe()[1])
    with pytest.raises(Timeout):
        c.readline(LIMIT)
    os.close(w)


def test_replies_are_buffered_until_flush():
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    c = Channel(1, rfd=r, wfd=out_w)
    c.write(b"250 ok\r\n")
    c.write(b"250 ok\r\n")
    os.set_blocking(out_r, False)
    with pytest.raises(BlockingIOError):
        os.read(out_r, 100)
    c.flush()
    assert os.read(out_r, 100) == b"250 ok\r\n250 ok\r\n"


def test_a_reader_that_never_reads_cannot_hold_a_write():
    import time

    r, w = os.pipe()
    out_r, out_w = os.pipe()  # nobody reads out_r: the pipe buffer (64 KB) fills
    c = Channel(0.3, rfd=r, wfd=out_w)
    c.write(b"250 ok\r\n" * 40000)
    start = time.monotonic()
    with pytest.raises(Gone):
        c.flush()
    assert time.monotonic() - start < 5
    assert len(os.read(out_r, 1 << 20)) > 0  # what fitted was written


def test_discard_input_forgets_pipelined_lines():
    c = channel_with(b"STARTTLS\r\nRSET\r\n")
    assert c.readline(LIMIT) == b"STARTTLS"
    c.discard_input()
    with pytest.raises(Gone):
        c.readline(LIMIT)
