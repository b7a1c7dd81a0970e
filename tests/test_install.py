"""`make install` as a mail host needs it: offline from `make wheels`, under a strict
umask, from a checkout it leaves clean, runnable by an unprivileged user, with
defaults that follow PREFIX; never over qmail-smtpd."""

import grp
import json
import os
import pwd
import shlex
import shutil
import smtplib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.install import as_printed, installed_prefix, run_make, wheel_folder
from harness.paths import ROOT
from harness.processes import StartError
from harness.system_users import host_has, world_readable_dir

UNREACHABLE_INDEX = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # any download would fail


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The project's tracked files, as a fresh clone of this tree has them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    copy = tmp_path / "checkout"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture
def prefix() -> Path:
    path = world_readable_dir("qmail-esmtpd-test-prefix-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listing(top: Path) -> dict:
    return {str(p.relative_to(top)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(top.rglob("*"))}


def default_trial_user() -> str:
    """Who `make install` tries the install as by default: qmaild on a qmail host,
    nobody elsewhere (the tests pass on both; TRY_AS= below covers the other case).
    Asked when the install has run, not at collection: other suites running on
    the same machine may create or remove qmail's users meanwhile."""
    return "qmaild" if host_has("qmaild") else "nobody"


def as_nobody(argv: list, data: bytes = b"", env: dict | None = None):
    return subprocess.run([str(a) for a in argv], input=data, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd="/",
                          user="nobody", group="nogroup", extra_groups=[])


def test_offline_install_under_umask_077_runs_as_nobody_from_prefix(checkout: Path,
                                                                   prefix: Path):
    (prefix / "bin").mkdir()
    original = prefix / "bin" / "qmail-smtpd"
    original.write_bytes(b"#!/bin/sh\necho the real one\n")
    (prefix / "control").mkdir()
    (prefix / "control" / "me").write_text("prefix.example.com\n")
    spool = prefix / "spool"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)
    queue = prefix / "bin" / "qmail-queue"  # the default QMAILQUEUE must be this one
    queue.write_text(f"#!/bin/sh\ncat > {spool}/message && cat <&1 > {spool}/envelope\n")
    queue.chmod(0o755)
    before = listing(checkout)

    said = run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}", cwd=checkout,
                    umask=0o077, env=UNREACHABLE_INDEX)

    assert f"tried as {default_trial_user()}" in said, said
    assert listing(checkout) == before  # no build/, no *.egg-info, no __pycache__
    assert original.read_bytes() == b"#!/bin/sh\necho the real one\n"
    lib = prefix / "lib" / "qmail-esmtpd"
    for path in [lib, *lib.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o755, path
        elif not path.is_symlink():
            assert mode in (0o644, 0o755), (path, oct(mode))
    assert any((lib / "qmail_esmtpd" / "__pycache__").glob("cli.*.pyc"))
    launcher = prefix / "bin" / "qmail-esmtpd"
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    shebang = launcher.read_text().splitlines()[0]
    interpreter = shebang[2:].split()[0]
    assert shebang.endswith(" -IS") and os.path.realpath(interpreter) == interpreter

    # No QMAIL_CONTROL, no QMAILQUEUE: PREFIX/control/me and PREFIX/bin/qmail-queue.
    out = as_nobody([launcher], b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                                b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert out.stdout.startswith(b"220 prefix.example.com ESMTP\r\n"), out
    assert b"250 ok " in out.stdout and out.stdout.endswith(b"221 prefix.example.com\r\n")
    assert out.returncode == 0
    assert (spool / "message").read_bytes().endswith(b"Subject: hi\n\nbody\n")
    # the variables still override
    other = world_readable_dir("qmail-esmtpd-test-control-")
    try:
        (other / "me").write_text("other.example.com\n")
        (other / "me").chmod(0o644)
        out = as_nobody([launcher], b"QUIT\r\n", {"QMAIL_CONTROL": str(other)})
        assert out.stdout.startswith(b"220 other.example.com ESMTP\r\n"), out
    finally:
        shutil.rmtree(other)
    admin = as_nobody([prefix / "bin" / "qmail-esmtpd-user", "--help"])
    assert admin.returncode == 0 and b"poppass" in admin.stdout, admin
    pop = as_nobody([prefix / "bin" / "qmail-esmtpd-checkpassword"])  # no subprogram: misuse
    assert pop.returncode == 2 and b"Traceback" not in pop.stderr, pop


@pytest.mark.parametrize("try_as, user", [
    ("", None),  # the default: qmaild where it exists, else nobody
    ("qmail-esmtpd-no-such-user,nobody", "nobody"),  # a host without the first: the next
    ("daemon,nobody", "daemon"),  # a host with the first
])
def test_an_interpreter_the_service_user_cannot_run_fails_the_install(
        checkout: Path, prefix: Path, tmp_path: Path, try_as: str, user: str | None):
    private = tmp_path / "home"  # like root's 0700 home with pyenv in it
    private.mkdir(mode=0o700)
    python = private / "python3"
    shutil.copy2(os.path.realpath(shutil.which("python3") or "/usr/bin/python3"), python)
    with pytest.raises(StartError) as failed:
        run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}", f"PYTHON={python}",
                 *([f"TRY_AS={try_as}"] if try_as else []), cwd=checkout,
                 env=UNREACHABLE_INDEX)
    message = str(failed.value)
    user = user or default_trial_user()
    assert f"does not work as user {user}:" in message and "PYTHON=" in message, message
    assert "Traceback" not in message


def test_no_trial_user_on_the_host_says_what_to_set(checkout: Path, prefix: Path):
    with pytest.raises(StartError) as failed:
        run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}",
                 "TRY_AS=qmail-esmtpd-no-such-user", cwd=checkout, env=UNREACHABLE_INDEX)
    message = str(failed.value)
    assert "no user qmail-esmtpd-no-such-user to try the install as; name one with TRY_AS="\
        in message, message


def test_the_trial_run_starts_the_server_before_saying_installed(checkout: Path, prefix: Path):
    """Its sessions as the service user: one the server refuses (root, whose
    sessions could write anywhere) fails the install with the server's words,
    although a qmail-esmtpd session as root works."""
    if os.geteuid() != 0:
        pytest.skip("the trial switches users as root only")
    with pytest.raises(StartError) as failed:
        run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}", "TRY_AS=root",
                 cwd=checkout, env=UNREACHABLE_INDEX)
    message = str(failed.value)
    assert f"the installed {prefix}/bin/qmail-esmtpd-server does not serve with its sessions " \
           "as user root:" in message and "root" in message.split("\n")[1], message
    assert "Traceback" not in message


def test_a_key_the_sessions_cannot_read_is_logged_with_who_tried(forkserver, control, db):
    """authfailkey readable by root alone (0600): the sessions' user, named in
    the log line, is the one to make the file's owner."""
    if os.geteuid() != 0:
        pytest.skip("the warm server's sessions run as nobody: needs root")
    from test_auth import ALICE, ALICE_PW, login

    (control / "authfailkey").chmod(0o600)
    db.add(ALICE, ALICE_PW)
    server = forkserver(":allow\n", env=db.env())
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(client, ALICE, "wrong")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    log = server.wait_log("authfailkey")
    assert f"auth throttle: control/authfailkey cannot be read by user nobody (uid " \
           f"{nobody.pw_uid}) group {group} (gid {nobody.pw_gid}) (authfailkey: Permission " \
           "denied): every failure counts as a new attempt" in log, log


def test_destdir_stages_for_prefix(checkout: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    said = run_make("install", "PREFIX=/opt/qmail", f"DESTDIR={stage}",
                    f"WHEELS={wheel_folder()}", cwd=checkout, env=UNREACHABLE_INDEX)
    assert "not tried" in said
    text = (stage / "opt" / "qmail" / "bin" / "qmail-esmtpd").read_text()
    assert "'/opt/qmail/lib/qmail-esmtpd'" in text and str(stage) not in text
    package = stage / "opt" / "qmail" / "lib" / "qmail-esmtpd" / "qmail_esmtpd"
    assert (package / "cli.py").exists()
    # the qmail home compiled in, as qmail's conf-qmail: control/, users/cdb, bin/ under it
    assert "\nQMAIL_HOME = b'/opt/qmail'\n" in (package / "config.py").read_text()
    # the systemd units, to copy into /etc/systemd/system: PREFIX in their paths
    units = stage / "opt" / "qmail" / "lib" / "qmail-esmtpd" / "systemd"
    assert sorted(p.name for p in units.iterdir()) == sorted(SYSTEMD_UNITS)
    for name in SYSTEMD_UNITS:
        text = (units / name).read_text()
        assert stat.S_IMODE((units / name).stat().st_mode) == 0o644
        assert text == (ROOT / "systemd" / name).read_text().replace("/var/qmail", "/opt/qmail")
    assert "/opt/qmail/bin/qmail-esmtpd-server " in (units / "qmail-esmtpd.service").read_text()
    # nothing outside PREFIX
    assert [p.relative_to(stage) for p in stage.iterdir()] == [Path("opt")]
    assert [p.name for p in (stage / "opt").iterdir()] == ["qmail"]
    # the run scripts, installed to copy into a supervise folder, name PREFIX
    service = stage / "opt" / "qmail" / "lib" / "qmail-esmtpd" / "service"
    for name in SERVICE_SCRIPTS:
        path = service / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        text = path.read_text()
        assert "/var/qmail" not in text and str(stage) not in text, name
        assert text == (ROOT / "service" / name).read_text().replace(
            "\nQMAIL=/var/qmail\n", "\nQMAIL=/opt/qmail\n"), name
        assert subprocess.run(["sh", "-n", str(path)], timeout=60).returncode == 0
    assert "\nQMAIL=/opt/qmail\n" in (service / "run").read_text()


SERVICE_SCRIPTS = ("run", "run-submission", "run-smtps", "run-server", "log/run")
SYSTEMD_UNITS = ("qmail-esmtpd.socket", "qmail-esmtpd.service")


@pytest.mark.parametrize("name", SERVICE_SCRIPTS)
def test_the_run_scripts_name_qmail_and_the_rules_once(name: str):
    """One QMAIL= line holds every qmail path, one RULES= line the tcprules file;
    the rest only says $QMAIL and $RULES."""
    text = (ROOT / "service" / name).read_text()
    assert subprocess.run(["sh", "-n", str(ROOT / "service" / name)], timeout=60).returncode == 0
    for line in text.splitlines():
        if line.startswith("QMAIL="):
            assert line == "QMAIL=/var/qmail"
        elif line.startswith("RULES="):
            assert line.startswith("RULES=/etc/tcp.") and line.endswith(".cdb")
        else:
            assert "/var/qmail" not in line and "/etc/tcp" not in line.split("#")[0], line
    if name != "log/run":
        program = "qmail-esmtpd-server" if name == "run-server" else "qmail-esmtpd"
        assert text.count("\nQMAIL=/var/qmail\n") == 1 and text.count("\nRULES=") == 1
        assert '-x "$RULES"' in text and f'"$QMAIL/bin/{program}"' in text


# Runs in a network namespace of its own, where port 25 is free and private: starts
# the command after ADDRESSES, says QUIT to each address once something listens
# there, prints {address: the replies, or what went wrong} as JSON.
SERVE_ONCE = r"""
import json, os, signal, socket, subprocess, sys, time
logpath, addresses, argv = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
with open(logpath, "wb") as log:
    service = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
said = {}
try:
    for address in addresses:
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline or service.poll() is not None:
                    client = None
                    break
                time.sleep(0.1)
        if client is None:
            said[address] = "nothing listens"
            continue
        with client:
            try:
                client.sendall(b"QUIT\r\n")
                replies = b""
                while chunk := client.recv(4096):
                    replies += chunk
                said[address] = replies.decode()
            except OSError as e:
                said[address] = f"no reply: {e}"
finally:
    os.killpg(service.pid, signal.SIGTERM)
    service.wait()
print(json.dumps(said))
"""
QUIT_REPLIES = "220 runscript.example.com ESMTP\r\n221 runscript.example.com\r\n"


def serve_once(argv: list, addresses: list, log: Path) -> dict:
    """`argv` in a network namespace of its own (loopback up, IPv6 sockets
    IPv6 only, as BindIPv6Only=ipv6-only makes systemd's); QUIT to each address."""
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         'ip link set lo up && sysctl -qw net.ipv6.bindv6only=1 && exec "$@"', "sh",
         sys.executable, "-c", SERVE_ONCE, str(log), ",".join(addresses), *map(str, argv)],
        capture_output=True, text=True, timeout=180)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise AssertionError(f"{out}\n{log.read_text(errors='replace')}") from None


@pytest.fixture
def served_prefix():
    """The installed PREFIX with control/me, and a rules file allowing all (the
    knob every run script and unit has for it), for a server started as printed."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("starts a server as root (sessions as qmaild or nobody) on port 25 "
                    "in a network namespace of its own")
    prefix = installed_prefix()
    rules = world_readable_dir("qmail-esmtpd-test-rules-")
    subprocess.run(["tcprules", str(rules / "tcp.smtp.cdb"), str(rules / "tcp.smtp.tmp")],
                   input=b":allow\n", check=True, timeout=60)
    (rules / "tcp.smtp.cdb").chmod(0o644)
    (prefix / "control").mkdir(exist_ok=True)
    (prefix / "control" / "me").write_text("runscript.example.com\n")
    yield prefix, rules / "tcp.smtp.cdb"
    shutil.rmtree(rules, ignore_errors=True)
    shutil.rmtree(prefix / "control", ignore_errors=True)


@pytest.mark.parametrize("name", ["run", "run-server"])
def test_the_installed_run_script_serves_from_prefix(served_prefix, tmp_path: Path, name: str):
    """service/run and service/run-server as make install PREFIX=... installs
    them, run as they are but for their RULES= line (the README's knob for
    another rules file): the greeting names PREFIX/control/me, so every qmail
    path in them followed PREFIX."""
    prefix, rules = served_prefix
    installed = (prefix / "lib" / "qmail-esmtpd" / "service" / name).read_text()
    assert f"\nQMAIL={prefix}\n" in installed and "/var/qmail" not in installed
    run = tmp_path / name
    run.write_text(as_printed(installed, rules))
    said = serve_once(["sh", run], ["127.0.0.1:25"], tmp_path / "log")
    assert said == {"127.0.0.1:25": QUIT_REPLIES}, (tmp_path / "log").read_text()


def unit_file(path: Path) -> dict:
    """A systemd unit's settings: {section: {key: [values]}}, continued lines joined."""
    sections: dict = {}
    current = None
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_installed_systemd_units_start_as_printed(served_prefix, tmp_path: Path):
    """systemd is not running here: the units pass `systemd-analyze verify`, and
    their ExecStart, with the socket unit's ListenStream sockets passed by
    systemd-socket-activate and the service's Limit* set by prlimit, serves
    on each of them."""
    for tool in ("systemd-socket-activate", "prlimit", "envuidgid"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    prefix, rules = served_prefix
    units = prefix / "lib" / "qmail-esmtpd" / "systemd"
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", *sorted(units.iterdir())],
                                  capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified
    socket_unit = unit_file(units / "qmail-esmtpd.socket")
    (tmp_path / "qmail-esmtpd.service").write_text(
        as_printed((units / "qmail-esmtpd.service").read_text(), rules))
    service = unit_file(tmp_path / "qmail-esmtpd.service")["Service"]
    listen = socket_unit["Socket"]["ListenStream"]
    assert listen == ["0.0.0.0:25", "[::]:25"] and socket_unit["Socket"]["Accept"] == ["no"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[2] == f"{prefix}/bin/qmail-esmtpd-server", argv
    limits = [f"--as={service['LimitAS'][0]}", f"--stack={service['LimitSTACK'][0]}"]
    command = ["prlimit", *limits, "systemd-socket-activate", *(f"-l{a}" for a in listen),
               *argv]
    said = serve_once(command, ["127.0.0.1:25", "[::1]:25"], tmp_path / "log")
    log = (tmp_path / "log").read_text(errors="replace")
    assert said["127.0.0.1:25"] == QUIT_REPLIES, (said, log)
    if said["[::1]:25"] != QUIT_REPLIES and "[-46" not in serveroptions_usage():
        pytest.xfail("this qmail-esmtpd-server serves only systemd's first socket, IPv4 "
                     "(issue 25, item 1, brings IPv6)")
    assert said["[::1]:25"] == QUIT_REPLIES, (said, log)


def serveroptions_usage() -> str:
    from qmail_esmtpd.serveroptions import USAGE

    return USAGE


def contents(top: Path) -> dict:
    """Every path under `top`: a folder, or a file's bytes and mode."""
    return {str(p.relative_to(top)): "folder" if p.is_dir() and not p.is_symlink()
            else (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode)) for p in top.rglob("*")}


def test_uninstall_leaves_prefix_as_it_was_but_the_control_files(checkout: Path, prefix: Path):
    """qmail's own programs, pages and control files stay; so does the authfailkey
    install made (the admin's data: a new key would forget the throttle's records)."""
    for path, text in (("bin/qmail-smtpd", "#!/bin/sh\n"), ("control/me", "x.example\n"),
                       ("control/rcpthosts", "x.example\n"), ("man/man8/qmail-smtpd.8", ".TH\n")):
        (prefix / path).parent.mkdir(parents=True, exist_ok=True)
        (prefix / path).write_text(text)
    before = contents(prefix)

    said = run_make("install", f"PREFIX={prefix}", f"WHEELS={wheel_folder()}", cwd=checkout,
                    env=UNREACHABLE_INDEX)
    assert f"manual pages in {prefix}/man" in said, said
    for name in ("man8/qmail-esmtpd.8", "man8/qmail-esmtpd-server.8", "man8/qmail-esmtpd-user.8",
                 "man8/qmail-esmtpd-checkpassword.8", "man5/qmail-esmtpd-control.5"):
        page = prefix / "man" / name
        assert page.read_bytes() == (ROOT / "man" / page.name).read_bytes()
        assert stat.S_IMODE(page.stat().st_mode) == 0o644
    manual = subprocess.run(["man", "-M", str(prefix / "man"), "-P", "cat", "qmail-esmtpd"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80"})
    assert manual.returncode == 0 and "qmail-esmtpd-control(5)" in manual.stdout, manual
    key = (prefix / "control" / "authfailkey").read_bytes()
    (prefix / "control" / "authfaillimit").write_text("5\n")  # the admin's, after install

    said = run_make("uninstall", f"PREFIX={prefix}", cwd=checkout)

    assert "the control files stay" in said, said
    after = contents(prefix)
    assert after.pop("control/authfailkey")[0] == key
    assert after.pop("control/authfaillimit")[0] == b"5\n"
    assert after == before


def test_uninstall_with_destdir_takes_away_what_install_staged(checkout: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    run_make("install", "PREFIX=/opt/qmail", f"DESTDIR={stage}", f"WHEELS={wheel_folder()}",
             cwd=checkout, env=UNREACHABLE_INDEX)
    assert (stage / "opt/qmail/man/man5/qmail-esmtpd-control.5").exists()
    run_make("uninstall", "PREFIX=/opt/qmail", f"DESTDIR={stage}", cwd=checkout)
    assert [p for p in stage.rglob("*") if not p.is_dir()] == []
    assert [p.name for p in (stage / "opt" / "qmail").iterdir()] == []


def test_make_cdb_compiles_the_rules_where_the_run_scripts_read_them(tmp_path: Path):
    """qmail's convention: /etc/tcp.smtp into /etc/tcp.smtp.cdb (SMTPRULES names
    the source here); the example only when there is no source yet, never over it."""
    source = tmp_path / "tcp.smtp"
    said = run_make("cdb", f"SMTPRULES={source}")
    assert "made from tcp.smtp.example" in said
    assert source.read_bytes() == (ROOT / "tcp.smtp.example").read_bytes()
    assert stat.S_IMODE((tmp_path / "tcp.smtp.cdb").stat().st_mode) == 0o644
    source.write_text('192.0.2.:allow,RELAYCLIENT=""\n:deny\n')  # the admin's edit
    assert "made from" not in run_make("cdb", f"SMTPRULES={source}")
    checked = subprocess.run(["tcprulescheck", str(tmp_path / "tcp.smtp.cdb")],
                             env={"PATH": os.environ["PATH"], "TCPREMOTEIP": "192.0.2.9"},
                             capture_output=True, text=True, timeout=60)
    assert checked.stdout == ("rule 192.0.2.:\nset environment variable RELAYCLIENT=\n"
                              "allow connection\n"), checked
    assert "tcp.smtp.cdb" in (ROOT / "service" / "run").read_text().split("RULES=/etc/")[1][:12]
    assert not (ROOT / "tcp.smtp.cdb").exists()


def test_the_log_script_makes_its_folder_for_the_log_user(tmp_path: Path):
    """service/log/run as supervise starts it (root): the folder made the first
    time, owned by the log user (qmaill; nobody where this host has none), and
    multilog writing into it; an existing folder is left as it is."""
    if os.geteuid() != 0 or not shutil.which("multilog"):
        pytest.skip("supervise runs log/run as root; multilog is daemontools'")
    user = "qmaill" if host_has("qmaill") else "nobody"
    logdir = world_readable_dir("qmail-esmtpd-test-log-") / "qmail" / "smtpd"
    text = (ROOT / "service" / "log" / "run").read_text()
    assert "\nLOGDIR=/var/log/qmail/smtpd\n" in text and "\nLOGUSER=qmaill\n" in text
    script = tmp_path / "run"
    script.write_text(text.replace("LOGDIR=/var/log/qmail/smtpd", f"LOGDIR={logdir}")
                      .replace("LOGUSER=qmaill", f"LOGUSER={user}"))
    try:
        for line in ("first\n", "second\n"):
            done = subprocess.run(["sh", str(script)], input=line, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done
            assert logdir.stat().st_uid == pwd.getpwnam(user).pw_uid
            assert stat.S_IMODE(logdir.stat().st_mode) == 0o755
        current = (logdir / "current").read_text()
        assert current.count(" first\n") == 1 and current.count(" second\n") == 1, current
    finally:
        shutil.rmtree(logdir.parent.parent, ignore_errors=True)
