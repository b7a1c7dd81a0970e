"""`make install` and `make wheels`: install beside qmail so that qmaild can run it.

    install.py install --prefix PREFIX [--destdir DIR] [--python PY] [--wheels DIR]
                       [--user NAME,...]
    install.py uninstall --prefix PREFIX [--destdir DIR]
    install.py wheels DIR [--python PY]

install: the package and its dependencies go to PREFIX/lib/qmail-esmtpd, the
launchers to PREFIX/bin (qmail-esmtpd, qmail-esmtpd-user,
qmail-esmtpd-checkpassword), never over qmail-smtpd.  What went wrong on
real mail hosts decides how:

- The interpreter is one the service user can run: PY (make's PYTHON=), else
  /usr/bin/python3 when it is new enough, else the python3 on PATH, always by
  its real path (a pyenv shim or a venv under root's 0700 home is not).
- Modes are set, not inherited: directories 0755, files 0644, programs 0755,
  whatever the umask (qmail's own install does the same).
- The checkout is left as it was: the package is built from a copy in a
  temporary folder, so no build/ or *.egg-info appears in it.
- --wheels DIR installs with no network at all (pip --no-index) from a folder
  `make wheels` filled on a connected machine.
- PREFIX is the qmail home the programs know, as qmail compiles in its
  conf-qmail: written into the installed config.py (QMAIL_HOME), so
  control/, users/cdb and bin/qmail-queue are found under it ($QMAIL_HOME,
  $QMAIL_CONTROL and $QMAILQUEUE still override it).  So do the run
  scripts: copies of service/ with QMAIL=PREFIX, in
  PREFIX/lib/qmail-esmtpd/service, to copy into a supervise folder; and
  the systemd units of systemd/, PREFIX in their paths, in
  PREFIX/lib/qmail-esmtpd/systemd, to copy into /etc/systemd/system.
  The manual pages of man/ go to PREFIX/man/man5 and man8.
  Nothing is written outside PREFIX.
- Before saying "installed", it runs the launcher once as the service user
  (the first of --user's list that exists, make's TRY_AS=; default qmaild,
  else nobody), and the AUTH imports (psycopg2, argon2) too, then starts
  qmail-esmtpd-server with its sessions as that user and talks to it once,
  and fails with what to do if that does not work.  Not with --destdir (the
  files are not where they will run yet).

uninstall: takes away what install put in place (the launchers, the library
with its run scripts and systemd units, the manual pages, and the folders
left empty by that); the admin's data stays: every control file, the
authfailkey install created among them.

wheels: every dependency as a wheel, and the build backend, in DIR: copy DIR
to the mail host and `make install WHEELS=DIR`.  Run it with the same Python
version and architecture as the mail host uses.
"""

import argparse
import configparser
import os
import pwd
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from mklauncher import launcher_text, write_launcher

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "qmail_esmtpd")
LAUNCHERS = (("qmail-esmtpd", "qmail_esmtpd.cli:run"),
             ("qmail-esmtpd-user", "qmail_esmtpd.admin:main"),
             ("qmail-esmtpd-checkpassword", "qmail_esmtpd.pop3.checkpassword:main"),
             ("qmail-esmtpd-server", "qmail_esmtpd.forkserver:main"))
SERVICE_USERS = ("qmaild", "nobody")
# daemontools scripts, each with one QMAIL=/var/qmail line that names qmail's home
SERVICE_SCRIPTS = ("run", "run-submission", "run-smtps", "run-server", "log/run")
QMAIL_LINE = "QMAIL=/var/qmail\n"
# systemd units, examples to copy: no variables there, so every /var/qmail in
# them becomes PREFIX
SYSTEMD_UNITS = ("qmail-esmtpd.socket", "qmail-esmtpd.service")
MANUAL = ROOT / "man"  # roff pages, each named NAME.SECTION
QMAIL_HOME_DEFAULT = "/var/qmail"
SERVER_START_SECONDS = 60  # the trial server: loading its code, then a greeting
# What the first AUTH command loads, and one hash made and checked the way the
# server does it: proves the compiled parts (libpq, libargon2, bcrypt) load for
# the service user.
AUTH_CHECK = ("import psycopg2, psycopg2.extensions, bcrypt\n"
              "from qmail_esmtpd.auth.passwords import check, new_hash\n"
              "assert check(b'install check', new_hash(b'install check'))[0]\n")


class InstallError(Exception):
    """What went wrong, and what to do: printed as one message, exit 1."""


def main() -> int:
    args = parser().parse_args()
    os.umask(0o022)  # pip and compileall create files too; the walk below checks anyway
    try:
        if args.command == "wheels":
            collect_wheels(Path(args.dir), interpreter(args.python))
        elif args.command == "uninstall":
            uninstall(os.path.abspath(args.prefix), args.destdir.rstrip("/"))
        else:
            install(args)
    except InstallError as e:
        print(f"install: {e}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install")
    i.add_argument("--prefix", required=True)
    i.add_argument("--destdir", default="")
    i.add_argument("--python", default="")
    i.add_argument("--wheels", default="")
    i.add_argument("--user", default=",".join(SERVICE_USERS), metavar="NAME,...",
                   help="try the install as the first of these users that exists "
                        "(default: qmaild,nobody)")
    u = sub.add_parser("uninstall")
    u.add_argument("--prefix", required=True)
    u.add_argument("--destdir", default="")
    w = sub.add_parser("wheels")
    w.add_argument("dir")
    w.add_argument("--python", default="")
    return p


def required_version() -> tuple[int, int]:
    """setup.cfg's python_requires (>=3.11): the one place that says it."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    spec = cfg["options"]["python_requires"].strip().removeprefix(">=").strip()
    major, minor = spec.split(".")[:2]
    return int(major), int(minor)


def version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def interpreter(chosen: str) -> str:
    """The real path of the interpreter the launchers will name."""
    need = required_version()
    wanted = "{}.{}".format(*need)
    if chosen:
        found = shutil.which(chosen) or chosen
        version = version_of(found)
        if version is None:
            raise InstallError(f"PYTHON={chosen}: cannot run it")
        if version < need:
            raise InstallError(f"PYTHON={chosen} is Python {version[0]}.{version[1]}; "
                               f"{wanted} or later is needed")
        return os.path.realpath(found)
    version = version_of(SYSTEM_PYTHON)
    if version is not None and version >= need:
        return os.path.realpath(SYSTEM_PYTHON)
    if version_of(sys.executable) and sys.version_info[:2] >= need:
        return os.path.realpath(sys.executable)
    raise InstallError(f"no Python {wanted} or later at {SYSTEM_PYTHON} or as python3; "
                       "name one with PYTHON=/path/to/python3")


def source_copy(tmp: Path) -> Path:
    """The files pip builds from, copied so that the build writes nowhere in the checkout."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    return src


def pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=1800)
    except subprocess.TimeoutExpired:
        raise InstallError("pip took more than 30 minutes; is the network (or --wheels) there?")\
            from None
    if out.returncode != 0:
        tail = "\n".join(out.stdout.strip().splitlines()[-15:])
        hint = ""
        if "No module named pip" in out.stdout:
            hint = (f"\n{python} has no pip: install python3-pip (Debian) or name another "
                    "interpreter with PYTHON=")
        raise InstallError(f"{' '.join(cmd[:3])} {args[0]} failed:\n{tail}{hint}")


def collect_wheels(folder: Path, python: str) -> None:
    """Dependencies and the build backend as wheels, for an install with no network."""
    folder.mkdir(parents=True, exist_ok=True)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-wheels-") as tmp:
        pip(python, "wheel", "--quiet", "--wheel-dir", str(folder), str(source_copy(Path(tmp))),
            *backend)
    for own in folder.glob("qmail_esmtpd-*.whl"):  # built from the checkout at install time
        own.unlink()
    fix_modes(folder)
    count = len(list(folder.glob("*.whl")))
    major, minor = version_of(python) or (0, 0)
    print(f"{count} wheels in {folder} for Python {major}.{minor} ({python}); on the mail host: "
          f"make install WHEELS={folder}")


def fix_modes(top: Path) -> None:
    """0755 for directories and programs, 0644 for the rest, as qmail installs."""
    os.chmod(top, 0o755)
    for base, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(base, name), 0o755)
        for name in files:
            path = os.path.join(base, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)


def service_scripts(folder: Path, prefix: str) -> None:
    """service/'s run scripts in `folder`, their QMAIL= line naming `prefix`."""
    for name in SERVICE_SCRIPTS:
        text = (ROOT / "service" / name).read_text()
        if QMAIL_LINE in text:
            text = text.replace(QMAIL_LINE, f"QMAIL={shlex.quote(prefix)}\n", 1)
        elif "/var/qmail" in text:
            raise InstallError(f"service/{name} names /var/qmail outside a {QMAIL_LINE.strip()} "
                               "line: cannot make it follow PREFIX")
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o755)


def systemd_units(folder: Path, prefix: str) -> None:
    """systemd/'s unit files in `folder`, /var/qmail in them replaced by `prefix`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SYSTEMD_UNITS:
        text = (ROOT / "systemd" / name).read_text()
        (folder / name).write_text(text.replace(QMAIL_HOME_DEFAULT, prefix))


def make_dirs(path: Path) -> None:
    """Create missing directories 0755 (existing ones, qmail's, are left alone)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        os.chmod(directory, 0o755)


def install(args: argparse.Namespace) -> None:
    python = interpreter(args.python)
    prefix = os.path.abspath(args.prefix)
    dest = args.destdir.rstrip("/")
    libdir = f"{prefix}/lib/qmail-esmtpd"
    bindir = f"{prefix}/bin"
    target = Path(dest + libdir)
    stage = target.with_name(target.name + ".new")
    make_dirs(target.parent)
    make_dirs(Path(dest + bindir))
    shutil.rmtree(stage, ignore_errors=True)
    offline = ["--no-index", "--find-links", os.path.abspath(args.wheels)] if args.wheels else []
    with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-install-") as tmp:
        pip(python, "install", "--quiet", "--no-compile", "--no-warn-script-location",
            *offline, "--target", str(stage), str(source_copy(Path(tmp))))
    shutil.rmtree(stage / "bin", ignore_errors=True)  # pip's console scripts: ours are below
    compile_in_home(stage / "qmail_esmtpd" / "config.py", prefix)
    compiled = subprocess.run([python, "-m", "compileall", "-q", "-s", str(stage), "-p", libdir,
                               str(stage)], capture_output=True, text=True, timeout=600)
    if compiled.returncode != 0:
        raise InstallError(f"compileall failed: {compiled.stdout}{compiled.stderr}")
    service_scripts(stage / "service", prefix)
    systemd_units(stage / "systemd", prefix)
    fix_modes(stage)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    stage.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    for name, entry in LAUNCHERS:
        write_launcher(f"{dest}{bindir}/{name}", launcher_text(python, entry, [libdir]))
    install_manual(Path(dest + prefix))
    where = f"{dest}{bindir}"
    if dest:
        print(f"installed {where}/qmail-esmtpd, qmail-esmtpd-user and "
              f"qmail-esmtpd-checkpassword for {python} "
              f"(qmail-smtpd untouched; not tried: the files run from {bindir})")
        return
    print(failure_key(Path(prefix) / "control", service_user(args.user)))
    user = check(bindir, libdir, python, args.user)
    print(f"installed {where}/qmail-esmtpd, qmail-esmtpd-user, qmail-esmtpd-checkpassword "
          f"and qmail-esmtpd-server for {python} (qmail-smtpd untouched; tried as {user}: "
          f"it starts, AUTH's libraries load, and the server serves)")
    print(f"run scripts in {libdir}/service, systemd units in {libdir}/systemd, "
          f"manual pages in {prefix}/man (MANPATH)")


def manual_pages() -> list[Path]:
    """man/'s pages: qmail-esmtpd.8 goes to man8, qmail-esmtpd-control.5 to man5."""
    return sorted(p for p in MANUAL.iterdir() if p.suffix[1:].isdigit())


def install_manual(home: Path) -> None:
    """Each page in HOME/man/manN, 0644, as qmail installs its own under its home."""
    for page in manual_pages():
        folder = home / "man" / f"man{page.suffix[1:]}"
        make_dirs(folder)
        shutil.copyfile(page, folder / page.name)
        os.chmod(folder / page.name, 0o644)


def uninstall(prefix: str, dest: str) -> None:
    """What install put under PREFIX, taken away; the control files stay."""
    home = Path(dest + prefix)
    library = home / "lib" / "qmail-esmtpd"
    for path in (library, library.with_name(library.name + ".new"),
                 library.with_name(library.name + ".old")):
        shutil.rmtree(path, ignore_errors=True)
    files = [home / "bin" / name for name, _ in LAUNCHERS]
    files += [home / "man" / f"man{page.suffix[1:]}" / page.name for page in manual_pages()]
    for path in files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    # folders install may have made, if nothing else is in them (never control/)
    folders = {path.parent for path in files} | {home / "man", home / "lib"}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (qmail's own files), or not there
            pass
    print(f"uninstalled qmail-esmtpd from {home}; the control files stay in {home}/control")


def compile_in_home(config: Path, prefix: str) -> None:
    """PREFIX as the qmail home, on config.py's QMAIL_HOME line (qmail's conf-qmail)."""
    text = config.read_text()
    line = next((x for x in text.splitlines(keepends=True) if x.startswith("QMAIL_HOME = ")), None)
    if line is None:
        raise InstallError(f"{config} has no QMAIL_HOME line to write {prefix} on")
    config.write_text(text.replace(line, f"QMAIL_HOME = {os.fsencode(prefix)!r}\n", 1))


def failure_key(control: Path, user: pwd.struct_passwd | None) -> str:
    """control/authfailkey, the secret that keys the failed-login throttle
    (auth/throttle.py): 32 random bytes in hex, 0400 and owned by the service
    user, as the TLS patch's servercert.pem is: the sessions read it, and no
    other user of their group (qmaild's is nofiles, shared with qmaill,
    qmailp and alias, which qmail's conf-groups says may read no file).
    Root reads it anyway (the POP3 program under qmail-popup).  Never
    replaced; a key an earlier install left readable by the service user's
    group (0640, root and that group) is given to the user alone instead."""
    path = control / "authfailkey"
    if path.exists():
        if user is None:
            return f"{path}: kept as it is"
        st = path.stat()
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (0, user.pw_gid, 0o640):
            return f"{path}: kept as it is"
        os.chown(path, user.pw_uid, 0)
        os.chmod(path, 0o400)
        return (f"{path}: kept, now 0400 and {user.pw_name}'s alone (it was readable by "
                f"every user of {user.pw_name}'s group)")
    make_dirs(control)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    if user is not None:
        os.chown(path, user.pw_uid, 0)
    os.chmod(path, 0o400)
    owner = user.pw_name if user else "this user"
    return f"{path}: created (0400, readable by {owner} alone)"


def service_user(names: str) -> pwd.struct_passwd | None:
    """The user sessions run as: the first of the comma-separated `names` this
    host has; None when we cannot switch (not root): then ourselves."""
    if os.geteuid() != 0:
        return None
    candidates = [name for name in names.split(",") if name]
    for candidate in candidates:
        try:
            return pwd.getpwnam(candidate)
        except KeyError:
            continue
    raise InstallError(f"no user {' or '.join(candidates) or '(none given)'} "
                       "to try the install as; name one with TRY_AS=")


def check(bindir: str, libdir: str, python: str, usernames: str) -> str:
    """Run the installed launcher as the service user: a session and the AUTH imports."""
    user = service_user(usernames)
    who = user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    advice = (f"{who} must be able to run {python} (every folder above it must be "
              f"searchable by {who}: not under a 0700 home such as pyenv's) and read "
              f"{libdir}; choose another interpreter with PYTHON=/usr/bin/python3.x, "
              f"or another user with TRY_AS=.")
    with tempfile.TemporaryDirectory(prefix="qmail-esmtpd-check-") as tmp:
        control = Path(tmp)
        os.chmod(control, 0o755)
        (control / "me").write_text("install-check\n")
        os.chmod(control / "me", 0o644)
        env = {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(control)}
        runs = (([f"{bindir}/qmail-esmtpd"], b"QUIT\r\n", b"220 install-check"),
                ([python, "-IS", "-c", f"import sys; sys.path[:0] = [{libdir!r}]\n{AUTH_CHECK}"],
                 b"", b""))
        for argv, data, expect in runs:
            try:
                out = subprocess.run(argv, input=data, capture_output=True, env=env, cwd="/",
                                     timeout=120, **ids)  # type: ignore[arg-type]
            except OSError as e:
                out = subprocess.CompletedProcess(argv, 126, b"", str(e).encode())
            if out.returncode == 0 and out.stdout.startswith(expect):
                continue
            said = (out.stderr or out.stdout).decode(errors="replace").strip().splitlines()[-3:]
            raise InstallError(
                f"the installed {argv[0] if data else 'AUTH code'} does not work as user {who}:\n"
                f"    {' / '.join(said) or f'exit {out.returncode}'}\n" + advice)
        ids_options = ["-u", str(user.pw_uid), "-g", str(user.pw_gid)] if user else []
        said = try_server(f"{bindir}/qmail-esmtpd-server", ids_options, env)
        if said is not None:
            raise InstallError(f"the installed {bindir}/qmail-esmtpd-server does not serve with "
                               f"its sessions as user {who}:\n    {said}\n" + advice)
    return who


def try_server(program: str, ids_options: list[str], env: dict[str, str]) -> str | None:
    """Start the server on a port of 127.0.0.1 (-1 says which), its sessions as
    the service user (`ids_options`), and read one greeting: None if that
    worked, else what went wrong (the server's last words)."""
    proc = subprocess.Popen([program, "-1", *ids_options, "127.0.0.1", "0"], env=env, cwd="/",
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    failure = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_SECONDS)
        port = proc.stdout.readline().strip() if ready else b""
        if not port.isdigit():
            failure = (f"not listening after {SERVER_START_SECONDS} s" if not ready
                       else "no port printed")
        else:
            with socket.create_connection(("127.0.0.1", int(port)),
                                          timeout=SERVER_START_SECONDS) as client:
                greeting = client.recv(4096)
                client.sendall(b"QUIT\r\n")
            if not greeting.startswith(b"220 install-check"):
                failure = f"its session said {greeting[:200]!r}"
    except OSError as e:
        failure = str(e)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if failure is None:
        return None
    last = proc.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
    return " / ".join([failure, *last])


if __name__ == "__main__":
    sys.exit(main())
