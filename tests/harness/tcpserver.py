"""qmail-esmtpd under ucspi-tcp's tcpserver, as service/run starts it."""

import os
import subprocess
from pathlib import Path

from .frontend import Frontend, compile_rules
from .processes import StartError, end_group, free_port, wait_listening


class TcpServer(Frontend):
    """`argv` (qmail-esmtpd) under real tcpserver, with `rules` compiled by real tcprules.

    Listens on `host`:`port` once constructed (any 127.x.y.z works on Linux's
    loopback, so two frontends can run side by side); tcpserver runs in its own
    process group, which stop() ends.  `verbose` adds tcpserver's -v lines to
    the log, beside the server's own stderr.
    """

    def __init__(self, workdir: Path, rules: str, env: dict, argv: list,
                 verbose: bool = True, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        cdb = workdir / f"tcp.smtp-{self.port}.cdb"
        compile_rules(rules, cdb)
        self.logpath = workdir / f"tcpserver-{self.port}.log"
        flags = ["-v"] if verbose else []
        with self.logpath.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    ["tcpserver", *flags, "-R", "-H", "-l", "localhost", "-c", "100",
                     "-x", str(cdb), host, str(self.port), *map(str, argv)],
                    env={"PATH": os.environ["PATH"], **env}, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            except OSError as e:
                raise StartError(f"tcpserver: {e}") from None
        try:
            wait_listening(self.port, self.proc, "tcpserver", host=host)
        except StartError as e:
            self.stop()
            raise StartError(f"{e}: {self.log()[-600:]}") from None

    def stop(self) -> None:
        """End tcpserver and every session it runs; returns once tcpserver is reaped."""
        end_group(self.proc)
