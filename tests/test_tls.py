"""STARTTLS and SMTPS through real tcpserver, with smtplib, swaks and raw sockets."""

import base64
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qmail_esmtpd.protocol import COMMAND_LINE

from harness.files import write_program
from harness.frontend import RELAY_LOCALHOST
from harness.paths import FAKE_CHECKPASSWORD, SERVER
from harness.processes import imported_modules, talk


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> bytes:
    """A self-signed chain and key in one PEM, as control/servercert.pem wants it."""
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return (d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes()


@pytest.fixture
def tls_control(control: Path, certificate: bytes) -> Path:
    path = control / "servercert.pem"
    path.write_bytes(certificate)
    path.chmod(0o600)
    return control


@contextmanager
def after_starttls(port: int) -> Iterator[socket.socket]:
    """A raw connection that said STARTTLS and read the 220: the handshake is the test's."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with raw.makefile("rb") as f:
            assert f.readline().startswith(b"220 ")
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline() == b"220 ready for tls\r\n"
        yield raw


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_starttls_then_mail_is_received_as_esmtps(tcpserver, tls_control, queue):
    server = tcpserver(RELAY_LOCALHOST)
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        code, text = c.ehlo()
        assert text.split(b"\n")[1] == b"STARTTLS"  # right after the greeting line
        assert c.starttls(context=client_context())[0] == 220
        code, text = c.ehlo()
        assert b"STARTTLS" not in text
        assert c.docmd("STARTTLS") == (502, b"unimplemented (#5.5.1)")
        c.sendmail("a@client.test", ["b@elsewhere.org"], b"Subject: tls\r\n\r\nsecret\r\n")
    (run,) = queue.queued()
    first, second = run["message"].split(b"\n")[:2]
    assert first == b"Received: from unknown (HELO client.test) (127.0.0.1)"
    assert second.startswith(b"  by localhost with ESMTPS (TLS_") and b" encrypted); " in second


def test_smtps_starts_tls_before_the_greeting(tcpserver, tls_control, queue):
    server = tcpserver(RELAY_LOCALHOST, env={"SMTPS": "1"})
    with smtplib.SMTP_SSL("127.0.0.1", server.port, local_hostname="client.test",
                          timeout=30, context=client_context()) as c:
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: smtps\r\n\r\nx\r\n")
    (run,) = queue.queued()
    assert b"with ESMTPS (" in run["message"]


def test_cleartext_pipelined_after_starttls_is_discarded(tcpserver, tls_control):
    server = tcpserver(RELAY_LOCALHOST)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220 ")
        raw.sendall(b"STARTTLS\r\nRSET\r\n")  # one packet: the RSET must not count
        assert f.readline() == b"220 ready for tls\r\n"
        with client_context().wrap_socket(raw, server_hostname="localhost") as secure:
            secure.sendall(b"NOOP\r\n")
            assert secure.recv(100) == b"250 ok\r\n"  # not "250 flushed"
    assert "Traceback" not in server.logpath.read_text()


def test_swaks_tls(tcpserver, tls_control, queue):
    server = tcpserver(RELAY_LOCALHOST)
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{server.port}", "--tls",
                          "--from", "a@client.test", "--to", "b@elsewhere.org"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode(errors="replace")
    assert b"TLS started" in out.stdout and len(queue.queued()) == 1


def test_garbage_instead_of_a_client_hello_ends_cleanly(tcpserver, tls_control, queue):
    server = tcpserver(RELAY_LOCALHOST)
    out = talk(server.port, b"STARTTLS\r\n" + b"this is not a ClientHello\r\n" * 10)
    assert out.startswith(b"220 ") and b"\r\n220 ready for tls\r\n" in out
    assert b"Traceback" not in out
    log = server.wait_log("tls handshake failed")
    assert "tls handshake failed ip=127.0.0.1: " in log and "Traceback" not in log
    assert queue.queued() == []


def test_a_client_that_drops_mid_handshake(tcpserver, tls_control):
    server = tcpserver(RELAY_LOCALHOST)
    with after_starttls(server.port) as raw:
        raw.sendall(b"\x16\x03\x01\x00")  # the start of a record, then gone
    log = server.wait_log("tls handshake failed")
    assert "tls handshake failed ip=127.0.0.1: " in log and "Traceback" not in log
    assert talk(server.port, b"QUIT\r\n").endswith(b"221 mx.example.com\r\n")  # still serving


def test_an_unusable_certificate_is_454_and_the_session_goes_on(tcpserver, control):
    (control / "servercert.pem").write_text("not a certificate\n")
    server = tcpserver(RELAY_LOCALHOST)
    out = talk(server.port, b"EHLO x\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
    assert b"\r\n454 TLS certificate or key cannot be loaded (#4.3.0)\r\n250 ok\r\n221 " in out
    assert "servercert.pem" in server.logpath.read_text()


def test_no_certificate_means_no_starttls(tcpserver, control):
    server = tcpserver(RELAY_LOCALHOST)
    out = talk(server.port, b"EHLO x\r\nSTARTTLS\r\nQUIT\r\n")
    assert b"STARTTLS" not in out.split(b"502 ")[0] and b"\r\n502 unimplemented (#5.5.1)\r\n" in out


PLAIN = base64.b64encode(b"\0alice\0wonderland").decode()


@pytest.fixture
def with_checkpassword(tcpserver, tmp_path):
    """Factory: the server with the AUTH patch's command line and `env`."""
    import sys

    checker = write_program(tmp_path / "checkpassword",
                            f"#!/bin/sh\nexec {sys.executable} {FAKE_CHECKPASSWORD} \"$@\"\n")
    return lambda env=None: tcpserver(":allow\n", env={"AUTHFAILDELAY": "0", **(env or {})},
                                      argv=[str(SERVER), str(checker), "/bin/true"])


def test_auth_only_inside_tls(with_checkpassword, tls_control):
    server = with_checkpassword()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.ehlo()
        assert "auth" not in c.esmtp_features and "starttls" in c.esmtp_features
        assert c.docmd("AUTH PLAIN", PLAIN) == (538, b"auth not available without TLS (#5.3.3)")
        c.starttls(context=client_context())
        c.ehlo()
        assert c.esmtp_features["auth"].strip() == "LOGIN PLAIN"
        assert c.docmd("AUTH PLAIN", PLAIN)[0] == 235
    assert "auth refused without tls ip=127.0.0.1" in server.wait_log("auth refused")


def test_cleartext_auth_when_the_site_asks_for_it(with_checkpassword, tls_control):
    server = with_checkpassword({"AUTHCLEARTEXT": "1"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.ehlo()
        assert "auth" in c.esmtp_features and c.docmd("AUTH PLAIN", PLAIN)[0] == 235


def test_submission_mode_and_auth_switched_off(with_checkpassword, control, queue):
    server = with_checkpassword({"SMTPAUTH": "!"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.ehlo()
        assert c.mail("a@client.test") == (530, b"authentication required (#5.7.0)")
        assert c.rcpt("b@example.com")[0] == 503
        assert c.docmd("AUTH PLAIN", PLAIN)[0] == 235  # no certificate: cleartext as before
        c.sendmail("alice@client.test", ["b@elsewhere.org"], b"Subject: 587\r\n\r\nx\r\n")
    assert [r["recipients"] for r in queue.queued()] == [["b@elsewhere.org"]]
    off = with_checkpassword({"SMTPAUTH": "-"})
    out = talk(off.port, b"EHLO x\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\nQUIT\r\n")
    assert b"AUTH" not in out.split(b"502 ")[0] and b"\r\n502 unimplemented (#5.5.1)\r\n" in out


def test_a_session_without_starttls_never_loads_ssl(tls_control):
    plain = imported_modules({"QMAIL_CONTROL": str(tls_control)}, b"EHLO x\r\nQUIT\r\n")
    assert "ssl" not in plain and "_ssl" not in plain
    tls = imported_modules({"QMAIL_CONTROL": str(tls_control)}, b"EHLO x\r\nSTARTTLS\r\n")
    assert "ssl" in tls  # the check above can fail


def test_smtps_without_a_usable_certificate_ends_without_a_word(tcpserver, control):
    server = tcpserver(RELAY_LOCALHOST, env={"SMTPS": ""})
    assert talk(server.port, b"") == b""  # no cleartext greeting on a TLS port
    assert "tls unavailable ip=127.0.0.1: " in server.wait_log("tls unavailable")


def test_tlsserverciphers_chooses_the_tls12_cipher(tcpserver, tls_control, queue):
    (tls_control / "tlsserverciphers").write_text("ECDHE-RSA-AES128-GCM-SHA256\n")
    server = tcpserver(RELAY_LOCALHOST)
    context = client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.starttls(context=context)
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    (run,) = queue.queued()
    assert b"with ESMTPS (ECDHE-RSA-AES128-GCM-SHA256 encrypted); " in run["message"]


def test_a_certificate_without_its_key_is_454(tcpserver, control, certificate):
    chain_only = certificate.split(b"-----BEGIN PRIVATE KEY-----")[0]
    (control / "servercert.pem").write_bytes(chain_only)
    server = tcpserver(RELAY_LOCALHOST)
    out = talk(server.port, b"STARTTLS\r\nNOOP\r\nQUIT\r\n")
    assert b"\r\n454 TLS certificate or key cannot be loaded (#4.3.0)\r\n250 ok\r\n" in out
    assert "servercert.pem" in server.wait_log("tls unavailable")


def test_submission_mode_without_any_auth_says_so_in_the_log(tcpserver, control):
    server = tcpserver(RELAY_LOCALHOST, env={"SMTPAUTH": "!"})
    assert b"\r\n530 authentication required" in talk(server.port, b"MAIL FROM:<a@b>\r\n")
    assert "SMTPAUTH=! but no AUTH is configured" in server.wait_log("SMTPAUTH=!")


# -- issue 15, item 8: the handshake has a deadline, and no cleartext inside it --
def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl, as smtplib sends it)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def trickle(s: socket.socket, data: bytes, pause: float) -> tuple[float, bytes]:
    """One byte of `data` every `pause` seconds until the server closes:
    (seconds until it did, or until all was sent; what the server sent)."""
    start = time.monotonic()
    received = b""
    s.settimeout(pause)
    for byte in data:
        try:
            s.send(bytes([byte]))
            got = s.recv(4096)
        except TimeoutError:
            continue
        except OSError:  # reset: the server is gone
            break
        if not got:
            break
        received += got
    return time.monotonic() - start, received


def test_a_trickled_smtps_handshake_ends_at_timeoutsmtpd(tcpserver, tls_control):
    (tls_control / "timeoutsmtpd").write_text("2\n")
    server = tcpserver(RELAY_LOCALHOST, env={"SMTPS": ""})
    hello = client_hello()  # some 300 bytes: 5 minutes at a byte a second
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        elapsed, received = trickle(s, hello, pause=1)
    assert elapsed < 60, elapsed  # per read, it would have run until the last byte
    assert received == b""  # no 451 in cleartext on a TLS port
    assert "tls handshake failed ip=127.0.0.1: no handshake within 2 s" in server.wait_log(
        "tls handshake failed")


def test_a_trickled_starttls_handshake_ends_at_timeoutsmtpd(tcpserver, tls_control):
    (tls_control / "timeoutsmtpd").write_text("2\n")
    server = tcpserver(RELAY_LOCALHOST)
    with after_starttls(server.port) as raw:
        elapsed, received = trickle(raw, client_hello(), pause=1)
    assert elapsed < 60, elapsed
    assert received == b""  # nothing in cleartext inside the handshake
    assert "tls handshake failed ip=127.0.0.1: no handshake within 2 s" in server.wait_log(
        "tls handshake failed")


def test_a_silent_smtps_client_gets_no_cleartext_timeout(tcpserver, tls_control):
    (tls_control / "timeoutsmtpd").write_text("1\n")
    server = tcpserver(RELAY_LOCALHOST, env={"SMTPS": ""})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        assert s.recv(100) == b""  # the server closed without a word
    assert "tls handshake failed ip=127.0.0.1: no handshake within 1 s" in server.wait_log(
        "tls handshake failed")


def test_the_command_phase_keeps_qmails_timeout_per_read(tcpserver, control):
    """As qmail-smtpd: each read may take timeoutsmtpd, a line as long as it
    likes; a client trickling a command is slow, not timed out."""
    (control / "timeoutsmtpd").write_text("4\n")
    server = tcpserver(RELAY_LOCALHOST)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        elapsed, received = trickle(s, b"NOOP slowly\r\n", pause=1)  # some 12 s in all
        if not received:
            received = f.readline()
    assert received == b"250 ok\r\n" and elapsed > 4  # longer than one timeout in all


# -- issue 15, item 9: forward secrecy and AEAD only, unless tlsserverciphers says otherwise --
# -- issue 24, item 7: ... where TLS is mandatory; OpenSSL's list where it is opportunistic --
def s_client_tls12(port: int, cipher: str, smtps: bool = False) -> str:
    """`openssl s_client` over STARTTLS (or SMTPS) offering TLS 1.2 with one cipher
    only: what it said."""
    starttls = [] if smtps else ["-starttls", "smtp"]
    out = subprocess.run(["openssl", "s_client", *starttls, "-connect",
                          f"127.0.0.1:{port}", "-tls1_2", "-cipher", cipher, "-crlf",
                          "-ign_eof", "-nocommands"],
                         input=b"QUIT\n", capture_output=True, timeout=60)
    return (out.stdout + out.stderr).decode(errors="replace")


MANDATORY = [{"SMTPAUTH": "!"}, {"SMTPS": ""}]  # submission, SMTPS: no cleartext fallback
NOT_FORWARD_SECRET_OR_CBC = [
    "AES128-SHA",  # static RSA key exchange, CBC: Debian's Python offers it by default
    "AES256-GCM-SHA384",  # AEAD, but static RSA: no forward secrecy
    "ECDHE-RSA-AES128-SHA256",  # forward secrecy, but CBC: in Python's own default list
]


@pytest.mark.parametrize("env", MANDATORY, ids=["submission", "smtps"])
@pytest.mark.parametrize("cipher", NOT_FORWARD_SECRET_OR_CBC)
def test_mandatory_tls_refuses_static_rsa_and_cbc(tcpserver, tls_control, cipher, env):
    server = tcpserver(RELAY_LOCALHOST, env=env)
    said = s_client_tls12(server.port, cipher, smtps="SMTPS" in env)
    assert "221 mx.example.com" not in said and "handshake failure" in said, said
    assert "tls handshake failed ip=127.0.0.1: " in server.wait_log("tls handshake failed")


@pytest.mark.parametrize("env", [{}, *MANDATORY], ids=["port 25", "submission", "smtps"])
@pytest.mark.parametrize("cipher", ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                                    "ECDHE-RSA-CHACHA20-POLY1305"])
def test_default_ciphers_serve_ecdhe_with_aead(tcpserver, tls_control, cipher, env):
    server = tcpserver(RELAY_LOCALHOST, env=env)
    said = s_client_tls12(server.port, cipher, smtps="SMTPS" in env)
    assert f"Cipher is {cipher}" in said and "221 mx.example.com" in said, said


@pytest.mark.parametrize("cipher", NOT_FORWARD_SECRET_OR_CBC)
def test_opportunistic_tls_takes_what_openssl_offers(with_checkpassword, tls_control, cipher):
    """Port 25, AUTH offered there or not: a sender that cannot negotiate would
    deliver in cleartext (RFC 7435), so OpenSSL's list at its security level."""
    for server in (with_checkpassword({"SMTPAUTH": ""}),
                   with_checkpassword({"SMTPAUTH": "-"})):
        said = s_client_tls12(server.port, cipher)
        assert f"Cipher is {cipher}" in said and "221 mx.example.com" in said, said


def test_opportunistic_tls_still_prefers_ecdhe_with_aead(tcpserver, tls_control):
    """The server's order decides: a client offering both gets the better one."""
    server = tcpserver(RELAY_LOCALHOST)
    said = s_client_tls12(server.port, "AES128-SHA:ECDHE-RSA-AES128-SHA256:"
                                       "ECDHE-RSA-AES128-GCM-SHA256")
    assert "Cipher is ECDHE-RSA-AES128-GCM-SHA256" in said, said


def test_tlsserverciphers_still_overrides_the_default(tcpserver, tls_control):
    (tls_control / "tlsserverciphers").write_text("ECDHE-RSA-AES128-SHA256\n")
    for env in ({}, {"SMTPAUTH": "!"}):  # both kinds of TLS: the file is the default of both
        server = tcpserver(RELAY_LOCALHOST, env=env)
        said = s_client_tls12(server.port, "ECDHE-RSA-AES128-SHA256")
        assert "Cipher is ECDHE-RSA-AES128-SHA256" in said and "221 mx.example.com" in said, said
        said = s_client_tls12(server.port, "ECDHE-RSA-AES128-GCM-SHA256")
        assert "handshake failure" in said, said


def test_a_rule_names_the_list_per_service_beside_one_control_folder(tcpserver, tls_control):
    """Ports 25 and 587 sharing control/: $TLSSERVERCIPHERS from each service's
    rules wins over control/tlsserverciphers; an empty one counts as unset."""
    (tls_control / "tlsserverciphers").write_text("ECDHE+AESGCM\n")
    port25 = tcpserver(':allow,TLSSERVERCIPHERS="DEFAULT"\n')
    submission = tcpserver(':allow,SMTPAUTH="!",TLSSERVERCIPHERS="ECDHE+CHACHA20"\n')
    unset = tcpserver(':allow,TLSSERVERCIPHERS=""\n')
    for server, cipher, taken in (
            (port25, "AES128-SHA", True), (port25, "ECDHE-RSA-CHACHA20-POLY1305", True),
            (submission, "ECDHE-RSA-CHACHA20-POLY1305", True),
            (submission, "ECDHE-RSA-AES128-GCM-SHA256", False),
            (unset, "ECDHE-RSA-AES128-GCM-SHA256", True), (unset, "AES128-SHA", False)):
        said = s_client_tls12(server.port, cipher)
        assert (f"Cipher is {cipher}" in said and "221 " in said) == taken, (cipher, said)


def test_a_line_too_long_inside_tls_gets_its_500_inside_tls(tcpserver, tls_control):
    server = tcpserver(RELAY_LOCALHOST)
    with after_starttls(server.port) as raw:
        with client_context().wrap_socket(raw, server_hostname="localhost") as secure:
            fits = b"NOOP " + b"x" * (COMMAND_LINE - 6) + b"\r\n"  # CR included: the limit
            secure.sendall(fits + fits.replace(b"NOOP ", b"NOOP  "))  # one byte more
            replies = secure.makefile("rb").read()  # until the server closes
    assert replies == b"250 ok\r\n500 line too long, closing connection (#5.5.2)\r\n"
    assert "command line too long ip=127.0.0.1" in server.wait_log("too long")
