"""What a session imports, from `-X importtime`."""

import subprocess
from dataclasses import dataclass

from . import BenchError
from .pipes import AUTH_MODULES, CLIENT_TIMEOUT
from .session import SESSION_INPUT, check_session_output
from .setup import Bench

FORBIDDEN = ("psycopg2", "passlib", "ssl", "email", "subprocess", "re", "typing", "logging")


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, nesting depth) from `-X importtime` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), int(self_us), int(cumulative_us), depth))
    return rows


@dataclass
class ImportReport:
    """What a plain session imported, from one `-X importtime` run."""

    forbidden: list[str]
    package_modules: int
    package_total_ms: float  # our top-level imports incl. the stdlib they pull in
    package_self_ms: float  # our own modules only
    extra_stdlib: list[tuple[str, float]]  # (module, self ms) not in a bare start
    self_ms: dict[str, float]  # every module imported: self ms


def measure_imports(bench: Bench, authdb: bool = False, tls: bool = False) -> ImportReport:
    """Run the launcher's code under -X importtime (-I would ignore the env var).

    `authdb`: $AUTHDB is set, so AUTH is offered, and must not cost imports;
    `tls`: control/servercert.pem is there, STARTTLS offered and never used,
    which must not import `ssl`.
    """
    env = bench.env(authdb, tls)
    code = (f"import sys; sys.path[:0] = {bench.launcher.paths!r}; "
            "from qmail_esmtpd.cli import main; sys.exit(main())")
    proc = subprocess.run(bench.python("-X", "importtime", "-c", code),
                          input=SESSION_INPUT, capture_output=True, env=env, check=False,
                          timeout=CLIENT_TIMEOUT)
    check_session_output(proc.stdout, proc.returncode, "qmail-esmtpd under -X importtime",
                         auth_offered=authdb and not tls, starttls=tls)
    rows = parse_importtime(proc.stderr.decode("utf-8", "replace"))
    bare = subprocess.run(bench.python("-X", "importtime", "-c", "pass"),
                          capture_output=True, env=env, check=False, timeout=CLIENT_TIMEOUT)
    bare_names = {row[0] for row in parse_importtime(bare.stderr.decode("utf-8", "replace"))}

    def is_forbidden(name: str) -> bool:
        return any(name == m or name.startswith(m + ".") for m in FORBIDDEN)

    ours = [r for r in rows if r[0] == "qmail_esmtpd" or r[0].startswith("qmail_esmtpd.")]
    # Top-level entries of our package carry everything they pulled in.
    package_total = sum(r[2] for r in ours if r[3] == 0)
    extra = [r for r in rows if r[0] not in bare_names and r not in ours]
    return ImportReport(
        forbidden=sorted({r[0] for r in rows if is_forbidden(r[0])}),
        package_modules=len(ours),
        package_total_ms=package_total / 1000.0,
        package_self_ms=sum(r[1] for r in ours) / 1000.0,
        extra_stdlib=[(r[0], r[1] / 1000.0) for r in extra],
        self_ms={r[0]: r[1] / 1000.0 for r in rows},
    )


@dataclass
class ImportNode:
    """One `-X importtime` row with the imports it triggered."""

    name: str
    cumulative_us: int
    children: list["ImportNode"]


def import_tree(rows: list[tuple[str, int, int, int]]) -> list[ImportNode]:
    """The top-level imports as trees (importtime lists children before parents)."""
    pending: dict[int, list[ImportNode]] = {}
    for name, _, cumulative, depth in rows:
        node = ImportNode(name, cumulative, pending.pop(depth + 1, []))
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def foreign_imports(node: ImportNode) -> list[ImportNode]:
    """The first imports below `node` from outside its top-level package."""
    package = node.name.split(".")[0]
    found = []
    for child in node.children:
        if child.name.split(".")[0] == package:
            found += foreign_imports(child)
        else:
            found.append(child)
    return found


def heavy_auth_imports(bench: Bench) -> list[str]:
    """What the AUTH path imports beyond a plain session, heaviest first (wall ms).

    One `-X importtime` run of the imports the AUTH split makes (an argon2id
    row: no passlib); each top-level import is shown with
    the heaviest modules from other packages that it pulls in.
    """
    marker = "-- plain session above --"
    code = (f"import sys; sys.path[:0] = {bench.launcher.paths!r}; import qmail_esmtpd.cli; "
            f"sys.stderr.write({marker!r} + '\\n'); {AUTH_MODULES}; "
            "db._import_psycopg2(); import psycopg2.extensions, _argon2_cffi_bindings")
    proc = subprocess.run(bench.python("-X", "importtime", "-c", code),
                          capture_output=True, text=True, check=False, timeout=CLIENT_TIMEOUT)
    if proc.returncode != 0 or marker not in proc.stderr:
        raise BenchError(f"AUTH imports failed: {proc.stderr[-600:]}")
    roots = import_tree(parse_importtime(proc.stderr.partition(marker)[2]))
    found = []
    for root in sorted(roots, key=lambda n: n.cumulative_us, reverse=True):
        if root.cumulative_us < 1000:
            continue
        inner = sorted(foreign_imports(root), key=lambda n: n.cumulative_us, reverse=True)
        inner_text = ", ".join(f"{n.name} {n.cumulative_us / 1000.0:.1f}"
                               for n in inner[:3] if n.cumulative_us >= 1000)
        found.append(f"{root.name} {root.cumulative_us / 1000.0:.1f}"
                     + (f" (of which {inner_text})" if inner_text else ""))
    return found
