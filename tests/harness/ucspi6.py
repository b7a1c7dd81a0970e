"""Debian's ucspi-tcp-ipv6 (tcpserver and tcprules with the IPv6 patch), the
reference for qmail-esmtpd-server's IPv6, unpacked beside ucspi-tcp.

The package conflicts with ucspi-tcp, which the other tests use, so it is
not installed: `apt-get download` fetches it once and `dpkg -x` unpacks it
into .venv/ucspi-tcp-ipv6 (remade with the venv).  Its tcprules is the one
that parses IPv6 keys (`::1:allow`), so its cdb is the one both servers read.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

from .frontend import Frontend
from .paths import ROOT, SERVER
from .processes import StartError, end_group

UNPACKED = ROOT / ".venv" / "ucspi-tcp-ipv6"
PACKAGE = "ucspi-tcp-ipv6"


def ucspi6_bin() -> Path:
    """The folder with ucspi-tcp-ipv6's tcpserver and tcprules, unpacked on first use."""
    bindir = UNPACKED / "usr" / "bin"
    if (bindir / "tcpserver").exists():
        return bindir
    with tempfile.TemporaryDirectory(prefix="ucspi6-") as tmp:
        try:
            download = ["apt-get", "download", PACKAGE]
            if subprocess.run(download, cwd=tmp, capture_output=True,
                              timeout=300).returncode != 0:  # no package lists yet
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
                subprocess.run(download, cwd=tmp, check=True, capture_output=True, timeout=300)
            (deb,) = Path(tmp).glob("*.deb")
            staged = Path(tmp) / "root"
            subprocess.run(["dpkg", "-x", str(deb), str(staged)], check=True,
                           capture_output=True, timeout=60)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            raise StartError(f"unable to get {PACKAGE} (apt-get download, dpkg -x): {e}") \
                from None
        shutil.rmtree(UNPACKED, ignore_errors=True)
        shutil.move(str(staged), UNPACKED)
    return bindir


def compile_rules6(rules: str, cdb: Path) -> None:
    """`rules` through ucspi-tcp-ipv6's own tcprules into `cdb`."""
    tcprules = ucspi6_bin() / "tcprules"
    try:
        subprocess.run([str(tcprules), str(cdb), f"{cdb}.tmp"], input=rules.encode(),
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise StartError(f"{tcprules}: {e}") from None


class Ucspi6Server(Frontend):
    """`argv` (qmail-esmtpd) under ucspi-tcp-ipv6's tcpserver -H -R on `host`
    (0: IPv6 and IPv4 on one socket), following the compiled `cdb`."""

    def __init__(self, workdir: Path, cdb: Path, env: dict, argv: list | None = None,
                 host: str = "0", options: list | None = None) -> None:
        self.host = host
        self.logpath = workdir / f"ucspi6-{id(self)}.log"
        with self.logpath.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(ucspi6_bin() / "tcpserver"), "-v", "-1", "-R", "-H", "-l", "localhost",
                 "-c", "100", *(options or []), "-x", str(cdb), host, "0",
                 *map(str, argv or [SERVER])],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # -1: the port, once listening
        if not line.strip().isdigit():
            self.stop()
            raise StartError(f"ucspi-tcp-ipv6 tcpserver did not start: {self.log()[-600:]}")
        self.port = int(line)

    def stop(self) -> None:
        end_group(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
