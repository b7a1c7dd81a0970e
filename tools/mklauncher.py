"""Write the `qmail-esmtpd` launcher: real interpreter, -IS, explicit sys.path.

tcpserver starts the program once per connection, so the launcher avoids
what pip's console-script wrapper costs: a shim or `/usr/bin/env` in the
shebang, `site` processing, and the `re` import.

usage: mklauncher.py OUTPUT INTERPRETER MODULE:FUNCTION PATH...
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
    output, interpreter, entry, *paths = sys.argv[1:]
    write_launcher(output, launcher_text(interpreter, entry, paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
