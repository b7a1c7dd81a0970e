"""Write the `qmail-esmtpd` launcher: real interpreter, -IS, explicit sys.path.

tcpserver starts the program once per connection, so the launcher avoids
what pip's console-script wrapper costs: a shim or `/usr/bin/env` in the
shebang, `site` processing, and the `re` import.

usage: mklauncher.py OUTPUT INTERPRETER MODULE:FUNCTION PATH...
"""

import os
import sys


def main() -> int:
    output, interpreter, entry, *paths = sys.argv[1:]
    module, function = entry.split(":")
    text = (
        f"#!{os.path.realpath(interpreter)} -IS\n"
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())\n"
    )
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
