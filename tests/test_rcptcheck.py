"""Recipient validation against what real qmail did (tests/rcptcheck/), through
real tcpserver, the server running as an unprivileged user as qmaild does.

The layout real notqmail judged (rcptcheck/layout.py; rcptcheck/verdicts.txt,
the first recording, and verdicts-2.txt, the second on the layout grown since,
both recorded by rcptcheck/record.py) is rebuilt in a temporary folder: the
same control files, users/assign compiled as qmail-newu compiles it, the same
homes and .qmail files.  Each recording is replayed in full: every address
qmail delivered, relayed or deferred gets 250, every one it bounced 550.
The system users (8-bit names among them) are real to getpwnam(): each
connection runs in its own mount namespace where our passwd file is bound
over /etc/passwd, then drops to an unprivileged uid.  So this needs root (and
unshare, setpriv); elsewhere it is skipped.
"""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from harness.files import compile_users, write_launcher
from harness.frontend import LOOPBACK
from harness.processes import imported_modules
from harness.system_users import world_readable_dir

sys.path.insert(0, str(Path(__file__).resolve().parent / "rcptcheck"))
import layout  # noqa: E402

RECORDINGS = Path(__file__).resolve().parent / "rcptcheck"
FIRST_UID = 47001
ALIAS_UID = 47100
SERVER_UID = 47200  # plays qmaild
RCPTHOSTS = ("example.com\nlocalhost\nvirt.example\n.sub.example\nother.example\n"
             "remote.example\ndup.example\ndup2.example\npct.example\n")


def recorded(name: str = "verdicts.txt") -> list[tuple[bytes, str, str]]:
    """(address, qmail's verdict, the alias condition it held under) of a recording."""
    rows = []
    for line in (RECORDINGS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            address, verdict, _words, *condition = line.split("\t")
            rows.append((layout.unescaped(address), verdict, "".join(condition)))
    return rows


def expected_code(address: bytes, verdict: str) -> int:
    """550 for what qmail bounced; 250 for what it delivered, relayed or deferred,
    and for what qmaild cannot see (homes of mode 0700)."""
    unreadable = any(address.lower().startswith(user.encode()) for user in layout.UNREADABLE)
    return 550 if verdict == "bounced" and not unreadable else 250


@pytest.fixture(scope="module")
def qmail_layout():
    """The recorded layout under a folder our unprivileged server can enter."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare and setpriv (a passwd of its own, an unprivileged server)")
    base = world_readable_dir("qmail-esmtpd-rcptcheck-")
    alias_home = base / "alias"
    alias_home.mkdir()
    os.chown(alias_home, ALIAS_UID, ALIAS_UID)
    ids = {name: (FIRST_UID + i, FIRST_UID + i, str(base / "homes" / name))
           for i, name in enumerate(layout.USERS)}  # names with 8-bit bytes among them
    (base / "homes").mkdir()
    layout.build(base / "qmail", alias_home, ids)
    compile_users(base / "qmail" / "users" / "assign", base / "qmail" / "users" / "cdb")
    control = base / "qmail" / "control"
    (control / "rcpthosts").write_text(RCPTHOSTS)
    passwd = base / "passwd"
    passwd.write_bytes(os.fsencode(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        f"alias:x:{ALIAS_UID}:{ALIAS_UID}::{alias_home}:/usr/sbin/nologin\n"
        + "".join(f"{name}:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n"
                  for name, (uid, gid, home) in ids.items())))
    yield control, passwd
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def layout_server(tcpserver, qmail_layout):
    """start(env, rules) -> tcpserver running qmail-esmtpd in a mount namespace
    where the layout's passwd is /etc/passwd, as the unprivileged SERVER_UID."""
    control, passwd = qmail_layout
    # in the layout's folder, which the unprivileged server can reach, as it can
    # /usr/bin/python3 (not an interpreter in root's home)
    launcher = write_launcher(passwd.parent / "qmail-esmtpd", "qmail_esmtpd.cli:run",
                              "/usr/bin/python3")
    argv = ["unshare", "-m", "sh", "-c",
            'mount --bind "$0" /etc/passwd && exec setpriv --reuid="$1" --regid="$1" '
            '--clear-groups "$2"', passwd, SERVER_UID, launcher]

    def start(env: dict[str, str], rules: str = ":allow\n"):
        return tcpserver(rules, env=env, argv=argv)
    return start


def layout_env(control: Path, **more: str) -> dict[str, str]:
    """The layout's qmail home; its control folder named with a trailing slash,
    as admins write it (users/cdb must still be found under the home)."""
    return {"QMAIL_HOME": str(control.parent), "QMAIL_CONTROL": f"{control}/", **more}


def rcpt_codes(port: int, addresses: "list[str] | list[bytes]") -> dict:
    """One session, one RCPT each; the reply code each got (421 ends it).
    Addresses go on the wire as their bytes (a str as os.fsencode makes them)."""
    codes: dict = {}
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        replies = sock.makefile("rb")

        def ask(line: bytes) -> int:
            if line:
                sock.sendall(line + b"\r\n")
            while True:
                reply = replies.readline()
                if reply[3:4] != b"-":
                    return int(reply[:3] or b"0")

        assert ask(b"") == 220
        assert ask(b"EHLO client.example.net") == 250
        assert ask(b"MAIL FROM:<sender@example.net>") == 250
        for address in addresses:
            codes[address] = ask(b"RCPT TO:<" + os.fsencode(address) + b">")
            if codes[address] in (421, 0):
                break
    return codes


@pytest.mark.parametrize("recording", ["verdicts.txt", "verdicts-2.txt"])
def test_rcpt_refuses_exactly_what_qmail_bounced(layout_server, qmail_layout, recording):
    control, _ = qmail_layout
    server = layout_server(layout_env(control, CHECKRECIPIENTS="1", UNKNOWNRCPTLIMIT="0"))
    rows = [(address, verdict) for address, verdict, condition in recorded(recording)
            if not condition]
    assert len(rows) >= 50
    codes = rcpt_codes(server.port, [address for address, _ in rows])
    assert codes == {address: expected_code(address, verdict) for address, verdict in rows}
    log = server.wait_log("recipient accepted unchecked")
    assert f"recipient unknown ip={LOOPBACK} rcpt=nosuchuser@example.com" in log
    # once a session: rcfrank-foo is just as unreadable, and was not logged again
    assert log.count("recipient accepted unchecked") == 1
    assert "rcpt=rceve-foo@example.com (" in log and "Permission denied" in log


def test_what_qmail_defers_for_the_alias_home_is_accepted(layout_server, qmail_layout):
    """The alias user's home missing, sticky or writable by others: qmail-local
    defers, so postmaster@ and even unknown addresses get 250 (logged); a
    group-writable home (conf-patrn 002) changes nothing."""
    control, _ = qmail_layout
    alias_home = control.parent.parent / "alias"
    server = layout_server(layout_env(control, CHECKRECIPIENTS="1", UNKNOWNRCPTLIMIT="0"))
    rows = [row for row in recorded("verdicts-2.txt") if row[2]]
    assert {condition for _, _, condition in rows} == set(layout.ALIAS_CONDITIONS)
    for condition in layout.ALIAS_CONDITIONS:
        mine = [(address, verdict) for address, verdict, c in rows if c == condition]
        with layout.alias_condition(condition, alias_home):
            codes = rcpt_codes(server.port, [address for address, _ in mine])
        assert codes == {address: expected_code(address, verdict)
                         for address, verdict in mine}, condition
    log = server.wait_log("home directory is writable")
    assert f"rcpt=postmaster@example.com (Unable to switch to {alias_home}" in log
    assert "home directory is sticky" in log and "home directory is writable" in log


def test_relayed_recipients_are_not_checked_unless_asked(layout_server, qmail_layout):
    control, _ = qmail_layout
    rules = '127.0.0.1:allow,RELAYCLIENT=""\n'
    env = layout_env(control, CHECKRECIPIENTS="1")
    relayed = layout_server(env, rules)
    asked = layout_server({**env, "CHECKRELAYEDRECIPIENTS": "1"}, rules)
    addresses = ["nosuchuser@example.com", "rcann-news@example.com"]
    assert rcpt_codes(relayed.port, addresses) == dict(zip(addresses, (250, 250), strict=True))
    assert rcpt_codes(asked.port, addresses) == dict(zip(addresses, (550, 250), strict=True))


def test_off_by_default_and_badrcptto_on_its_own(layout_server, qmail_layout):
    control, _ = qmail_layout
    plain = layout_server(layout_env(control))
    assert rcpt_codes(plain.port, ["nosuchuser@example.com"]) == {"nosuchuser@example.com": 250}
    (control / "badrcptto").write_text("trap@example.com\n@virt.example\n")
    try:
        codes = rcpt_codes(plain.port, ["TRAP@example.com", "joe@virt.example",
                                        "nosuchuser@example.com"])
    finally:
        (control / "badrcptto").unlink()
    assert codes == {"TRAP@example.com": 553, "joe@virt.example": 553,
                     "nosuchuser@example.com": 250}
    assert f"badrcptto refused ip={LOOPBACK} rcpt=TRAP@example.com" in plain.log()


def test_harvesting_ends_the_session_after_the_limit(layout_server, qmail_layout):
    control, _ = qmail_layout
    server = layout_server(layout_env(control, CHECKRECIPIENTS="1", UNKNOWNRCPTLIMIT="3"))
    guesses = ["rcann@example.com"] + [f"guess{i}@example.com" for i in range(6)]
    codes = rcpt_codes(server.port, guesses)
    assert list(codes.values()) == [250, 550, 550, 550, 421]
    assert f"recipient harvesting ip={LOOPBACK} unknown=4: closing" in server.wait_log("harvesting")


def test_a_session_without_recipient_checks_loads_none_of_their_code(control):
    env = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true"}
    session = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"
    unchecked = imported_modules(env, session)
    assert not {"qmail_esmtpd.check_recipients", "qmail_esmtpd.mailboxes"} & unchecked
    checked = imported_modules({**env, "CHECKRECIPIENTS": "1"}, session)
    assert "qmail_esmtpd.mailboxes" in checked and "qmail_esmtpd.cdb" not in checked  # no users/cdb


def test_every_address_of_the_layout_has_its_recorded_verdict():
    """verdicts-2.txt judged every address of the layout and of each alias
    condition; verdicts.txt the first 52, the layout before it grew."""
    addresses = [os.fsencode(address) for address in layout.ADDRESSES]
    assert [address for address, _, c in recorded("verdicts-2.txt") if not c] == addresses
    assert [address for address, _, _ in recorded("verdicts.txt")] == addresses[:52]
    assert [(address, c) for address, _, c in recorded("verdicts-2.txt") if c] == [
        (os.fsencode(address), condition)
        for condition, mine in layout.ALIAS_CONDITIONS.items() for address in mine]
