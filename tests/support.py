"""What the tests and the benchmark both need: the installed server, a free
port, qmail-esmtpd under real tcpserver, and a throwaway PostgreSQL cluster.

The tests import it as `support` (pytest puts tests/ on sys.path), the
benchmark as `tests.support` (`python -m bench` from the repository root).
Standard library only at import time: psycopg2 loads at the first connection,
so the benchmark's `--no-auth` runs without it.  Nothing here imports pytest.
"""

import atexit
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / ".venv" / "bin" / "qmail-esmtpd"
FAKE_QUEUE = ROOT / "tests" / "conformance" / "fake-qmail-queue"
FAKE_CHECKPASSWORD = ROOT / "tests" / "conformance" / "fake-checkpassword"
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))


class StartError(RuntimeError):
    """A helper process (tcpserver, PostgreSQL) did not start."""


def free_port() -> int:
    """A port nobody listens on right now (a tiny race, fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 10,
                   host: str = "127.0.0.1") -> None:
    """Poll until something accepts on `host`:`port`; StartError if `proc` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise StartError(f"{what} exited {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise StartError(f"{what} not listening after {timeout:g} s") from None
            time.sleep(0.02)


RELAY_LOCALHOST = '127.0.0.1:allow,RELAYCLIENT=""\n:allow\n'  # tcprules: we may relay


def talk(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send everything, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def imported_modules(env: dict, session: bytes) -> set:
    """Run one session on pipes the way the launcher does, with -X importtime."""
    lines = SERVER.read_text().splitlines()
    interpreter = lines[0][2:].split()[0]
    code = "\n".join(lines[1:])
    out = subprocess.run([interpreter, "-IS", "-X", "importtime", "-c", code], input=session,
                         env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, timeout=60)
    if not out.stdout.startswith(b"220 "):
        raise AssertionError(f"no greeting: {out}")
    return {line.split("|")[-1].strip() for line in out.stderr.decode().splitlines()
            if line.startswith("import time:")}


def write_launcher(output: Path, entry: str, interpreter: str | None = None) -> Path:
    """A launcher for another console script of setup.cfg (MODULE:FUNCTION),
    made as `make venv` makes .venv/bin/qmail-esmtpd: tools/mklauncher.py,
    the venv's real interpreter with -IS, this checkout and the venv's
    packages on sys.path.  For programs started once per login, where pip's
    wrapper would cost more than the work.  `interpreter`: another Python of
    the same version to run it (e.g. /usr/bin/python3, which a user other
    than root can run when the venv's lives in root's home)."""
    python = str(ROOT / ".venv" / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    subprocess.run([python, str(ROOT / "tools" / "mklauncher.py"), str(output),
                    interpreter or python, entry, str(ROOT), purelib], check=True, timeout=60)
    return output


def run_with_fd3(argv: list, data: bytes, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run() with `data` readable on fd 3, as qmail-popup and Dovecot
    give a checkpassword program its input (`data` fits a pipe's buffer)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)

    def give_fd3() -> None:
        os.dup2(read_end, 3)
        os.set_inheritable(3, True)  # dup2 onto itself (read_end == 3) leaves close-on-exec

    try:
        return subprocess.run(argv, close_fds=False, preexec_fn=give_fd3, **kwargs)
    finally:
        os.close(read_end)


def write_program(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


class TcpServer:
    """`argv` (qmail-esmtpd) under real tcpserver, with `rules` compiled by real tcprules.

    Listens on `host`:`port` once constructed (any 127.x.y.z works on Linux's
    loopback, so two frontends can run side by side); tcpserver runs in its own
    process group, which stop() ends.  `verbose` adds tcpserver's -v lines to
    the log, beside the server's own stderr.
    """

    def __init__(self, workdir: Path, rules: str, env: dict, argv: list,
                 verbose: bool = True, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        cdb = workdir / f"tcp.smtp-{self.port}.cdb"
        try:
            subprocess.run(["tcprules", str(cdb), f"{cdb}.tmp"], input=rules.encode(),
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise StartError(f"tcprules: {e}") from None
        self.logpath = workdir / f"tcpserver-{self.port}.log"
        flags = ["-v"] if verbose else []
        with self.logpath.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    ["tcpserver", *flags, "-R", "-H", "-l", "localhost", "-c", "100",
                     "-x", str(cdb), host, str(self.port), *map(str, argv)],
                    env={"PATH": os.environ["PATH"], **env}, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            except OSError as e:
                raise StartError(f"tcpserver: {e}") from None
        try:
            wait_listening(self.port, self.proc, "tcpserver", host=host)
        except StartError as e:
            self.stop()
            raise StartError(f"{e}: {self.log()[-600:]}") from None

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def wait_log(self, *texts: str, timeout: float = 10) -> str:
        """The log once it holds every one of `texts`, or as it is at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(text in log for text in texts) or time.monotonic() > deadline:
                return log
            time.sleep(0.01)

    def stop(self) -> None:
        """End tcpserver and every session it runs; returns once tcpserver is reaped."""
        end_group(self.proc)


FORKSERVER = ROOT / ".venv" / "bin" / "qmail-esmtpd-server"


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


class ForkServer:
    """qmail-esmtpd-server in tcpserver's place: TcpServer's interface (host,
    port, log, wait_log, stop) with the same rules compiled by real tcprules.

    `argv` is what TcpServer would run: the qmail-esmtpd launcher first, then
    its arguments.  `options` go before HOST PORT (-c, -C, ...), `wrapper`
    before the program (softlimit and its options).  Started as
    root, the sessions run as nobody (service_ids()); the caller makes sure
    nobody can read what they read (let_service_user_in()).
    """

    def __init__(self, workdir: Path, rules: str, env: dict, argv: list | None = None,
                 verbose: bool = True, host: str = "127.0.0.1",
                 options: list | None = None, wrapper: list | None = None) -> None:
        argv = argv or [SERVER]
        if Path(argv[0]) != SERVER:
            raise StartError(f"qmail-esmtpd-server runs qmail-esmtpd only, not {argv[0]}")
        self.host = host
        self.cdb = workdir / f"tcp.smtp-server-{id(self)}.cdb"
        self.compile_rules(rules)
        self.logpath = workdir / f"forkserver-{id(self)}.log"
        flags = ["-v"] if verbose else []
        path = "/usr/local/bin:/usr/bin:/bin" if os.geteuid() == 0 else os.environ["PATH"]
        with self.logpath.open("wb") as log:
            self.proc = subprocess.Popen(
                [*(wrapper or []), str(FORKSERVER), *flags, "-1", "-l", "localhost", "-c", "100",
                 "-T", "5",
                 *service_ids(), "-x", str(self.cdb), *map(str, options or []), host, "0",
                 *map(str, argv[1:])],
                env={"PATH": path, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # -1: the port, once listening
        if not line.strip().isdigit():
            self.stop()
            raise StartError(f"qmail-esmtpd-server did not start: {self.log()[-600:]}")
        self.port = int(line)

    def compile_rules(self, rules: str) -> None:
        """tcprules into place (a new inode, as an admin's `make` does)."""
        try:
            subprocess.run(["tcprules", str(self.cdb), f"{self.cdb}.tmp"], input=rules.encode(),
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise StartError(f"tcprules: {e}") from None

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def wait_log(self, *texts: str, timeout: float = 10) -> str:
        return TcpServer.wait_log(self, *texts, timeout=timeout)  # type: ignore[arg-type]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM to the server and its sessions at once, so that a client a
        test left open does not hold the teardown for the -T grace (SIGTERM's
        graceful wait has a test of its own)."""
        end_group(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()


def end_group(proc: subprocess.Popen, signalled: bool = False) -> None:
    """SIGTERM to `proc`'s process group (unless the caller signalled it
    already), SIGKILL if it has not ended 5 s later; returns once reaped."""
    if not signalled:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pop3_service_user() -> str:
    """Whose uid qmail-esmtpd-checkpassword, started as root, connects to the
    database with: qmaild, or nobody where the system has no qmaild (asked
    each time: a test elsewhere may add or remove qmaild)."""
    try:
        pwd.getpwnam("qmaild")
        return "qmaild"
    except KeyError:
        return "nobody"


def pop3_service_env() -> dict:
    """What the POP3 program's environment needs for pop3_service_user()."""
    user = pop3_service_user()
    return {} if user == "qmaild" else {"POPDBUSER": user}


def compile_users(assign: Path, cdb: Path) -> None:
    """users/assign -> users/cdb by qmail-newu's rules: `!local\\0` for `=`,
    `!prefix` for `+`, and under the empty key the wildcard characters."""
    import cdblib  # pure-cdb: the one the server reads users/cdb with

    wildchars = b""
    with cdb.open("wb") as f, cdblib.Writer(f) as writer:
        for line in assign.read_bytes().split(b"\n"):
            if line.startswith(b"."):
                break
            colon = line.index(b":")
            fields = line[colon + 1:].split(b":")[:6]
            key = b"!" + line[1:colon].lower()
            if line.startswith(b"+"):
                if colon >= 2 and line[colon - 1:colon] not in wildchars:
                    wildchars += line[colon - 1:colon]
            else:
                key += b"\0"
            writer.put(key, b"\0".join(fields))
        writer.put(b"", wildchars)


# --- PostgreSQL ---------------------------------------------------------------

_database_numbers = itertools.count(1)


def _service_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise StartError("no unprivileged user to run PostgreSQL as")


class Cluster:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, a unix socket only.

    Each test gets a fresh database loaded from sql/, with the least-privilege
    role `qmaild` the server connects as.  destroy() stops it and removes it.
    With `primary`, it is that cluster's streaming standby instead
    (pg_basebackup -R): read-only until promote().
    """

    def __init__(self, primary: "Cluster | None" = None) -> None:
        self.user = _service_user()
        self.base = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        try:
            if self.user:
                entry = pwd.getpwnam(self.user)
                for path in (self.base, self.sock):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            if primary is None:
                self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                          "--no-sync", "-E", "UTF8", "--locale=C")
            else:  # initdb's pg_hba.conf lets local connections replicate
                self._run("pg_basebackup", "-D", str(self.data), "-R", "-h", str(primary.sock),
                          "-U", "postgres", "--checkpoint=fast", "--no-sync")
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(PGBIN / program), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise StartError(f"{program} from {PGBIN} ($PGBIN): {e}") from None
        except subprocess.CalledProcessError as e:
            raise StartError(f"{program} exited {e.returncode}: "
                             f"{e.stderr.decode(errors='replace').strip()[-600:]}") from None

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.sock} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.base / "postgres.log"), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def promote(self) -> None:
        """A standby becomes a primary (returns once it accepts writes)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def postmaster(self) -> int:
        """The postmaster's pid."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.sock} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", user: str = "postgres"):
        """An autocommit connection (don't use it as `with conn:`, that opens a transaction)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname, user))
        conn.autocommit = True
        return conn

    def empty_database(self, prefix: str = "mail") -> "Database":
        """A new empty database, and the service role `qmaild` if not there yet."""
        name = f"{prefix}{next(_database_numbers)}"
        with Database(self, "postgres") as admin:
            admin.sql(f"CREATE DATABASE {name}")
            if not admin.sql("SELECT 1 FROM pg_roles WHERE rolname = 'qmaild'"):
                admin.sql("CREATE ROLE qmaild LOGIN")
        return Database(self, name)

    def new_database(self, grants: bool = True) -> "Database":
        """A fresh database with sql/schema.sql and (optionally) sql/grants.sql."""
        db = self.empty_database()
        db.sql((ROOT / "sql" / "schema.sql").read_text())
        if grants:
            db.sql((ROOT / "sql" / "grants.sql").read_text())
        return db


class Database:
    """One database of a Cluster, and the SQL helper: `sql()` as the superuser.

    The connection opens at the first statement, in autocommit mode, and
    stays open (so a test can hold a lock in it: `conn.autocommit = False`).
    """

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = self.cluster.connect(self.name)
        return self._conn

    def dsn(self, user: str = "postgres") -> str:
        return self.cluster.dsn(self.name, user)

    def sql(self, text: str, params: tuple | dict | None = None) -> list:
        """One statement (or a script of several); its rows, if any.

        Without `params` the text goes as it is (a `%` in a script stays a `%`).
        """
        with self.conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- pgbouncer ----------------------------------------------------------------

PGBOUNCER_INI = ROOT / "service" / "pgbouncer.ini"


def pgbouncer_program() -> str:
    """Debian puts pgbouncer in /usr/sbin, which a normal user's PATH lacks."""
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class Pgbouncer:
    """pgbouncer in front of `cluster`, with service/pgbouncer.ini's settings.

    Only the site-specific values change: its own temp dir for the socket, log
    and pid file, the cluster's socket as the server, `settings` on top (the
    benchmark's pool size).  It listens on a unix socket only, runs as the
    cluster's unprivileged user in the foreground in its own process group,
    and stop() ends it.  dsn() is what a frontend's AUTHDB names; point_at()
    moves it to another cluster (a promoted standby), as an admin would.
    """

    def __init__(self, cluster: Cluster, **settings: str) -> None:
        import configparser

        self.cluster = cluster
        self.base = Path(tempfile.mkdtemp(prefix="qmail-esmtpd-pgbouncer-"))
        self.port = 6432
        self.ini = configparser.RawConfigParser(delimiters=("=",), comment_prefixes=(";",))
        self.ini.optionxform = str  # type: ignore[assignment, method-assign]  # names keep case
        self.ini.read(PGBOUNCER_INI)
        self.ini["pgbouncer"].update({
            "listen_addr": "", "listen_port": str(self.port), "unix_socket_dir": str(self.base),
            "auth_file": str(self.base / "userlist.txt"),
            "logfile": str(self.base / "pgbouncer.log"),
            "pidfile": str(self.base / "pgbouncer.pid"),
            "admin_users": "postgres", **settings})
        self._write_ini()
        (self.base / "userlist.txt").write_text('"qmaild" ""\n"postgres" ""\n')
        if cluster.user:
            entry = pwd.getpwnam(cluster.user)
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cmd = [pgbouncer_program(), str(self.base / "pgbouncer.ini")]
        if cluster.user:
            cmd = ["runuser", "-u", cluster.user, "--", *cmd]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:
            shutil.rmtree(self.base, ignore_errors=True)
            raise StartError(f"pgbouncer: {e} (tools/install-deps installs it)") from None
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _write_ini(self) -> None:
        """pgbouncer.ini with [databases] on the cluster's socket (world-readable)."""
        self.ini["databases"] = {"*": f"host={self.cluster.sock} port=5432"}
        with (self.base / "pgbouncer.ini").open("w") as out:
            self.ini.write(out)

    def point_at(self, cluster: Cluster) -> None:
        """Send new server connections to `cluster`: edit [databases], RELOAD, RECONNECT."""
        self.cluster = cluster
        self._write_ini()
        self.console("RELOAD")
        self.console("RECONNECT")  # close the old server's connections, if any are left

    def _wait_listening(self, timeout: float = 10) -> None:
        path = str(self.base / f".s.PGSQL.{self.port}")
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise StartError(f"pgbouncer exited {self.proc.returncode}: {self.log()[-600:]}")
            if time.monotonic() > deadline:
                raise StartError(f"pgbouncer not listening after {timeout:g} s")
            time.sleep(0.02)

    def dsn(self, dbname: str, user: str = "qmaild") -> str:
        return f"host={self.base} port={self.port} dbname={dbname} user={user}"

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def console(self, command: str) -> list[dict]:
        """One command on pgbouncer's admin console (SHOW POOLS, RELOAD, ...); rows as dicts."""
        import psycopg2

        conn = psycopg2.connect(self.dsn("pgbouncer", "postgres"))
        try:
            conn.autocommit = True  # the console knows no transactions
            with conn.cursor() as cur:
                cur.execute(command)
                names = [column.name for column in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()] \
                    if names else []
        finally:
            conn.close()

    def show(self, what: str) -> list[dict]:
        """`SHOW <what>` (POOLS, STATS, CONFIG, ...) as dicts."""
        return self.console(f"SHOW {what}")

    def stop(self) -> None:
        """End pgbouncer (its server connections close with it) and remove its files.

        SIGTERM goes to pgbouncer itself: runuser, given one, would wait 2 s
        before passing on a SIGKILL.
        """
        try:
            os.kill(int((self.base / "pgbouncer.pid").read_text().split()[0]), signal.SIGTERM)
            signalled = True
        except (OSError, ValueError, IndexError):  # no pid file yet: the whole group
            signalled = False
        end_group(self.proc, signalled)
        shutil.rmtree(self.base, ignore_errors=True)


# --- installs and softlimit (test_install, test_softlimit, tools/softlimit.py) ------

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


def host_has(user: str) -> bool:
    """Whether this host has the system user (qmaild on a qmail host)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def world_readable_dir(prefix: str) -> Path:
    """A temp folder the service user (nobody) can enter: mkdtemp makes 0700 ones."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


_installs: dict[str, Path] = {}


def installed_prefix() -> Path:
    """`make install` from the wheel folder into a temp PREFIX, once per process."""
    if "prefix" not in _installs:
        prefix = world_readable_dir("qmail-esmtpd-prefix-")
        atexit.register(shutil.rmtree, prefix, True)
        run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}")
        _installs["prefix"] = prefix
    return _installs["prefix"]


def self_signed_pem(path: Path, host: str = "localhost") -> Path:
    """A self-signed certificate and its key in one PEM file, as servercert.pem wants."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={host}", "-keyout", f"{tmp}/key.pem",
                        "-out", f"{tmp}/cert.pem"], check=True, capture_output=True, timeout=60)
        path.write_bytes(Path(f"{tmp}/cert.pem").read_bytes() + Path(f"{tmp}/key.pem").read_bytes())
    return path


# The kinds of session the README's softlimit table has a row for.
SESSION_KINDS = ("plain", "starttls", "auth", "auth-starttls", "auth-argon2-cffi-default")
SOFTLIMIT_STACK = 2097152  # -s of service/run: thread stacks are as large as this limit


class LimitedService:
    """The installed qmail-esmtpd as the service user under `softlimit -m`, via tcpserver.

    `workdir` must be reachable by that user (see world_readable_dir()).

    As service/run starts it, except that setuidgid does what tcpserver's -u/-g
    do there.  Everything it reads is readable by that user: the control files
    (with servercert.pem), a qmail-queue stand-in in sh, and (for AUTH) a
    database of `cluster` with user alice, password PASSWORD, in our hash and
    in argon2-cffi's defaults (64 MiB, 4 threads), as imported tables have.
    """

    PASSWORD = "softlimit-Pa55"

    def __init__(self, workdir: Path, prefix: Path, cluster: "Cluster | None",
                 user: str = "nobody", env: dict | None = None) -> None:
        self.workdir, self.prefix, self.user = workdir, prefix, user
        self.env = env or {}  # what the run script exports besides (MALLOC_ARENA_MAX)
        os.chmod(workdir, 0o755)
        self.control = workdir / "control"
        self.control.mkdir()
        (self.control / "me").write_text("mx.example.com\n")
        self_signed_pem(self.control / "servercert.pem").chmod(0o644)
        self.queue = write_program(workdir / "qmail-queue",
                                   "#!/bin/sh\ncat >/dev/null && cat <&1 >/dev/null\n")
        self.authdb = None
        if cluster is not None:
            from qmail_esmtpd.auth.passwords import context

            os.chmod(cluster.base, 0o711)  # let the service user reach the socket
            self.db = cluster.new_database()
            self.authdb = self.db.dsn("qmaild")
            import argon2

            for name, hashed in (("alice", context().hash(self.PASSWORD)),
                                 ("bob", argon2.PasswordHasher().hash(self.PASSWORD))):
                self.db.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s)", (name, hashed))

    def session(self, kind: str, memory: int, stack: int = SOFTLIMIT_STACK) -> str:
        """One session of `kind` under `softlimit -m memory -s stack`: "ok" or what failed."""
        import smtplib
        import ssl

        env = {"QMAIL_CONTROL": str(self.control), "QMAILQUEUE": str(self.queue), **self.env}
        if kind.startswith("auth"):
            env["AUTHDB"] = str(self.authdb)
            if kind != "auth-starttls":
                env["AUTHCLEARTEXT"] = "1"
        argv = ["softlimit", "-m", str(memory), "-s", str(stack), "setuidgid", self.user,
                self.prefix / "bin" / "qmail-esmtpd"]
        server = TcpServer(self.workdir, ":allow\n", env, argv)
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                client.ehlo("client.test")
                if "starttls" in kind:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    client.starttls(context=context)
                    client.ehlo("client.test")
                if kind.startswith("auth"):
                    client.login("bob" if "argon2-cffi" in kind else "alice", self.PASSWORD)
                client.sendmail("a@example.com", ["b@example.org"], b"Subject: x\r\n\r\n" +
                                b"0123456789abcde\r\n" * 256)
            return "ok"
        except (OSError, smtplib.SMTPException) as e:
            log = server.log().strip().splitlines()
            return f"{type(e).__name__}: {e}; log: {' | '.join(log[-3:])}"
        finally:
            server.stop()
