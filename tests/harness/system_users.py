"""Who runs what when the tests run as root: the services refuse root, so
their sessions run as nobody (or qmaild), who must be let into the tests' folders."""

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"


def host_has(user: str) -> bool:
    """Whether this host has the system user (qmaild on a qmail host)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def service_ids() -> list[str]:
    """-u/-g for qmail-esmtpd-server: nobody's when the tests run as root
    (it refuses to run sessions as root), none otherwise."""
    if os.geteuid() != 0:
        return []
    entry = pwd.getpwnam("nobody")
    return ["-u", str(entry.pw_uid), "-g", str(entry.pw_gid)]


def let_service_user_in(path: Path) -> None:
    """As root: let the sessions' user (nobody) reach `path` (o+x up the tree)."""
    if os.geteuid() != 0:
        return
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def world_readable_dir(prefix: str) -> Path:
    """A temp folder the service user (nobody) can enter: mkdtemp makes 0700 ones."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def pop3_service_user() -> str:
    """Whose uid qmail-esmtpd-checkpassword, started as root, connects to the
    database with: qmaild, or nobody where the system has no qmaild (asked
    each time: a test elsewhere may add or remove qmaild)."""
    return "qmaild" if host_has("qmaild") else "nobody"


def pop3_service_env() -> dict:
    """What the POP3 program's environment needs for pop3_service_user()."""
    user = pop3_service_user()
    return {} if user == "qmaild" else {"POPDBUSER": user}


def service_python() -> str:
    """An interpreter the service user may run: ours, unless we are root and it
    lives in root's home; then the system's, if it is the same version."""
    if os.geteuid() != 0:
        return sys.executable
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip() \
        if os.path.exists(SYSTEM_PYTHON) else ""
    if version != str(sys.version_info[:2]):
        pytest.skip(f"no {SYSTEM_PYTHON} of this version for the service user")
    return SYSTEM_PYTHON
