"""Postfix 3.7 as the anchor of the servers side by side: an own instance on loopback.

An admin choosing between Postfix and a qmail host compares exactly this, so
the bench runs Postfix as shipped (smtpd serving up to `max_use` = 100
connections per process, a real queue file written and fsynced by cleanup,
qmgr handing it to the discard transport) with everything that would take it
off the machine or make it wait switched off: no DNS, no peer-name lookup, no
chroot, listening on 127.0.0.1 only.  Its daemons run as the package's
postfix user (mail_owner: Postfix wants its own, not nobody, which is its
default_privs).  Its config and queue directories are in
the bench's temporary workdir; `postfix -c DIR start` starts it and
`postfix -c DIR stop` ends it (the master and every child it started).
Postfix logs to syslog, as a package's does (its CPU is outside the tree;
where there is no /dev/log the lines are dropped); the postfix command
writes its errors to a terminal too, so it is given one to show why a
start failed.
`tools/install-deps bench` installs the package (and disables its service).
"""

import functools
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from tests.harness.processes import StartError, free_port, wait_listening

POSTFIX = "/usr/sbin/postfix"
ACCEPTED = b"250 2.0.0 Ok: queued"  # its reply to the end of DATA

# The parameters that differ from the defaults, and why.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
# The package's programs, whatever the instance's config_directory.
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
myhostname = postfix.bench.example
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Everything accepted is delivered to the discard transport: queue file written,
# fsynced, scheduled, delivered, removed; nothing leaves the machine.
default_transport = discard
relay_transport = discard
local_transport = discard
# No name service on the path of a session.
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_host_lookup = native
biff = no
# Postfix's defaults, said out loud: they are the point of the comparison.
max_use = 100
max_idle = 100
{tls}"""

TLS_CF = """\
smtpd_tls_security_level = may
smtpd_tls_cert_file = {pem}
smtpd_tls_key_file = {pem}
"""

# master.cf: the services a queued-and-discarded message passes through, and
# those the master expects to exist; "n" in the chroot column everywhere.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
"""


@functools.cache
def name() -> str:
    """The row's name: "Postfix 3.7.11 smtpd" (the installed version)."""
    try:
        version = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"Postfix {version or '?'} smtpd"


def missing() -> str | None:
    """Why this machine cannot run the Postfix rows, or None."""
    if not os.path.exists(POSTFIX):
        return f"no {POSTFIX} (`tools/install-deps bench` as root installs postfix)"
    if os.geteuid() != 0:
        return "Postfix's master must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user (install the postfix package)"
    return None


class Postfix:
    """An own Postfix instance on 127.0.0.1:`port` under `directory`.

    `.port` to connect to, `.pid` the master's (the root of its process
    tree: it daemonizes, so it is not our child), `.stop()` ends it and
    removes `directory`.  `pem` (certificate and key) offers STARTTLS.
    """

    def __init__(self, directory: Path, pem: Path | None = None) -> None:
        self.directory = directory
        self.config = directory / "etc"
        self.config.mkdir(parents=True)
        self.port = free_port()
        data = directory / "data"
        data.mkdir()
        (directory / "queue").mkdir()  # root's; `postfix start` makes what is inside
        shutil.chown(data, "postfix")
        tls = TLS_CF.format(pem=pem) if pem else ""
        (self.config / "main.cf").write_text(
            MAIN_CF.format(queue=directory / "queue", data=data, tls=tls,
))
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self.pid = 0
        started, said = self.postfix("start")
        if started != 0:
            self.stop()
            raise StartError(f"postfix start: exit {started}: {said[-600:]}")
        pidfile = directory / "queue" / "pid" / "master.pid"
        self.pid = int(pidfile.read_text().split()[0])
        try:
            wait_listening(self.port, _Alive(self.pid), "postfix master")
        except StartError:
            self.stop()
            raise

    def postfix(self, command: str) -> tuple[int, str]:
        """`postfix -c DIR command`: its exit status and what it said (on a
        terminal: postfix writes its messages to stderr only if it is one)."""
        terminal, stderr = os.openpty()
        said = []
        try:
            try:
                done = subprocess.run([POSTFIX, "-c", str(self.config), command],
                                      env={"PATH": "/usr/sbin:/usr/bin:/bin"},
                                      stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                      timeout=60)
            finally:
                os.close(stderr)
            os.set_blocking(terminal, False)  # the daemon may hold the other end
            while chunk := os.read(terminal, 4096):
                said.append(chunk)
        except OSError:  # EAGAIN: all said; EIO: no writer left
            pass
        finally:
            os.close(terminal)
        return done.returncode, b"".join(said).decode(errors="replace")

    def stop(self) -> None:
        """`postfix stop`, then wait (up to 10 s, then SIGKILL) until the master
        is gone: it ends its children before it exits."""
        if self.pid:
            self.postfix("stop")
            deadline = time.monotonic() + 10
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid):
                os.kill(self.pid, 9)
            self.pid = 0
        shutil.rmtree(self.directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Alive:
    """What wait_listening() polls (a Popen's poll()) for a process not our child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if not _alive(self.pid):
            self.returncode = -1
        return self.returncode
