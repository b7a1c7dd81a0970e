"""Upgrades: `make install` over a running qmail-esmtpd-server hands it to
the new code, and never gives a session old and new code mixed.

The server imports what sessions need before it serves (preload.py), and a
session runs that code, the one the server started with, from its first
byte to its last.  When install has renamed a new tree into place, the
server execs the new code in its own process (below), once that code has
shown it starts.  Until then, or when it does not start, what could mix
is a module imported later, by a session on a path nothing preloaded (the
AUTH libraries, when a rule switched AUTH on since): after `guard()`, such
an import fails once the installed code is not the code the server
started from: the package's folder is another one, or the module's file
is newer than the server.  The session gets a 421 and its client tries
again later.  Imports of unchanged code (a module nobody preloaded, on a
quiet day) go on as before.
"""

import _signal  # the C module behind `signal`, already loaded; `signal` costs enum
import os
import posix
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# what a session that needed new code gets instead (the client retries)
REFUSED = b"421 upgraded, waiting for a restart: try again later (#4.3.0)\r\n"
RESTART = ("qmail-esmtpd was installed anew under this server: sessions run the code "
           "it started with; restart it (svc -t, systemctl restart) to run the new")


class Upgraded(ImportError):
    """A module of the new installation, which the old code must not load."""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Installation:
    """The folder the running package came from, as it was at start."""

    def __init__(self, package_dir: str) -> None:
        self.package_dir = package_dir
        self.root = os.path.dirname(package_dir) + os.sep  # the package and its dependencies
        self.identity = _identity(package_dir)
        self.started_ns = time.time_ns()

    def replaced(self) -> bool:
        """Whether the package's folder is another one than at start (one stat)."""
        return self.identity_now() != self.identity

    def identity_now(self) -> tuple[int, int] | None:
        """The package folder's (device, inode) now."""
        return _identity(self.package_dir)

    def is_new(self, path: str) -> bool:
        """Whether `path`, a file of the installation, is not the code we started with."""
        if self.replaced():
            return True
        try:
            return posix.stat(path).st_mtime_ns > self.started_ns
        except OSError:
            return True


class _Checked:
    """A loader that says so when the installation was replaced while it loaded
    (install's rename between the finder's look and the read)."""

    def __init__(self, loader: object, installation: Installation) -> None:
        self._loader = loader
        self._installation = installation

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: "ModuleType") -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        if self._installation.replaced():
            name = module.__name__
            raise Upgraded(f"{name}: installed anew while it loaded", name=name)


class Guard:
    """First on sys.meta_path: finds a module with the finders behind it, and
    refuses one from the installation's folder that is not the code we started with."""

    def __init__(self, installation: Installation) -> None:
        self.installation = installation

    def find_spec(self, name: str, path: "Sequence[str] | None",
                  target: "ModuleType | None" = None) -> "ModuleSpec | None":
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        origin = spec.origin or ""
        if not origin.startswith(self.installation.root):
            return spec  # the standard library: no install replaces it under us
        if self.installation.is_new(origin):
            raise Upgraded(f"{name}: {RESTART}", name=name)
        if spec.loader is not None:
            spec.loader = _Checked(spec.loader, self.installation)  # type: ignore[assignment]
        return spec


# The installation this process starts from, taken before the rest of the
# server loads (forkserver imports this module first): an install during the
# start-up is then an upgrade due at the first connection, not a newer tree
# that the modules imported after it would come from.
STARTED_FROM = Installation(os.path.dirname(os.path.abspath(__file__)))


def guard() -> Installation:
    """From now on, refuse modules of an installation newer than STARTED_FROM."""
    sys.meta_path.insert(0, Guard(STARTED_FROM))
    return STARTED_FROM


# -- the new code takes over the running server ---------------------------------
#
# When install has renamed a new tree into place, the server execs its own
# launcher again: same pid, so the sessions in progress stay its children,
# and the listening sockets and those sessions' channels pass through the
# exec, named in STATE.  Before that, the new code starts once on the side
# (STATE=trial: it loads what the server would, as the sessions' user, and
# exits), so a broken install leaves the old code serving instead of no
# server at all; the old code serves while the trial runs.

STATE = "QMAIL_ESMTPD_SERVER_STATE"
TRIAL = "trial"
TRIAL_SECONDS = 60
# held from just before the exec until the new code has its handlers: a
# SIGTERM or SIGHUP in between waits for it instead of killing the server
HELD_SIGNALS = frozenset({_signal.SIGHUP, _signal.SIGTERM, _signal.SIGCHLD})


def take_state() -> str | None:
    """What the server before this exec left (None: a fresh start), taken out
    of the environment the sessions inherit."""
    value = os.environ.pop(STATE, None)
    posix.environ.pop(STATE.encode(), None)
    return value


def own_command() -> list[str]:
    """The command that started this server, as installed now: the launcher
    itself (its first line names the interpreter the new install chose),
    else the interpreter and its arguments as given."""
    script = sys.argv[0]
    if os.access(script, os.X_OK) and not script.endswith(".py"):
        return [os.path.abspath(script), *sys.argv[1:]]
    return [sys.executable, *sys.orig_argv[1:]]


class Trial:
    """The new code started once on the side (STATE=trial), while the old
    code goes on serving: a slow or hung start holds up no connection.  The
    server reads what it says, and reaps it with its other children."""

    def __init__(self, identity: tuple[int, int] | None, env: dict[str, str]) -> None:
        import subprocess

        self.identity = identity  # the installed tree this tries
        self.env = env
        self.deadline = time.monotonic() + TRIAL_SECONDS
        self.proc = subprocess.Popen(own_command(), env={**env, STATE: TRIAL},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.said = b""  # the end of its stderr
        self.fd: int | None = self.proc.stderr.fileno()  # type: ignore[union-attr]
        os.set_blocking(self.fd, False)
        self.status: int | None = None  # its wait status, once reaped
        self.killed = False

    def read(self) -> None:
        """What it wrote since (its stderr became readable), up to 1 MB a call
        (more than a pipe holds; one that writes on and on holds up no loop);
        the pipe closed at EOF."""
        for _ in range(16):
            if self.fd is None:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.forget()
                return
            self.said = (self.said + chunk)[-4096:]

    def exited(self, wstat: int) -> None:
        """Reaped: what it wrote before it exited is all in the pipe by now."""
        self.status = wstat
        self.proc.returncode = os.waitstatus_to_exitcode(wstat)  # Popen waits no more
        self.read()

    def seconds_left(self) -> float:
        """Until it is killed for taking too long (then: until it is reaped)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.kill()
        return max(left, 0.0) if not self.killed else 1.0

    def kill(self) -> None:
        """SIGKILL, once, unless it is already reaped."""
        if self.killed or self.status is not None:
            return
        self.killed = True
        try:
            os.kill(self.pid, _signal.SIGKILL)
        except OSError:
            pass

    def stop(self) -> None:
        """Killed (the server is stopping), not waited for: one stuck in the
        kernel (a hung NFS mount) must not hold the server's exit; the
        server's last reap or, after its exit, init collects it."""
        self.kill()
        self.forget()

    def forget(self) -> None:
        """Its pipe closed, unread (also in a child the server forks: not its to keep)."""
        if self.fd is not None:
            self.proc.stderr.close()  # type: ignore[union-attr]
            self.fd = None

    def why_not(self) -> str | None:
        """Why the new code did not start (None: it did), once reaped."""
        if self.killed:
            return f"it did not start within {TRIAL_SECONDS} s"
        code = os.waitstatus_to_exitcode(self.status or 0)
        if code == 0:
            return None
        said = self.said.decode("utf-8", "replace").strip().splitlines()
        return f"exit {code}: {said[-1] if said else 'nothing said'}"


def become_new_code(state: str, env: dict[str, str], stopping: "Callable[[], bool]") -> str:
    """Exec the new code with `state` (the descriptors it names must be
    inheritable); returns only when that could not be done, with why."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        if stopping():  # a SIGTERM came first: this process ends the old way
            return "stopping"
        command = own_command()
        os.execve(command[0], command, {**env, STATE: state})
    except (OSError, ValueError) as e:
        return str(e)
    finally:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HELD_SIGNALS)
