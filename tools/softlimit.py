"""Measure the smallest `softlimit -m` each kind of session works under.

    .venv/bin/python tools/softlimit.py [--prefix PREFIX] [--stack BYTES] [KIND...]

As the README's table was made: the installed qmail-esmtpd (from PREFIX, or
installed into a temp folder from `make wheels`) runs as nobody under
`softlimit -m N -s BYTES` through tcpserver, and N is bisected to 100 kB for
each kind of session (tests/harness/softlimit.py SESSION_KINDS).  Run as root (setuidgid
and the throwaway PostgreSQL cluster need it).  Prints one line per kind.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.install import installed_prefix  # noqa: E402
from tests.harness.postgres import Cluster  # noqa: E402
from tests.harness.softlimit import SESSION_KINDS, SOFTLIMIT_STACK, LimitedService  # noqa: E402

LOW, HIGH, STEP = 1_000_000, 400_000_000, 100_000


def smallest(service: LimitedService, kind: str, stack: int) -> tuple[int, str]:
    """The smallest -m that works, and what failed just below it."""
    if (failure := service.session(kind, HIGH, stack)) != "ok":
        raise SystemExit(f"{kind}: fails even under -m {HIGH}: {failure}")
    low, high, below = LOW, HIGH, ""
    while high - low > STEP:
        middle = (low + high) // 2
        result = service.session(kind, middle, stack)
        if result == "ok":
            high = middle
        else:
            low, below = middle, result
    return high, below


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", type=Path, help="an installed PREFIX (default: install one)")
    p.add_argument("--stack", type=int, default=SOFTLIMIT_STACK, help="softlimit -s")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="also in the sessions' environment (e.g. MALLOC_ARENA_MAX=1)")
    p.add_argument("kinds", nargs="*", default=list(SESSION_KINDS))
    args = p.parse_args()
    prefix = args.prefix or installed_prefix()
    cluster = Cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-softlimit-") as tmp:
            env = dict(item.split("=", 1) for item in args.env)
            service = LimitedService(Path(tmp), prefix, cluster, env=env)
            for kind in args.kinds:
                minimum, below = smallest(service, kind, args.stack)
                print(f"{kind:26} -m {minimum:>11,}  (below: {below[:160]})", flush=True)
            service.db.close()
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
