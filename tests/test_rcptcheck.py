"""Recipient validation against what real qmail did (tests/rcptcheck/), through
real tcpserver, the server running as an unprivileged user as qmaild does.

The layout real notqmail judged (rcptcheck/layout.py, rcptcheck/verdicts.txt,
recorded by rcptcheck/record.py) is rebuilt in a temporary folder: the same
control files, users/assign compiled as qmail-newu compiles it, the same homes
and .qmail files.  The system users are real to getpwnam(): each connection
runs in its own mount namespace where our passwd file is bound over
/etc/passwd, then drops to an unprivileged uid.  So this needs root (and
unshare, setpriv); elsewhere it is skipped.
"""

import os
import shutil
import smtplib
import sys
from pathlib import Path

import pytest

from harness.files import compile_users, write_launcher
from harness.processes import imported_modules
from harness.system_users import world_readable_dir

sys.path.insert(0, str(Path(__file__).resolve().parent / "rcptcheck"))
import layout  # noqa: E402

VERDICTS = Path(__file__).resolve().parent / "rcptcheck" / "verdicts.txt"
FIRST_UID = 47001
ALIAS_UID = 47100
SERVER_UID = 47200  # plays qmaild
RCPTHOSTS = "example.com\nlocalhost\nvirt.example\n.sub.example\nother.example\nremote.example\n"


def recorded() -> list[tuple[str, str]]:
    rows = []
    for line in VERDICTS.read_text().splitlines():
        if line and not line.startswith("#"):
            address, verdict, _words = line.split("\t")
            rows.append((address, verdict))
    return rows


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
           for i, name in enumerate(layout.USERS)}
    (base / "homes").mkdir()
    layout.build(base / "qmail", alias_home, ids)
    compile_users(base / "qmail" / "users" / "assign", base / "qmail" / "users" / "cdb")
    control = base / "qmail" / "control"
    (control / "rcpthosts").write_text(RCPTHOSTS)
    passwd = base / "passwd"
    passwd.write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        f"alias:x:{ALIAS_UID}:{ALIAS_UID}::{alias_home}:/usr/sbin/nologin\n"
        + "".join(f"{name}:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n"
                  for name, (uid, gid, home) in ids.items()))
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


def rcpt_codes(port: int, addresses: list[str]) -> dict[str, int]:
    """One session, one RCPT each; the reply code each got (421 ends it)."""
    codes = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("sender@example.net")
        for address in addresses:
            try:
                codes[address] = client.rcpt(address)[0]
            except smtplib.SMTPServerDisconnected:
                break
            if codes[address] == 421:
                break
    return codes


def test_rcpt_refuses_exactly_what_qmail_bounced(layout_server, qmail_layout):
    control, _ = qmail_layout
    server = layout_server(layout_env(control, CHECKRECIPIENTS="1", UNKNOWNRCPTLIMIT="0"))
    rows = recorded()
    assert len(rows) >= 40
    codes = rcpt_codes(server.port, [address for address, _ in rows])
    expected = {}
    for address, verdict in rows:
        unreadable = any(address.lower().startswith(user) for user in layout.UNREADABLE)
        expected[address] = 550 if verdict == "bounced" and not unreadable else 250
    assert codes == expected
    log = server.wait_log("recipient accepted unchecked")
    assert "recipient unknown ip=127.0.0.1 rcpt=nosuchuser@example.com" in log
    # once a session: rcfrank-foo is just as unreadable, and was not logged again
    assert log.count("recipient accepted unchecked") == 1
    assert "rcpt=rceve-foo@example.com (" in log and "Permission denied" in log


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
    assert "badrcptto refused ip=127.0.0.1 rcpt=TRAP@example.com" in plain.log()


def test_harvesting_ends_the_session_after_the_limit(layout_server, qmail_layout):
    control, _ = qmail_layout
    server = layout_server(layout_env(control, CHECKRECIPIENTS="1", UNKNOWNRCPTLIMIT="3"))
    guesses = ["rcann@example.com"] + [f"guess{i}@example.com" for i in range(6)]
    codes = rcpt_codes(server.port, guesses)
    assert list(codes.values()) == [250, 550, 550, 550, 421]
    assert "recipient harvesting ip=127.0.0.1 unknown=4: closing" in server.wait_log("harvesting")


def test_a_session_without_recipient_checks_loads_none_of_their_code(control):
    env = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true"}
    session = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"
    unchecked = imported_modules(env, session)
    assert not {"qmail_esmtpd.check_recipients", "qmail_esmtpd.mailboxes"} & unchecked
    checked = imported_modules({**env, "CHECKRECIPIENTS": "1"}, session)
    assert "qmail_esmtpd.mailboxes" in checked and "qmail_esmtpd.cdb" not in checked  # no users/cdb


def test_every_address_of_the_layout_has_its_recorded_verdict():
    assert [address for address, _ in recorded()] == layout.ADDRESSES
