"""Log lines an admin (and fail2ban) can use: every line of the SMTP server
names the client (`ip=`), and the sending limit's refusals say what was sent
today and what the message holds (test_hardening checks the MAIL, RCPT and
DATA lines beside the limit's own tests).  Real tcpserver, real PostgreSQL."""

import subprocess
import sys

from test_auth import ALICE, ALICE_PW, login, smtp

from qmail_esmtpd.auth.db import Database
from qmail_esmtpd.auth.limit import DailyLimit

from harness.frontend import RELAY_LOCALHOST
from harness.paths import ROOT
from harness.processes import talk

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


def test_counting_messages_the_line_says_messages(db, tcpserver):
    db.add(ALICE, ALICE_PW, sendlimit=1)
    server = tcpserver(":allow\n", env=db.env(SENDLIMITMESSAGES="1"))
    with smtp(server) as c:
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", ["x@elsewhere.example", "y@elsewhere.example"], MESSAGE)
        assert c.mail("alice@client.test")[0] == 451
    assert ("sendlimit refused user=alice ip=127.0.0.1 at=MAIL: 1 of 1 messages a day already "
            "sent") in server.wait_log("at=MAIL")


def test_a_database_the_limit_cannot_reach_is_logged_with_the_client(capfd):
    down = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=1")
    limit = DailyLimit(down, 7, 50, remoteip="192.0.2.7")
    assert limit.remaining() is None and limit.charge(1) is None
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and all(
        line.startswith("qmail-esmtpd: sendlimit database: user id 7 ip=192.0.2.7: ")
        for line in lines), lines


def test_unreadable_controls_are_logged_with_the_client(tcpserver, control):
    (control / "rcpthosts").unlink()
    (control / "rcpthosts").mkdir()  # exists, cannot be read as a file: even as root
    server = tcpserver(RELAY_LOCALHOST)
    assert talk(server.port, b"") == b"421 unable to read controls (#4.3.0)\r\n"
    assert "qmail-esmtpd: fatal ip=127.0.0.1: " in server.wait_log("fatal")


def test_an_internal_error_names_the_client_on_every_line(control):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from qmail_esmtpd import protocol, cli\n"
            "def broken(self, arg): raise RuntimeError('simulated bug')\n"
            "protocol.Session.noop = broken\n"
            "cli.run()\n")
    out = subprocess.run([sys.executable, "-c", code], input=b"NOOP\r\n", capture_output=True,
                         timeout=30, env={"QMAIL_CONTROL": str(control), "PATH": "/usr/bin:/bin",
                                          "TCPREMOTEIP": "192.0.2.7"})
    lines = out.stderr.decode().splitlines()
    assert any("simulated bug" in line for line in lines)
    assert all(line.startswith("qmail-esmtpd: internal error ip=192.0.2.7: ") for line in lines)
