"""What TcpServer and ForkServer share: tcprules' rules compiled into a cdb,
`host`:`port` to connect to, and the log of the listener and its sessions."""

import subprocess
import time
from pathlib import Path

from .processes import StartError

RELAY_LOCALHOST = '127.0.0.1:allow,RELAYCLIENT=""\n:allow\n'  # tcprules: we may relay
# where the end-to-end suites' clients connect from and to; the IPv6 run of
# test_forkserver_suites.py has their tests and helpers see ::1 here instead
LOOPBACK = "127.0.0.1"


def compile_rules(rules: str, cdb: Path) -> None:
    """`rules` through real tcprules into `cdb` (a new inode, as an admin's `make` does)."""
    try:
        subprocess.run(["tcprules", str(cdb), f"{cdb}.tmp"], input=rules.encode(),
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise StartError(f"tcprules: {e}") from None


class Frontend:
    """qmail-esmtpd behind a listener on `host`:`port`; its stderr in `logpath`."""

    host: str
    port: int
    logpath: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def wait_log(self, *texts: str, timeout: float = 10) -> str:
        """The log once it holds every one of `texts`, or as it is at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(text in log for text in texts) or time.monotonic() > deadline:
                return log
            time.sleep(0.01)

    def stop(self) -> None:
        raise NotImplementedError
