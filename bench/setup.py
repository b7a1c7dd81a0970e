"""What the figures run against: the installed launcher, control files, the
qmail-queue sink and, for AUTH, the database."""

import ast
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import SERVER

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
    sink = directory / "qmail-queue-sink"
    sink.write_text(SINK_SCRIPT)
    sink.chmod(0o755)
    return control, sink


@dataclass
class Bench:
    """Everything a figure needs to run sessions."""

    launcher: Launcher
    workdir: Path
    control: Path
    sink: Path
    auth: AuthDB | None  # None: --no-auth

    def env(self, authdb: bool = False) -> dict[str, str]:
        """What tcpserver would give a plain, non-relaying client on localhost.

        `authdb`: on a server configured for AUTH against the cluster.
        """
        env = {
            "PATH": "/usr/bin:/bin",
            "QMAIL_CONTROL": str(self.control),
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
        auth = None
        if with_auth:
            progress("throwaway PostgreSQL cluster for AUTH ...")
            auth = stack.enter_context(auth_database())
        yield Bench(read_launcher(), workdir, control, sink, auth)
