"""What the figures run against: the installed launcher, control files, the
qmail-queue sink and, for AUTH, the database."""

import ast
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.files import compile_users
from tests.harness.paths import SERVER

from . import BenchError, progress
from .database import AuthDB, auth_database
from .session import ME, RCPTHOSTS

# qmail-queue stand-in: one exec'd cat reads the message (fd 0) and then the
# envelope (fd 1, moved to fd 3) to EOF, so the server never sees a broken pipe.
SINK_SCRIPT = "#!/bin/sh\nexec /bin/cat /dev/stdin /dev/fd/3 3<&1 >/dev/null\n"


@dataclass
class Launcher:
    """The installed launcher: the interpreter and flags of its shebang, its sys.path."""

    path: Path
    interpreter: str
    flags: list[str]
    paths: list[str]


def read_launcher(launcher: Path = SERVER) -> Launcher:
    """Interpreter, its flags and sys.path prefix, from the launcher's text.

    The bare-interpreter baseline must be the very binary tcpserver ends up
    running, not whatever `python3` is on PATH.
    """
    try:
        lines = launcher.read_text().splitlines()
    except OSError as e:
        raise BenchError(f"cannot read {launcher}: {e} (run `make venv`)") from None
    if not lines or not lines[0].startswith("#!"):
        raise BenchError(f"{launcher}: no shebang line")
    interpreter, *flags = lines[0][2:].split()
    paths: list[str] = []
    for line in lines[1:]:
        if line.startswith("sys.path[:0]"):
            paths = ast.literal_eval(line.split("=", 1)[1].strip())
    return Launcher(launcher, interpreter, flags, paths)


def write_fixture(directory: Path) -> tuple[Path, Path]:
    """Control files and the qmail-queue sink in a throwaway directory."""
    control = directory / "control"
    control.mkdir()
    (control / "me").write_text(ME + "\n")
    (control / "rcpthosts").write_text(RCPTHOSTS + "\n")
    (control / "authfailkey").write_text("bench" * 13 + "\n")  # failures take the keyed path
    sink = directory / "qmail-queue-sink"
    sink.write_text(SINK_SCRIPT)
    sink.chmod(0o755)
    return control, sink


# The certificate of the STARTTLS figures: what README tells an admin to make.
CERTIFICATE = "self-signed RSA 2048 (openssl req -x509 -newkey rsa:2048)"


def write_tls_control(directory: Path, control: Path) -> Path:
    """A second control directory: the same files and control/servercert.pem.

    The plain figures keep theirs without a certificate: with one, EHLO
    offers STARTTLS and AUTH only inside TLS.
    """
    tls_control = directory / "control-tls"
    tls_control.mkdir()
    for name in ("me", "rcpthosts"):
        (tls_control / name).write_bytes((control / name).read_bytes())
    key, cert = directory / "key.pem", directory / "cert.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchError(f"openssl cannot make the STARTTLS figures' certificate: {e}") from None
    pem = tls_control / "servercert.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    return tls_control


# The recipient-check figures: b@example.com is a users/assign entry whose
# .qmail-b exists, so a check reads users/cdb and stats one file, as on a
# virtual-domain host; the plugin figure runs one shell plugin per RCPT.
SPP_PLUGIN = ':case "$SMTPRCPTTO" in spam@*) echo "E550 no spam here";; esac'


def write_check_controls(directory: Path, control: Path) -> tuple[Path, Path, Path]:
    """Three more control directories: recipient validation on; one [rcpt]
    plugin; SMTPUTF8 offered (control/smtputf8)."""
    made = []
    for name in ("control-rcptcheck", "control-spp", "control-smtputf8"):
        other = directory / name
        other.mkdir()
        for base in ("me", "rcpthosts"):
            (other / base).write_bytes((control / base).read_bytes())
        made.append(other)
    rcptcheck, spp, smtputf8 = made
    (smtputf8 / "smtputf8").write_text("1\n")
    (rcptcheck / "checkrecipients").write_text("1\n")
    (rcptcheck / "locals").write_text(RCPTHOSTS + "\n")
    home = directory / "home-b"
    home.mkdir()
    (home / ".qmail-b").write_text("./Maildir/\n")
    users = directory / "users"
    users.mkdir()
    (users / "assign").write_text(f"=b:b:{1000}:{1000}:{home}:-:b:\n.\n")
    compile_users(users / "assign", users / "cdb")
    (spp / "smtpplugins").write_text(f"[rcpt]\n{SPP_PLUGIN}\n")
    return rcptcheck, spp, smtputf8


@dataclass
class Bench:
    """Everything a figure needs to run sessions."""

    launcher: Launcher
    workdir: Path
    control: Path
    tls_control: Path  # control with servercert.pem
    sink: Path
    auth: AuthDB | None  # None: --no-auth
    rcptcheck_control: Path  # control with checkrecipients (users/ in workdir, the qmail home)
    spp_control: Path  # control with one [rcpt] plugin
    smtputf8_control: Path  # control with smtputf8 1

    def env(self, authdb: bool = False, tls: bool = False,
            control: Path | None = None) -> dict[str, str]:
        """What tcpserver would give a plain, non-relaying client on localhost.

        `authdb`: on a server configured for AUTH against the cluster;
        `tls`: with control/servercert.pem (STARTTLS offered, AUTH only in TLS).
        """
        env = {
            "PATH": "/usr/bin:/bin",
            "QMAIL_HOME": str(self.workdir),
            "QMAIL_CONTROL": str(control or (self.tls_control if tls else self.control)),
            "QMAILQUEUE": str(self.sink),
            "PROTO": "TCP",
            "TCPLOCALIP": "127.0.0.1",
            "TCPLOCALPORT": "25",
            "TCPLOCALHOST": "localhost",
            "TCPREMOTEIP": "127.0.0.1",
            "TCPREMOTEPORT": "40000",
        }
        if authdb:
            if self.auth is None:
                raise BenchError("an AUTH figure without the database (--no-auth)")
            env["AUTHDB"] = self.auth.conninfo
        return env

    def python(self, *args: str) -> list[str]:
        """argv of the launcher's interpreter, started like the launcher (-I -S)."""
        return [self.launcher.interpreter, "-I", "-S", *args]


@contextmanager
def prepared(with_auth: bool) -> Iterator[Bench]:
    """A Bench in a temporary directory (and a database if `with_auth`); all removed after."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="qmail-esmtpd-bench.")))
        control, sink = write_fixture(workdir)
        tls_control = write_tls_control(workdir, control)
        rcptcheck_control, spp_control, smtputf8_control = write_check_controls(workdir,
                                                                                control)
        auth = None
        if with_auth:
            progress("throwaway PostgreSQL cluster for AUTH ...")
            auth = stack.enter_context(auth_database())
        yield Bench(read_launcher(), workdir, control, tls_control, sink, auth,
                    rcptcheck_control, spp_control, smtputf8_control)
