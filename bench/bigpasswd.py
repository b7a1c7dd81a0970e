"""Figure 1d: what recipient checking costs per RCPT with a large /etc/passwd.

qmail-getpw asks getpwnam() for each prefix of a local part that ends at a
dash; with NSS `files` every name that is not there reads the whole file.
The figure binds the machine's passwd, and the same with PASSWD_USERS more
lines, over /etc/passwd in a private mount namespace (as
tests/test_rcptcheck.py does), so it needs root and unshare; elsewhere it
says it was skipped.  The server gets no users/cdb: every local recipient
goes to the user database.
"""

import os
import shutil
import statistics
from pathlib import Path

from . import BenchError, progress
from .figures import section
from .pipes import run_measured
from .setup import Bench

PASSWD_USERS = 20_000
RCPTS = 25  # per session: the per-RCPT cost is the difference to the baseline, over this
ALIAS_UID = 7790  # INSTALL.ids's alias user
BASELINE = b"someone@relay.example"  # in rcpthosts, not in locals: remote, nothing looked up
ADDRESSES = (  # (label, address)
    ("nosuchuser@ (one name, not there)", b"nosuchuser@example.com"),
    ("postmaster@ (the alias's .qmail file)", b"postmaster@example.com"),
    ("the issue's 899 bytes of dashes", b"-" * 887 + b"@example.com"),
    ("899 bytes of a-a-a-... (16 names)", (b"a-" * 444)[:887] + b"@example.com"),
)
PASSWDS = ("this machine's", f"+{PASSWD_USERS:,} lines".replace(",", " "))


def available() -> str | None:
    """Why the figure cannot be taken here, or None."""
    if os.geteuid() != 0:
        return "needs root (a passwd of its own in a mount namespace)"
    if not shutil.which("unshare"):
        return "needs unshare(1)"
    return None


def write_fixture(directory: Path) -> tuple[Path, Path, Path]:
    """qmail home with control/ (checking on, no users/cdb), the machine's passwd
    with the alias user, and the same with PASSWD_USERS users after it."""
    home = directory / "bigpasswd"
    control = home / "control"
    control.mkdir(parents=True)
    for name, text in (("me", "mx.example.com"), ("rcpthosts", "example.com\nrelay.example"),
                       ("locals", "example.com"), ("checkrecipients", "1"),
                       ("unknownrcptlimit", "0")):
        (control / name).write_text(text + "\n")
    alias_home = home / "alias"
    alias_home.mkdir()
    (alias_home / ".qmail-postmaster").write_text("./Mailbox\n")
    os.chown(alias_home, ALIAS_UID, ALIAS_UID)
    own = Path("/etc/passwd").read_bytes().rstrip(b"\n") + b"\n"
    if not any(line.startswith(b"alias:") for line in own.splitlines()):
        own += f"alias:x:{ALIAS_UID}:{ALIAS_UID}::{alias_home}:/bin/true\n".encode()
    small, big = home / "passwd", home / "passwd-big"
    small.write_bytes(own)
    big.write_bytes(own + "".join(
        f"user{i:05d}:x:{20000 + i}:{20000 + i}:bench user:/home/user{i:05d}:/usr/sbin/nologin\n"
        for i in range(PASSWD_USERS)).encode())
    return control, small, big


def session_input(address: bytes) -> bytes:
    """EHLO, MAIL, RCPTS times RCPT to `address`, QUIT."""
    return (b"EHLO bench.example\r\nMAIL FROM:<a@bench.example>\r\n"
            + (b"RCPT TO:<" + address + b">\r\n") * RCPTS + b"QUIT\r\n")


def measure(bench: Bench, runs: int) -> dict[tuple[str, str], float]:
    """(passwd, address label) -> median CPU ms per RCPT over the baseline's."""
    control, small, big = write_fixture(bench.workdir)
    env = {**bench.env(control=control), "QMAIL_HOME": str(control.parent)}
    wrapper = 'mount --bind "$0" /etc/passwd && exec "$@"'
    passwds = zip(PASSWDS, (small, big), strict=True)
    variants = [(label, passwd, address) for label, passwd in passwds
                for address in (BASELINE, *(a for _, a in ADDRESSES))]
    samples: dict[tuple[str, bytes], list[float]] = {(v[0], v[2]): [] for v in variants}
    for _ in range(runs + 1):  # the first round warms the page cache
        for label, passwd, address in variants:
            argv = ["unshare", "-m", "sh", "-c", wrapper, str(passwd), str(bench.launcher.path)]
            cpu, status, out = run_measured(argv, session_input(address), env)
            codes = [line[:3] for line in out.split(b"\r\n")[-2 - RCPTS:-2]]
            if status != 0 or len(codes) != RCPTS or not set(codes) <= {b"250", b"550"}:
                raise BenchError(f"RCPT with {label} passwd: status {status}, {out[-300:]!r}")
            samples[(label, address)].append(cpu * 1000)
    for key in samples:
        del samples[key][0]
    result = {}
    for label in PASSWDS:
        base = statistics.median(samples[(label, BASELINE)])
        for what, address in ADDRESSES:
            result[(label, what)] = (statistics.median(samples[(label, address)]) - base) / RCPTS
    return result


def rcpt_with_big_passwd(bench: Bench, runs: int) -> None:
    """Figure 1d: CPU per checked RCPT, the machine's passwd and a large one."""
    section(f"1d. CPU per RCPT with checkrecipients, /etc/passwd +{PASSWD_USERS} lines, ms")
    why = available()
    if why:
        print(f"   skipped: {why}")
        return
    progress(f"RCPT with a {PASSWD_USERS}-line passwd, {runs} runs ...")
    result = measure(bench, runs)
    print(f"   over a remote RCPT: sessions of {RCPTS} RCPTs on pipes, medians of {runs} runs;")
    print("   NSS as this machine has it (nsswitch.conf), no users/cdb")
    print(f"   {'':40} " + " ".join(f"{label:>16}" for label in PASSWDS))
    for what, _ in ADDRESSES:
        print(f"   {what:40} " + " ".join(f"{result[(label, what)]:16.2f}" for label in PASSWDS))
