"""Write the `qmail-esmtpd` launcher: real interpreter, -IS, explicit sys.path.

tcpserver starts the program once per connection, so the launcher avoids
what pip's console-script wrapper costs: a shim or `/usr/bin/env` in the
shebang, `site` processing, and the `re` import.

usage: mklauncher.py [--default NAME=VALUE]... OUTPUT INTERPRETER MODULE:FUNCTION PATH...

Each --default sets an environment variable the program reads unless it is
already set: `make install` uses it so that an install under PREFIX finds
PREFIX/control and PREFIX/bin/qmail-queue, as qmail's conf-qmail does.
"""

import os
import sys


def launcher_text(interpreter: str, entry: str, paths: list[str],
                  defaults: dict[str, str] | None = None) -> str:
    """The launcher's source; `defaults` go into the environment the program sees."""
    module, function = entry.split(":")
    lines = [
        f"#!{os.path.realpath(interpreter)} -IS",
        "import sys",
        f"sys.path[:0] = {paths!r}",
    ]
    if defaults:
        # posix.environ is what the server reads and hands to qmail-queue (and
        # what `os.environ` is made from), so a default set here is seen by both.
        pairs = tuple((k.encode(), v.encode()) for k, v in defaults.items())
        lines += ["import posix", f"for k, v in {pairs!r}:", "    posix.environ.setdefault(k, v)"]
    lines += [f"from {module} import {function}", f"sys.exit({function}())", ""]
    return "\n".join(lines)


def write_launcher(output: str, text: str) -> None:
    """Replace `output` atomically, mode 0755 whatever the umask."""
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)


def main() -> int:
    args = sys.argv[1:]
    defaults = {}
    while args[:1] == ["--default"]:
        name, _, value = args[1].partition("=")
        defaults[name] = value
        args = args[2:]
    output, interpreter, entry, *paths = args
    write_launcher(output, launcher_text(interpreter, entry, paths, defaults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
