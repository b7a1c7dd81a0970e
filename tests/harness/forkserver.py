"""qmail-esmtpd-server, the warm forking server, in tcpserver's place."""

import os
import subprocess
from pathlib import Path

from .frontend import Frontend, compile_rules
from .paths import FORKSERVER, SERVER
from .processes import StartError, end_group
from .system_users import service_ids
from .ucspi6 import compile_rules6


class ForkServer(Frontend):
    """qmail-esmtpd-server in tcpserver's place: TcpServer's interface (host,
    port, log, wait_log, stop) with the same rules compiled by real tcprules.

    `argv` is what TcpServer would run: the qmail-esmtpd launcher first, then
    its arguments.  `options` go before HOST PORT (-c, -C, ...), `wrapper`
    before the program (softlimit and its options).  `host` ("::1", "0")
    is what it listens on and what clients connect to; `rules6` compiles
    the rules with ucspi-tcp-ipv6's tcprules (IPv6 keys), `cdb` names a
    compiled file to follow instead of compiling `rules`.  Started as
    root, the sessions run as nobody (service_ids()); the caller makes sure
    nobody can read what they read (let_service_user_in()).
    """

    def __init__(self, workdir: Path, rules: str, env: dict, argv: list | None = None,
                 verbose: bool = True, host: str = "127.0.0.1",
                 options: list | None = None, wrapper: list | None = None,
                 program: Path = FORKSERVER, rules6: bool = False,
                 cdb: Path | None = None) -> None:
        argv = argv or [SERVER]
        if Path(argv[0]) != SERVER:
            raise StartError(f"qmail-esmtpd-server runs qmail-esmtpd only, not {argv[0]}")
        self.host = host
        self.rules6 = rules6
        if cdb is None:
            self.cdb = workdir / f"tcp.smtp-server-{id(self)}.cdb"
            self.compile_rules(rules)
        else:
            self.cdb = cdb
        self.logpath = workdir / f"forkserver-{id(self)}.log"
        flags = ["-v"] if verbose else []
        path = "/usr/local/bin:/usr/bin:/bin" if os.geteuid() == 0 else os.environ["PATH"]
        with self.logpath.open("wb") as log:
            self.proc = subprocess.Popen(
                [*(wrapper or []), str(program), *flags, "-1", "-l", "localhost", "-c", "100",
                 "-T", "5",
                 *service_ids(), "-x", str(self.cdb), *map(str, options or []), host, "0",
                 *map(str, argv[1:])],
                env={"PATH": path, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # -1: the port, once listening
        if not line.strip().isdigit():
            self.stop()
            raise StartError(f"qmail-esmtpd-server did not start: {self.log()[-600:]}")
        self.port = int(line)

    def compile_rules(self, rules: str) -> None:
        """New rules for the running server: a new cdb in place, as an admin's `make` makes it."""
        (compile_rules6 if self.rules6 else compile_rules)(rules, self.cdb)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM to the server and its sessions at once, so that a client a
        test left open does not hold the teardown for the -T grace (SIGTERM's
        graceful wait has a test of its own)."""
        end_group(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
