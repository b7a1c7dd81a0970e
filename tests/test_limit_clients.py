"""What real clients do with the daily limit's `452` at RCPT, as the README says per
client: some send to the recipients accepted, some send nothing.  Real tcpserver,
real PostgreSQL, the clients as installed (swaks, msmtp, curl, smtplib)."""

import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

ALICE, PASSWORD = "alice", "through the looking glass"
FIRST, SECOND = "first@elsewhere.test", "second@elsewhere.test"
MESSAGE = b"From: alice@client.test\r\nSubject: two recipients\r\n\r\nhello\r\n"


def run(argv: list, data: bytes = b"") -> subprocess.CompletedProcess:
    if not shutil.which(argv[0]):
        pytest.fail(f"{argv[0]} is not installed; tools/install-deps installs it")
    return subprocess.run(argv, input=data, capture_output=True, timeout=60)


def swaks(port: int, tmp_path: Path) -> str:
    out = run(["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
               "--from", "alice@client.test", "--to", f"{FIRST},{SECOND}",
               "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD])
    return out.stdout.decode(errors="replace")


def msmtp(port: int, tmp_path: Path) -> str:
    config = tmp_path / "msmtprc"
    config.write_text(f"host 127.0.0.1\nport {port}\ndomain client.test\n"
                      "from alice@client.test\ntls off\nauth plain\n"
                      f"user {ALICE}\npassword {PASSWORD}\n")
    config.chmod(0o600)  # msmtp refuses a password in a file others can read
    out = run(["msmtp", "-C", str(config), "-v", FIRST, SECOND], MESSAGE)
    return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


def curl(port: int, tmp_path: Path, *flags: str) -> str:
    mail = tmp_path / "mail.txt"
    mail.write_bytes(MESSAGE)
    out = run(["curl", "--silent", "--show-error", "-v", *flags,
               f"smtp://127.0.0.1:{port}/client.test", "--mail-from", "alice@client.test",
               "--mail-rcpt", FIRST, "--mail-rcpt", SECOND, "--upload-file", str(mail),
               "--login-options", "AUTH=PLAIN", "-u", f"{ALICE}:{PASSWORD}"])
    return out.stderr.decode(errors="replace")


def curl_allowfails(port: int, tmp_path: Path) -> str:
    return curl(port, tmp_path, "--mail-rcpt-allowfails")


def python_smtplib(port: int, tmp_path: Path) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(ALICE, PASSWORD)
        refused = client.sendmail("alice@client.test", [FIRST, SECOND], MESSAGE)
    return repr(refused)


@pytest.mark.parametrize("client, delivers", [
    (swaks, True),
    (python_smtplib, True),
    (curl_allowfails, True),
    (curl, False),
    (msmtp, False),
])
def test_a_452_at_rcpt_per_client(db, tcpserver, queue, tmp_path: Path, client, delivers):
    db.add(ALICE, PASSWORD, sendlimit=1)
    server = tcpserver(":allow\n", env=db.env())
    said = client(server.port, tmp_path)
    assert "too many recipients: daily sending limit reached" in said, said  # the 452
    queued = queue.queued()
    if delivers:
        assert [run["recipients"] for run in queued] == [[FIRST]], said
        assert db.counts(ALICE) == (1, 1)
    else:
        assert queued == [], said
        assert db.counts(ALICE) == (0, 0)
