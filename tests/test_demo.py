"""`make demo`'s script for real: tcpserver, PostgreSQL, the swaks commands it prints
(plain relaying, AUTH, the daily limit), the Maildir it fills, and Ctrl-C."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from harness.paths import ROOT
from harness.processes import free_port, wait_listening

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
DEMO_LIMIT = 3  # demo.py's: recipients a day for the demo user


def swaks(command: str) -> subprocess.CompletedProcess:
    """A command the banner printed, run as the user would paste it (sh)."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)


def printed(banner: str, after: str) -> str:
    """The command on the line after the one containing `after`."""
    lines = banner.splitlines()
    index = next(i for i, line in enumerate(lines) if after in line)
    return lines[index + 1].strip()


def read_banner(demo: subprocess.Popen, timeout: float = 60) -> str:
    """The demo's output up to the Ctrl-C line (it comes before tcpserver starts)."""
    text = ""
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops" not in text:
        assert time.monotonic() < deadline and demo.poll() is None, text
        text += demo.stdout.readline()
    return text


def test_demo_with_auth_relays_hits_the_limit_and_stops_on_ctrl_c(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "DEMO_PORT": str(port), "DEMO_DIR": str(tmp_path / "run")}
    env.pop("QMAILQUEUE", None)
    demo = subprocess.Popen([str(VENV_PYTHON), str(ROOT / "demo" / "demo.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        banner = read_banner(demo)
        wait_listening(port, demo, "demo", timeout=20)
        new = tmp_path / "run" / "Maildir" / "new"

        dialogue = swaks(printed(banner, "in cleartext"))
        assert dialogue.returncode == 0 and "<-  250-PIPELINING" in dialogue.stdout, \
            dialogue.stdout
        assert "telnet" not in banner

        plain = swaks(printed(banner, "send a message"))
        assert plain.returncode == 0, plain.stdout
        refused = swaks(printed(banner, "see relaying refused"))
        assert "553 sorry, that domain isn't in my list of allowed rcpthosts" in refused.stdout

        login = swaks(printed(banner, "authenticate:"))
        assert login.returncode == 0 and "235 ok, go ahead" in login.stdout, login.stdout
        relay = swaks(printed(banner, "authenticate and relay:"))
        assert relay.returncode == 0, relay.stdout
        assert f"the day's message {DEMO_LIMIT + 1} gets 451" in banner, banner
        limit = swaks(printed(banner, "this loop's message"))
        # the message above counted 1: the loop's third and fourth meet the limit
        assert limit.stdout.count("451 daily sending limit reached") == 2, limit.stdout

        messages = [path.read_text() for path in new.iterdir()]
        assert len(messages) == 4  # one plain, then three with AUTH: the limit is 3
        assert sum("ESMTPSA" in text and "(demo@127.0.0.2)" in text for text in messages) == 3
        show = swaks(printed(banner, "the account's count"))
        assert re.search(r"^today:\s+3$", show.stdout, re.M), show.stdout
        cluster = re.search(r"host=(\S+)/sock ", banner)
        assert cluster, banner
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        rest = demo.communicate(timeout=60)[0]
    assert demo.returncode == 0, rest
    assert "Traceback" not in banner + rest
    # nothing left running: tcpserver and its sessions, PostgreSQL and its files
    assert not Path(cluster[1]).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(port) not in ps and cluster[1] not in ps, ps

