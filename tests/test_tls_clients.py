"""STARTTLS, SMTPS and AUTH inside TLS with the clients people use: openssl
s_client, swaks, msmtp and curl, each against real tcpserver and a certificate
made by openssl.  Every test checks what reached the queue (and that it says
ESMTPSA: TLS and AUTH both happened), not just the client's exit status.

AUTH goes through the AUTH patch's checkpassword command line (alice:wonderland)
or, for msmtp, through PostgreSQL."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import test_tls
from test_auth import Accounts

# test_tls's fixtures, used here as they are (assigned, not imported by name, so
# that the test parameters naming them are not taken for redefinitions)
certificate = test_tls.certificate
tls_control = test_tls.tls_control
with_checkpassword = test_tls.with_checkpassword

REPLY = re.compile(r"\d{3}[ -]")
ELSEWHERE = "someone@elsewhere.example.org"  # not in rcpthosts: relaying needs AUTH
MESSAGE = b"Subject: from %s\r\n\r\nhello through TLS\r\n"


def need(program: str) -> str:
    path = shutil.which(program)
    if not path:
        pytest.fail(f"{program} is not installed; tools/install-deps installs it")
    return path


def run(argv: list, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def said(out: subprocess.CompletedProcess) -> str:
    return (out.stdout + out.stderr).decode(errors="replace")


def queued_once(queue, sender: str, client: str) -> bytes:
    """The one message queued: for ELSEWHERE, from `sender`, authenticated inside TLS."""
    (message,) = queue.queued()
    assert message["sender"] == sender and message["recipients"] == [ELSEWHERE]
    assert b"with ESMTPSA (TLS_" in message["message"]
    assert b", authenticated); " in message["message"]
    assert MESSAGE % client.encode() in message["message"].replace(b"\n", b"\r\n")
    return message["message"]


def test_openssl_s_client_starttls_auth_and_mail(with_checkpassword, tls_control, queue):
    need("openssl")
    server = with_checkpassword()
    plain = base64.b64encode(b"\0alice\0wonderland")
    session = b"".join(line + b"\n" for line in [
        b"EHLO client.test",
        b"AUTH PLAIN " + plain,
        b"MAIL FROM:<alice@client.test>",
        b"RCPT TO:<" + ELSEWHERE.encode() + b">",
        b"DATA",
        *(MESSAGE % b"s_client").rstrip(b"\r\n").split(b"\r\n"),
        b".",
        b"QUIT",
    ])
    # -crlf: our \n become \r\n; -ign_eof: read replies until the server closes;
    # -nocommands: a line starting with R (RCPT) or Q must not renegotiate or quit.
    out = run(["openssl", "s_client", "-starttls", "smtp", "-connect",
               f"127.0.0.1:{server.port}", "-crlf", "-ign_eof", "-nocommands"], session)
    text = said(out)
    assert "subject=CN = localhost" in text, text  # the certificate the server presented
    replies = [line for line in out.stdout.decode(errors="replace").splitlines()
               if REPLY.match(line)]  # not the PEM lines of the certificate s_client prints
    # s_client sent EHLO and STARTTLS itself; everything below came inside TLS
    assert replies[0] == "250-mx.example.com"
    assert "250-STARTTLS" not in replies
    assert [r for r in replies if r[3] == " "] == [
        "250 AUTH LOGIN PLAIN", "235 ok, go ahead (#2.0.0)", "250 ok", "250 ok",
        "354 go ahead", replies[-2], "221 mx.example.com"]
    assert replies[-2].startswith("250 ok ") and " qp " in replies[-2]
    queued_once(queue, "alice@client.test", "s_client")


def test_openssl_s_client_sees_a_clean_tls_close_after_quit(tcpserver, tls_control):
    need("openssl")
    server = tcpserver(":allow\n")
    out = run(["openssl", "s_client", "-starttls", "smtp", "-connect",
               f"127.0.0.1:{server.port}", "-crlf", "-ign_eof", "-nocommands"], b"QUIT\n")
    assert "221 mx.example.com" in said(out)
    assert "unexpected eof" not in said(out) and out.returncode == 0, said(out)


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    need("swaks")
    return run(["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
                "--from", "alice@client.test", "--to", ELSEWHERE,
                "--data", (MESSAGE % b"swaks").decode(), *args])


AUTH = ["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland"]


def test_swaks_starttls_then_auth(with_checkpassword, tls_control, queue):
    server = with_checkpassword()
    refused = swaks(server.port, *AUTH)  # no --tls: AUTH is not offered in cleartext
    assert refused.returncode != 0 and "250-AUTH" not in said(refused)
    assert queue.queued() == []
    out = swaks(server.port, "--tls", *AUTH)
    assert out.returncode == 0, said(out)
    assert "TLS started" in said(out) and "235 ok, go ahead" in said(out)
    queued_once(queue, "alice@client.test", "swaks")


def test_swaks_tls_on_connect_to_smtps(with_checkpassword, tls_control, queue):
    """Port 465 as service/run-smtps runs it: SMTPS, and SMTPAUTH="!"."""
    server = with_checkpassword({"SMTPS": "1", "SMTPAUTH": "!"})
    refused = swaks(server.port, "--tls-on-connect")  # no AUTH, no mail
    assert refused.returncode != 0 and "530 authentication required" in said(refused)
    out = swaks(server.port, "--tls-on-connect", *AUTH)
    assert out.returncode == 0, said(out)
    text = said(out)
    assert "TLS started" in text and "STARTTLS" not in text  # TLS before the greeting
    queued_once(queue, "alice@client.test", "swaks")


def test_msmtp_submission_with_postgresql_auth(pg, tcpserver, tls_control, queue,
                                               tmp_path: Path):
    """Port 587 as README describes it: STARTTLS, SMTPAUTH="!", AUTH against PostgreSQL."""
    need("msmtp")
    accounts = Accounts(pg.new_database())
    accounts.add("alice", "through the looking glass")
    server = tcpserver(":allow\n", env=accounts.env(SMTPAUTH="!"))
    config = tmp_path / "msmtprc"
    config.write_text(
        "account test\n"
        "host 127.0.0.1\n"
        f"port {server.port}\n"
        "domain client.test\n"
        "from alice@client.test\n"
        "tls on\n"
        "tls_starttls on\n"
        "tls_certcheck off\n"
        "auth on\n"
        "user alice\n"
        "password through the looking glass\n"
        "account default : test\n")
    config.chmod(0o600)  # msmtp refuses a password in a file others can read
    out = run(["msmtp", "-C", str(config), "-v", ELSEWHERE], MESSAGE % b"msmtp")
    assert out.returncode == 0, said(out)
    assert "235 ok, go ahead" in said(out)
    queued_once(queue, "alice@client.test", "msmtp")
    assert accounts.counts("alice")[0] == 1  # charged against alice's daily limit


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl(with_checkpassword, tls_control, queue, tmp_path: Path, scheme):
    """curl --ssl-reqd (STARTTLS) on an smtp:// URL, implicit TLS on smtps:// to SMTPS."""
    need("curl")
    server = with_checkpassword({"SMTPS": "1"} if scheme == "smtps" else {})
    mail = tmp_path / "mail.txt"
    mail.write_bytes(MESSAGE % b"curl")
    out = run(["curl", "--silent", "--show-error", "--ssl-reqd", "-k", "-v",
               f"{scheme}://127.0.0.1:{server.port}/client.test",
               "--mail-from", "alice@client.test", "--mail-rcpt", ELSEWHERE,
               "--upload-file", str(mail), "-u", "alice:wonderland"])
    assert out.returncode == 0, said(out)
    assert ("STARTTLS" in said(out)) == (scheme == "smtp")
    queued_once(queue, "alice@client.test", "curl")
