"""Upgrade safety: `make install` over a running qmail-esmtpd-server never
gives a session old and new code mixed.

The server imports what sessions need before it serves (preload.py), and a
session runs that code, the one the server started with, from its first
byte to its last.  What could mix is a module imported later, by a session
on a path nothing preloaded or by the server at a SIGHUP (the AUTH
libraries), read from files an install has just replaced.  After
`guard()`, such an import fails once the installed code is not the code
the server started from: the package's folder is another one (install
renames a new tree into place), or the module's file is newer than the
server.  The session gets a 421 and its client tries again later; the
server says once in its log that it wants a restart (`svc -t`), which
starts the new code as a whole.  Imports of unchanged code (a module
nobody preloaded, on a quiet day) go on as before.
"""

import os
import posix
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
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
        return _identity(self.package_dir) != self.identity

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


def guard(package_dir: str) -> Installation:
    """From now on, refuse modules of a newer installation of `package_dir`'s folder."""
    installation = Installation(package_dir)
    sys.meta_path.insert(0, Guard(installation))
    return installation
