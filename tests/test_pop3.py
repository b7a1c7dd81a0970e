"""`qmail-esmtpd-checkpassword` on its fd-3 interface, as qmail-popup calls it:

    qmail-esmtpd-checkpassword SUBPROGRAM ARGS...   3< user NUL password NUL timestamp NUL

against a real PostgreSQL, run through a launcher made like the installed
one.  The subprogram is a shell that reports who and where it runs.
Switching users needs root (CI runs as root); those tests are skipped otherwise.
As root the program connects to the database as the service user (qmaild, or
POPDBUSER: nobody where the system has no qmaild; db.env() says which); the
cluster's socket is open to everyone for that, as /var/run/postgresql is.
"""

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.files import write_launcher
from harness.install import installed_prefix
from harness.paths import ROOT
from harness.processes import run_with_fd3
from harness.system_users import pop3_service_user, world_readable_dir
from harness.tcpserver import TcpServer

ENTRY = "qmail_esmtpd.pop3.checkpassword:main"
PASSWORD = "correct horse battery staple"
SYSUSER = "nobody"
# Who and where the subprogram runs, and with what environment.
REPORT = ["/bin/sh", "-c", 'echo "$(id -u) $(id -g) $(id -G) $(pwd)"; '
          'echo "$USER|$HOME|$SHELL|$userdb_uid|$userdb_gid|$EXTRA|$AUTHORIZED"']
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture(scope="session")
def program(tmp_path_factory) -> Path:
    return write_launcher(tmp_path_factory.mktemp("bin") / "qmail-esmtpd-checkpassword", ENTRY)


def new_home() -> Path:
    """A home the sysuser can enter, with an empty Maildir: under a world-searchable
    temp dir (pytest's own tmp_path is root's alone), owned by the sysuser.
    Remove its parent when done."""
    home = world_readable_dir("qmail-esmtpd-pop3-") / "home"
    for sub in ("", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"):
        (home / sub).mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSUSER)
            os.chown(home / sub, entry.pw_uid, entry.pw_gid)
    return home


@pytest.fixture
def maildir_home():
    home = new_home()
    yield home
    shutil.rmtree(home.parent, ignore_errors=True)


def run(program: Path, data: bytes | None, env: dict, argv: list | None = None
        ) -> subprocess.CompletedProcess:
    """The program with `data` on fd 3 (None: no fd 3)."""
    return with_fd3([str(program), *(REPORT if argv is None else argv)], data, env)


def with_fd3(argv: list, data: bytes | None, env: dict) -> subprocess.CompletedProcess:
    """`argv` with `data` on fd 3 (None: no fd 3), its output as text."""
    options = {"env": {"PATH": "/usr/bin:/bin", **env}, "capture_output": True, "text": True,
               "timeout": 60}
    if data is None:
        return subprocess.run(argv, **options)
    return run_with_fd3(argv, data, **options)


def login(name: str, password: str, timestamp: str = "<1.2@pop.example.com>") -> bytes:
    """What qmail-popup writes on fd 3."""
    return f"{name}\0{password}\0{timestamp}\0".encode()


@pytest.fixture
def pop(db, control: Path, maildir_home: Path):
    """The database with alice (sysuser nobody, dir her home), and the environment
    tcpserver and qmail-popup would give the program."""
    db.add("alice", PASSWORD, sysuser=SYSUSER, dir=str(maildir_home))
    db.home = maildir_home
    db.pop_env = {"QMAIL_CONTROL": str(control), "TCPREMOTEIP": "192.0.2.7",
                  **db.env()}
    return db


def one_log_line(proc: subprocess.CompletedProcess, start: str) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"qmail-esmtpd-checkpassword: {start}"), lines[0]
    assert PASSWORD not in proc.stderr and "wrong-password" not in proc.stderr
    return lines[0]


@as_root
def test_success_runs_the_subprogram_as_the_sysuser_in_the_dir(program, pop):
    proc = run(program, login("alice", PASSWORD), pop.pop_env)
    assert proc.returncode == 0, proc.stderr
    nobody = pwd.getpwnam(SYSUSER)
    who, environment = proc.stdout.splitlines()
    uid, gid, *groups, cwd = who.split()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert {int(g) for g in groups} == set(os.getgrouplist(SYSUSER, nobody.pw_gid))
    assert cwd == str(pop.home)
    # USER is the account; HOME its dir; SHELL the sysuser's; no Dovecot fields
    assert environment == f"alice|{pop.home}|{nobody.pw_shell}||||"
    line = one_log_line(proc, "login ok user=alice ip=192.0.2.7")
    assert f"sysuser={SYSUSER}" in line and f"dir={pop.home}" in line


@as_root
def test_dovecot_timestamp_free_input_and_a_subprogram_found_in_path(program, pop):
    """Dovecot writes user NUL password NUL NUL; qmail-popup names qmail-pop3d by PATH."""
    proc = run(program, f"alice\0{PASSWORD}\0\0".encode(), pop.pop_env,
               argv=["env"])
    assert proc.returncode == 0, proc.stderr
    assert "USER=alice" in proc.stdout.splitlines()


@as_root
def test_a_subprogram_that_cannot_run_is_a_temporary_failure(program, pop):
    for argv in (["/nonexistent/qmail-pop3d"], ["no-such-qmail-pop3d", "Maildir"]):
        proc = run(program, login("alice", PASSWORD), pop.pop_env, argv=argv)
        assert proc.returncode == 111
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("qmail-esmtpd-checkpassword: login ok")
        assert lines[1] == (f"qmail-esmtpd-checkpassword: login tempfail: cannot run {argv[0]}: "
                            "No such file or directory")


@pytest.mark.parametrize("name, password, columns", [
    ("alice", "wrong-password", {}),
    ("mallory", PASSWORD, {}),
    ("alice", PASSWORD, {"active": False}),
])
def test_bad_logins_exit_1_without_the_subprogram(program, pop, name, password, columns):
    for column, value in columns.items():
        pop.sql(f"UPDATE poppass SET {column} = %s WHERE name = 'alice'", (value,))
    proc = run(program, login(name, password), pop.pop_env)
    assert proc.returncode == 1
    assert proc.stdout == ""
    one_log_line(proc, f"login fail user={name} ip=192.0.2.7: ")
    # counted by the throttle like an SMTP AUTH failure
    assert pop.sql("SELECT host(source), name FROM authfailures") == [("192.0.2.7", name)]


@pytest.mark.parametrize("data, why", [
    (b"alice", "malformed input"),
    (b"alice\0" + PASSWORD.encode(), "malformed input"),
    (b"", "malformed input"),
    (b"alice\0" + b"x" * 600 + b"\0\0", "longer than 512 bytes"),
    (None, "fd 3 is not open"),
])
def test_misuse_exits_2(program, pop, data, why):
    proc = run(program, data, pop.pop_env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert why in one_log_line(proc, "login misuse ")
    assert pop.sql("SELECT count(*) FROM authfailures") == [(0,)]


def test_512_bytes_are_still_read(program, pop):
    data = login("alice", "wrong-password")
    data += b"t" * (512 - len(data) - 1) + b"\0"
    assert len(data) == 512
    assert run(program, data, pop.pop_env).returncode == 1


def test_no_subprogram_exits_2(program, pop):
    proc = run(program, login("alice", PASSWORD), pop.pop_env, argv=[])
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_database_down_exits_111(program, pop, tmp_path):
    env = {**pop.pop_env, "AUTHDB": f"host={tmp_path} dbname=mail user=qmaild"}
    proc = run(program, login("alice", PASSWORD), env)
    assert proc.returncode == 111
    assert proc.stdout == ""
    assert "database" in one_log_line(proc, "login tempfail user=alice ip=192.0.2.7: ")


def test_no_database_configured_exits_111(program, pop):
    env = {k: v for k, v in pop.pop_env.items() if k != "AUTHDB"}
    proc = run(program, login("alice", PASSWORD), env)
    assert proc.returncode == 111
    assert "control/authdb" in one_log_line(proc, "login tempfail ")


UNUSABLE_ROWS = [
    ("sysuser", "no-such-user-here", "sysuser no-such-user-here is not a user of this system"),
    ("dir", "/nonexistent/alice", "dir /nonexistent/alice: No such file or directory"),
    ("sysuser", "root", "sysuser root is root: refused"),
    ("sysuser", None, "no sysuser for this account"),
    ("hostname", "pop2.example.com", "the account lives on host pop2.example.com"),
]


@pytest.mark.parametrize("column, value, why", UNUSABLE_ROWS)
def test_rows_that_cannot_be_served(program, pop, column, value, why):
    if column == "dir" and os.geteuid() != 0:
        pytest.skip("switching users needs root")
    pop.sql(f"UPDATE poppass SET {column} = %s WHERE name = 'alice'", (value,))
    env = {**pop.pop_env, "POPHOST": "pop1.example.com"}
    proc = run(program, login("alice", PASSWORD), env)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert one_log_line(proc, "login fail user=alice ip=192.0.2.7: ").endswith(why)
    assert pop.sql("SELECT count(*) FROM authfailures") == [(0,)]  # the password was right


@pytest.mark.parametrize("column, value, why", [
    *UNUSABLE_ROWS, ("pw", "not the password", "wrong password, or no such active user")])
def test_every_refusal_waits_the_failure_delay(program, pop, column, value, why):
    """A right password on a row that cannot be served is refused as a wrong one
    is: after authfaildelay, with status 1 (qmail-popup and Dovecot show nothing
    else), so the answer does not tell that the password was right."""
    if column == "dir" and os.geteuid() != 0:
        pytest.skip("switching users needs root")
    if column == "pw":
        value = pop.hash(value)
    pop.sql(f"UPDATE poppass SET {column} = %s WHERE name = 'alice'", (value,))
    env = {**pop.pop_env, "POPHOST": "pop1.example.com", "AUTHFAILDELAY": "1"}
    started = time.monotonic()
    proc = run(program, login("alice", PASSWORD), env)
    assert time.monotonic() - started >= 1
    assert (proc.returncode, proc.stdout) == (1, "")
    assert one_log_line(proc, "login fail user=alice ip=192.0.2.7: ").endswith(why)


@as_root
def test_as_root_it_connects_as_the_service_user(program, pop):
    """Started as root (tcpserver), the connect happens with the service user's
    uid, which peer authentication reads: a socket only root can reach fails."""
    base = pop.database.cluster.base
    os.chmod(base, 0o700)
    try:
        proc = run(program, login("alice", PASSWORD), pop.pop_env)
    finally:
        os.chmod(base, 0o711)
    assert proc.returncode == 111
    assert "Permission denied" in one_log_line(proc, "login tempfail user=alice ip=192.0.2.7: "
                                                     "database: ")


@as_root
def test_a_service_user_the_system_lacks_is_a_temporary_failure(program, pop):
    proc = run(program, login("alice", PASSWORD), {**pop.pop_env, "POPDBUSER": "no-such-user"})
    assert proc.returncode == 111 and proc.stdout == ""
    assert one_log_line(proc, "login tempfail user=alice ip=192.0.2.7: ").endswith(
        "no system user no-such-user to connect to the database as "
        "(control/popdbuser names it)")


@as_root
def test_dir_defaults_to_the_sysusers_home(program, pop):
    pop.sql("UPDATE poppass SET dir = NULL WHERE name = 'alice'")
    home = pwd.getpwnam(SYSUSER).pw_dir
    proc = run(program, login("alice", PASSWORD), pop.pop_env)
    if os.path.isdir(home):
        assert proc.returncode == 0 and proc.stdout.split()[-1].endswith(home)
    else:  # Debian's nobody lives in /nonexistent
        assert proc.returncode == 1 and f"dir {home}" in proc.stderr


@pytest.mark.parametrize("setting, columns, allowed", [
    ({"POPHOST": "pop1.example.com"}, {"hostname": "pop2.example.com"}, False),
    ({"POPHOST": "pop1.example.com"}, {"hostname": "POP1.example.com"}, True),
    ({"POPHOST": "pop1.example.com"}, {"hostname": ""}, True),
    ({"POPHOST": "pop1.example.com"}, {}, True),
    ({}, {"hostname": "pop2.example.com", "ip": "192.0.2.99"}, True),
    ({"POPIP": "192.0.2.1"}, {"ip": "192.0.2.99"}, False),
    ({"POPIP": "192.0.2.1"}, {"ip": "192.0.2.1"}, True),
])
def test_rows_of_other_hosts_are_refused(program, pop, setting, columns, allowed):
    for column, value in columns.items():
        pop.sql(f"UPDATE poppass SET {column} = %s WHERE name = 'alice'", (value,))
    proc = run(program, login("alice", PASSWORD), {**pop.pop_env, **setting},
               argv=["/bin/true"])
    if os.geteuid() != 0 and allowed:
        assert proc.returncode == 111  # could not switch users, but got that far
    else:
        assert proc.returncode == (0 if allowed else 1), proc.stderr
    if not allowed:
        assert "the account lives on" in proc.stderr


def test_the_host_comes_from_a_control_file_too(program, pop, control):
    pop.sql("UPDATE poppass SET hostname = 'pop2.example.com' WHERE name = 'alice'")
    (control / "pophost").write_text("pop1.example.com\n")
    proc = run(program, login("alice", PASSWORD), pop.pop_env, argv=["/bin/true"])
    assert proc.returncode == 1
    assert "the account lives on host pop2.example.com" in proc.stderr


def test_a_throttled_network_is_a_temporary_failure(program, pop):
    env = {**pop.pop_env, "AUTHFAILLIMIT": "2"}
    for attempt in ("wrong-password", "wrong-password2"):
        assert run(program, login("alice", attempt), env).returncode == 1
    proc = run(program, login("alice", PASSWORD), env)  # even the right one: no oracle
    assert proc.returncode == 111
    assert "throttled: source=192.0.2.7 failures=2" in one_log_line(
        proc, "login tempfail user=alice ip=192.0.2.7: ")
    # another network is not affected
    proc = run(program, login("alice", PASSWORD), {**env, "TCPREMOTEIP": "198.51.100.1"},
               argv=["/bin/true"])
    assert proc.returncode == (0 if os.geteuid() == 0 else 111)


def test_a_login_without_tcpremoteip_counts_as_0_0_0_0(program, pop):
    env = {k: v for k, v in pop.pop_env.items() if k != "TCPREMOTEIP"}
    proc = run(program, login("alice", "wrong-password"), env)
    assert proc.returncode == 1
    assert pop.sql("SELECT host(source) FROM authfailures") == [("0.0.0.0",)]
    one_log_line(proc, "login fail user=alice: ")


def test_a_deprecated_hash_is_replaced_where_granted(program, pop):
    from passlib.hash import sha512_crypt

    pop.sql("UPDATE poppass SET pw = %s WHERE name = 'alice'", (sha512_crypt.hash(PASSWORD),))
    pop.sql("GRANT UPDATE (pw) ON poppass TO qmaild")
    run(program, login("alice", PASSWORD), pop.pop_env, argv=["/bin/true"])
    assert pop.sql("SELECT pw FROM poppass WHERE name = 'alice'")[0][0].startswith("$argon2id$")


# --- Dovecot's conventions ----------------------------------------------------
# Dovecot runs the program as its auth service's user: `daemon` stands in for
# that unprivileged user here, running the installed program (its interpreter
# is one every user may run, unlike the venv's under /root).

AUTH_USER = "daemon"


@pytest.fixture(scope="session")
def installed_program() -> Path:
    if os.geteuid() != 0:
        pytest.skip("running the program as another user needs root")
    return installed_prefix() / "bin" / "qmail-esmtpd-checkpassword"


@pytest.fixture
def dovecot_pop(pop):
    """pop, with a copy of the control directory the auth user may read."""
    control = world_readable_dir("qmail-esmtpd-control-")
    shutil.copytree(pop.pop_env["QMAIL_CONTROL"], control, dirs_exist_ok=True)
    pop.dovecot_control = control
    yield pop
    shutil.rmtree(control, ignore_errors=True)


def dovecot_env(pop, **extra: str) -> dict:
    """What Dovecot's auth process sets (see tests/test_dovecot.py for the real one)."""
    return {**pop.pop_env, "QMAIL_CONTROL": str(pop.dovecot_control),
            "ORIG_UID": str(pwd.getpwnam(AUTH_USER).pw_uid), "SERVICE": "pop3",
            "TCPLOCALIP": "127.0.0.1", **extra}


def as_dovecot(program: Path, data: bytes, env: dict, argv: list | None = None
               ) -> subprocess.CompletedProcess:
    return with_fd3(["setuidgid", AUTH_USER, str(program), *(REPORT if argv is None else argv)],
                    data, env)


def test_dovecot_gets_the_user_in_its_fields_without_a_switch(installed_program, dovecot_pop):
    pop = dovecot_pop
    nobody = pwd.getpwnam(SYSUSER)
    proc = as_dovecot(installed_program, login("alice", PASSWORD), dovecot_env(pop))
    assert proc.returncode == 0, proc.stderr
    who, environment = proc.stdout.splitlines()
    # checkpassword-reply runs as Dovecot ran us (it refuses to run as another uid)
    assert who.split()[0] == str(pwd.getpwnam(AUTH_USER).pw_uid)
    assert environment == (f"alice|{pop.home}|{nobody.pw_shell}|{nobody.pw_uid}|"
                           f"{nobody.pw_gid}|userdb_uid userdb_gid|")
    assert proc.stderr == ""  # Dovecot would log any line here as an error


def test_dovecot_refusals_log_one_line(installed_program, dovecot_pop):
    proc = as_dovecot(installed_program, login("alice", "wrong-password"),
                      dovecot_env(dovecot_pop))
    assert proc.returncode == 1
    one_log_line(proc, "login fail user=alice ip=192.0.2.7: wrong password")


def test_dovecot_root_and_missing_dirs_are_refused_too(installed_program, dovecot_pop):
    pop = dovecot_pop
    pop.sql("UPDATE poppass SET dir = '/nonexistent/alice' WHERE name = 'alice'")
    proc = as_dovecot(installed_program, login("alice", PASSWORD), dovecot_env(pop))
    assert proc.returncode == 1 and "dir /nonexistent/alice" in proc.stderr
    pop.sql("UPDATE poppass SET dir = NULL, sysuser = 'root' WHERE name = 'alice'")
    proc = as_dovecot(installed_program, login("alice", PASSWORD), dovecot_env(pop))
    assert proc.returncode == 1 and "is root: refused" in proc.stderr


@as_root
def test_dovecot_running_it_as_root_is_refused(program, pop):
    """Dovecot's checkpassword-reply would run as root: no subprogram, 111."""
    proc = run(program, login("alice", PASSWORD), {**pop.pop_env, "ORIG_UID": "0"})
    assert proc.returncode == 111 and proc.stdout == ""
    assert "Dovecot runs this program as root" in one_log_line(
        proc, "login tempfail user=alice ip=192.0.2.7: ")


def test_the_program_is_unreadable_by_its_users_other_processes(dovecot_pop):
    """Before it reads the password: run as Dovecot's auth user (whose other
    processes might read it), it is not dumpable while it waits for fd 3."""
    from test_hardening import assert_unreadable_by_its_user

    from harness.system_users import service_python

    folder = world_readable_dir("qmail-esmtpd-pop3-bin-")
    try:
        program = write_launcher(folder / "qmail-esmtpd-checkpassword", ENTRY,
                                 interpreter=service_python())
        argv = [str(program), "/bin/true"]
        if os.geteuid() == 0:
            argv = ["setuidgid", AUTH_USER, *argv]
        read_end, write_end = os.pipe()

        def give_fd3() -> None:  # as harness.processes.run_with_fd3, with fd 3 kept open
            os.dup2(read_end, 3)
            os.set_inheritable(3, True)

        proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", **dovecot_env(dovecot_pop)},
                                stderr=subprocess.PIPE, close_fds=False, preexec_fn=give_fd3)
        os.close(read_end)
        try:
            os.write(write_end, b"alice\0")  # the password is yet to come
            deadline = time.monotonic() + 10
            while not program_is_undumpable(proc.pid, program):
                assert time.monotonic() < deadline, "still dumpable, waiting for the password"
                time.sleep(0.01)
            assert_unreadable_by_its_user(proc.pid)
            os.write(write_end, PASSWORD.encode() + b"\0\0")
        finally:
            os.close(write_end)
            _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def program_is_undumpable(pid: int, program: Path) -> bool:
    """Whether process `pid` runs `program` by now, as its user, not dumpable.
    setuidgid's own command line names the program too, and setuidgid is not
    dumpable between its setuid and its exec (which makes it dumpable again),
    so the program counts as running only once setuidgid is gone from argv[0]."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        running = str(program).encode() in argv and not argv[0].endswith(b"setuidgid")
        return running and os.stat(f"/proc/{pid}").st_uid != 0 and \
            os.stat(f"/proc/{pid}/mem").st_uid == 0
    except FileNotFoundError:
        return False


def test_dovecot_userdb_lookup_answers_authorized_2(installed_program, dovecot_pop):
    """AUTHORIZED=1: a lookup without password (checkpassword as userdb)."""
    pop = dovecot_pop

    def lookup(name: bytes, **extra: str) -> subprocess.CompletedProcess:
        return as_dovecot(installed_program, name + b"\0\0",
                          dovecot_env(pop, AUTHORIZED="1", **extra))

    proc = lookup(b"alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].endswith("|userdb_uid userdb_gid|2")
    unknown = lookup(b"mallory")
    assert unknown.returncode == 3 and unknown.stdout == ""
    pop.sql("UPDATE poppass SET active = false WHERE name = 'alice'")
    assert lookup(b"alice").returncode == 3
    credentials = lookup(b"alice", CREDENTIALS_LOOKUP="1", SCHEME="PLAIN")
    assert credentials.returncode == 1 and credentials.stdout == ""


def test_authorized_means_nothing_outside_dovecot(program, pop):
    """Without Dovecot's ORIG_UID, AUTHORIZED=1 does not skip the password."""
    proc = run(program, b"alice\0\0", {**pop.pop_env, "AUTHORIZED": "1"})
    assert proc.returncode == 1 and proc.stdout == ""


# --- the subprogram's environment -------------------------------------------------

DATABASE_ENV = {"PGPASSWORD": "secret-pg-password", "PGHOST": "/nonexistent",
                "PGSERVICEFILE": "/nonexistent/pg_service.conf",
                "QMAIL_ESMTPD_ADMINDB": "dbname=mail user=postgres"}


def without_database_settings(stdout: str) -> None:
    names = {line.split("=", 1)[0] for line in stdout.splitlines() if "=" in line}
    assert "USER" in names, stdout
    assert not {name for name in names if name.startswith("PG")}, stdout
    assert not names & {"AUTHDB", "QMAIL_ESMTPD_ADMINDB", "POPDBUSER"}, stdout
    assert "secret-pg-password" not in stdout


@as_root
def test_the_subprogram_gets_no_database_settings(program, pop):
    # libpq reads PG* too: the connection string in AUTHDB overrides these
    env = {**pop.pop_env, **DATABASE_ENV, "POPDBUSER": pop3_service_user()}
    proc = run(program, login("alice", PASSWORD), env, argv=["env"])
    assert proc.returncode == 0, proc.stderr
    without_database_settings(proc.stdout)


def test_dovecots_subprogram_gets_no_database_settings_either(installed_program,
                                                              dovecot_pop):
    proc = as_dovecot(installed_program, login("alice", PASSWORD),
                      dovecot_env(dovecot_pop, **DATABASE_ENV), argv=["env"])
    assert proc.returncode == 0, proc.stderr
    without_database_settings(proc.stdout)


# --- start-up -------------------------------------------------------------------

def test_it_imports_nothing_of_the_smtp_server(program, pop):
    """One process per login: the launcher's code under -X importtime."""
    lines = program.read_text().splitlines()
    interpreter = lines[0][2:].split()[0]
    code = "\n".join(lines[1:])
    proc = with_fd3([interpreter, "-IS", "-X", "importtime", "-c", code, "/bin/true"],
                    login("alice", "wrong-password"), pop.pop_env)
    assert proc.returncode == 1, proc.stderr
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    assert "qmail_esmtpd.auth.accounts" in modules and "psycopg2" in modules
    smtp = {"protocol", "server", "lineio", "replies", "queue", "cli", "rcpthosts", "tls",
            "auth.sasl", "auth.postgres", "auth.checkpassword", "admin"}
    assert not {f"qmail_esmtpd.{name}" for name in smtp} & modules
    assert "passlib" not in modules and "passlib.context" not in modules


# --- grants ---------------------------------------------------------------------

def test_the_pop3_grants_of_grants_sql_are_enough_for_dovecots_role(program, pop):
    """sql/grants.sql, run again once the role `dovecot` exists, gives it what
    the program needs under Dovecot: it reads the row and counts failures."""
    if not pop.sql("SELECT 1 FROM pg_roles WHERE rolname = 'dovecot'"):
        pop.sql("CREATE ROLE dovecot LOGIN")
    pop.sql((ROOT / "sql" / "grants.sql").read_text())
    env = {**pop.pop_env, "AUTHDB": pop.database.dsn("dovecot")}
    assert run(program, login("alice", "wrong-password"), env).returncode == 1
    assert pop.sql("SELECT name FROM authfailures") == [("alice",)]
    proc = run(program, login("alice", PASSWORD), env, argv=["/bin/true"])
    assert proc.returncode == (0 if os.geteuid() == 0 else 111), proc.stderr
    assert "login ok" in proc.stderr or os.geteuid() != 0
    # and nothing more: not the other tables, not the password column's UPDATE
    conn = pop.database.cluster.connect(pop.database.name, "dovecot")
    try:
        for statement in ("SELECT * FROM sendcounts", "SELECT * FROM sendas",
                          "UPDATE poppass SET pw = 'x'"):
            with pytest.raises(Exception, match="permission denied"), conn.cursor() as cur:
                cur.execute(statement)
    finally:
        conn.close()


# --- APOP -------------------------------------------------------------------------
# qmail-popup passes `APOP name digest` as name NUL digest NUL <timestamp> NUL.

TIMESTAMP = "<1.2@pop.example.com>"  # what login() sends


def apop_digest(secret: str, timestamp: str = TIMESTAMP) -> str:
    import hashlib

    return hashlib.md5((timestamp + secret).encode()).hexdigest()


def test_apop_against_a_hashed_row_is_refused_at_once_and_not_counted(program, pop):
    env = {**pop.pop_env, "AUTHFAILDELAY": "30", "AUTHFAILLIMIT": "3"}
    for n in range(5):  # a client polling with APOP first: a new digest each greeting
        timestamp = f"<{4711 + n}.1767225600@pop.example.com>"
        started = time.monotonic()
        proc = run(program, login("alice", apop_digest(PASSWORD, timestamp), timestamp), env)
        assert time.monotonic() - started < 30  # no failure delay
        assert (proc.returncode, proc.stdout) == (1, "")
        assert one_log_line(proc, "login fail user=alice ip=192.0.2.7: ").endswith(
            "apop: cannot be checked against a hashed password, or no such active user "
            "(not counted)")
    assert pop.sql("SELECT count(*) FROM authfailures") == [(0,)]
    # the same client's USER/PASS still gets in: no lockout
    assert run(program, login("alice", PASSWORD), env, argv=["/bin/true"]).returncode == \
        (0 if os.geteuid() == 0 else 111)


def test_apop_for_an_unknown_name_is_refused_the_same_way(program, pop):
    proc = run(program, login("mallory", apop_digest(PASSWORD)), pop.pop_env)
    assert proc.returncode == 1 and "apop: cannot be checked" in proc.stderr
    assert pop.sql("SELECT count(*) FROM authfailures") == [(0,)]


def test_a_password_that_looks_like_a_digest_still_works_with_user_pass(program, pop):
    hexpassword = "0123456789abcdef0123456789abcdef"
    pop.sql("UPDATE poppass SET pw = %s WHERE name = 'alice'", (pop.hash(hexpassword),))
    proc = run(program, login("alice", hexpassword), pop.pop_env, argv=["/bin/true"])
    assert proc.returncode == (0 if os.geteuid() == 0 else 111), proc.stderr
    assert "login ok user=alice" in proc.stderr or os.geteuid() != 0


def test_without_a_timestamp_a_digest_shaped_password_is_an_ordinary_one(program, pop):
    """Dovecot sends no timestamp: a wrong 32-hex-digit password is a counted failure."""
    proc = run(program, f"alice\0{apop_digest('guess')}\0\0".encode(), pop.pop_env)
    assert proc.returncode == 1 and "wrong password" in proc.stderr
    assert pop.sql("SELECT count(*) FROM authfailures") == [(1,)]


def test_apop_is_checked_where_the_row_keeps_its_password_readable(program, pop):
    pop.sql("UPDATE poppass SET pw = %s WHERE name = 'alice'", (PASSWORD,))
    env = {**pop.pop_env, "AUTHPLAINTEXT": "1", "AUTHFAILDELAY": "1"}
    proc = run(program, login("alice", apop_digest(PASSWORD)), env, argv=["/bin/true"])
    assert proc.returncode == (0 if os.geteuid() == 0 else 111), proc.stderr
    assert "login ok user=alice" in proc.stderr or os.geteuid() != 0
    # a wrong digest is a wrong password: it waits and counts
    started = time.monotonic()
    proc = run(program, login("alice", apop_digest("not " + PASSWORD)), env)
    assert time.monotonic() - started >= 1
    assert proc.returncode == 1 and "wrong password" in proc.stderr
    assert pop.sql("SELECT count(*) FROM authfailures") == [(1,)]
    # without authplaintext the row cannot be read, so APOP cannot be checked
    proc = run(program, login("alice", apop_digest(PASSWORD)), pop.pop_env)
    assert proc.returncode == 1 and "apop: cannot be checked" in proc.stderr


def test_apop_from_a_throttled_source_is_throttled(program, pop):
    env = {**pop.pop_env, "AUTHFAILLIMIT": "1"}
    assert run(program, login("alice", "wrong-password"), env).returncode == 1
    proc = run(program, login("alice", apop_digest(PASSWORD)), env)
    assert proc.returncode == 111 and "throttled" in proc.stderr


@as_root
def test_poplib_apop_and_user_pass_through_qmail_popup(program, pop, tmp_path):
    """Real poplib, qmail-popup (the stand-in, or $QMAIL_POPUP) under tcpserver,
    the program as root, real PostgreSQL: APOP against a hashed row is refused
    without a wait and not counted, USER/PASS gets in; with a plaintext row
    and authplaintext, APOP gets in too."""
    import poplib

    popup = os.environ.get("QMAIL_POPUP") or str(ROOT / "tests" / "pop3" / "qmail-popup")
    pop3d = str(ROOT / "tests" / "pop3" / "qmail-pop3d")
    env = {**pop.pop_env, "AUTHFAILDELAY": "30"}
    env.pop("TCPREMOTEIP")  # tcpserver sets it
    server = TcpServer(tmp_path, ":allow\n", env,
                       [popup, "pop.example.com", program, pop3d, "Maildir"])
    try:
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        try:
            with pytest.raises(poplib.error_proto, match="authorization failed"):
                client.apop("alice", PASSWORD)
        finally:
            client.close()
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        try:
            client.user("alice")
            assert client.pass_(PASSWORD).startswith(b"+OK")
            assert client.quit().startswith(b"+OK")
        finally:
            client.close()
        assert pop.sql("SELECT count(*) FROM authfailures") == [(0,)]
        pop.sql("UPDATE poppass SET pw = %s WHERE name = 'alice'", (PASSWORD,))
        (Path(pop.pop_env["QMAIL_CONTROL"]) / "authplaintext").write_text("1\n")
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        try:
            assert client.apop("alice", PASSWORD).startswith(b"+OK")
            assert client.quit().startswith(b"+OK")
        finally:
            client.close()
        log = server.wait_log("login ok user=alice ip=127.0.0.1", "apop: cannot be checked")
        assert log.count("login ok user=alice ip=127.0.0.1") == 2, log
    finally:
        server.stop()
