"""An installed copy of this checkout: `make wheels` and `make install` into
temp folders, once per process (test_install, test_softlimit, tools/softlimit.py)."""

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .paths import ROOT
from .processes import StartError
from .system_users import host_has, world_readable_dir

_wheels: dict[str, Path] = {}


def wheel_folder() -> Path:
    """`make wheels` once per process (this needs the network), into a temp folder."""
    if "dir" not in _wheels:
        folder = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-wheels-"))
        atexit.register(shutil.rmtree, folder, True)
        run_make("wheels", f"WHEELS={folder}")
        _wheels["dir"] = folder
    return _wheels["dir"]


def run_make(*args: str, cwd: Path = ROOT, umask: int | None = None,
             env: dict | None = None) -> str:
    """`make ARGS` with a bounded wait; its output, or StartError with the tail of it."""
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    try:
        out = subprocess.run(["make", "-s", *args], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=600, preexec_fn=set_umask,
                             env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise StartError(f"make {' '.join(args)}: no end after 600 s") from None
    text = out.stdout.decode(errors="replace")
    if out.returncode != 0:
        raise StartError(f"make {' '.join(args)} exited {out.returncode}: {text[-1500:]}")
    return text


_installs: dict[str, Path] = {}


def installed_prefix() -> Path:
    """`make install` from the wheel folder into a temp PREFIX, once per process."""
    if "prefix" not in _installs:
        prefix = world_readable_dir("qmail-esmtpd-prefix-")
        atexit.register(shutil.rmtree, prefix, True)
        run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}")
        _installs["prefix"] = prefix
    return _installs["prefix"]



def as_printed(text: str, rules: Path) -> str:
    """What an admin changes in an installed run script or unit: the rules file,
    and the user where this host has no qmaild."""
    text = text.replace("/etc/tcp.smtp.cdb", str(rules))
    return text if host_has("qmaild") else text.replace("qmaild", "nobody")
