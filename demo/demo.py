"""`make demo`: qmail-esmtpd under tcpserver on 127.0.0.1, with SMTP AUTH against a
throwaway PostgreSQL cluster, delivering into a Maildir under demo/run instead
of a real qmail queue.  Ctrl-C stops tcpserver and PostgreSQL and removes the
cluster: nothing it started is left running.

    DEMO_PORT   port to listen on (default 2525)
    DEMO_DIR    working folder: control/, tcp.smtp rules, Maildir/ (default demo/run)
    QMAILQUEUE  if already set, used as is; otherwise demo/maildir-queue is used,
                so the demo never injects into a real queue by accident.

127.0.0.1 may relay (RELAYCLIENT); 127.0.0.2 gets AUTH (AUTHDB names the
cluster), so a client there relays only after logging in.  The cluster is
made the way the tests make theirs (tests/harness/postgres.py Cluster, sql/schema.sql
and sql/grants.sql), and the demo user with qmail-esmtpd-user.
"""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.files import self_signed_pem  # noqa: E402
from tests.harness.postgres import Cluster  # noqa: E402
from tests.harness.processes import StartError, end_group  # noqa: E402

SERVER = REPO / ".venv" / "bin" / "qmail-esmtpd"
ADMIN = REPO / ".venv" / "bin" / "qmail-esmtpd-user"
DEMO_USER = "demo"
DEMO_LIMIT = 3  # recipients a day: the fourth message meets the limit


class DemoError(Exception):
    """Why the demo cannot start: one line, exit 1."""


def main() -> int:
    # Ctrl-C and `kill` stop it, even when started with SIGINT ignored (as `cmd &` does)
    signal.signal(signal.SIGINT, stop_on_signal)
    signal.signal(signal.SIGTERM, stop_on_signal)
    cluster = tcpserver = None
    try:
        port, folder = settings()
        subprocess.run(["sh", str(REPO / "tools" / "install-deps"), "demo"], check=True)
        control = prepare(folder)
        print("demo: starting a throwaway PostgreSQL cluster ...", flush=True)
        cluster = Cluster()
        db = cluster.new_database()
        password = secrets.token_hex(9)  # never a leading '-', which swaks would read as an option
        add_user(db.dsn(), password)
        db.close()
        rules(folder, db.dsn("qmaild"))
        env = environment(folder, control)
        banner(port, folder, control, db.dsn(), password, env)
        tcpserver = subprocess.Popen(
            # -R -H: no ident or DNS lookups, so connections start at once; -l names
            # this host in Received lines as control/me does.  -v logs to stderr.
            ["tcpserver", "-v", "-R", "-H", "-l", host(control), "-x",
             str(folder / "tcp.smtp.cdb"), "127.0.0.1", str(port), str(SERVER)],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        return tcpserver.wait()
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
        return 0
    except (DemoError, StartError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError:
        return 1  # install-deps said what is missing
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        if tcpserver is not None:
            end_group(tcpserver)
        if cluster is not None:
            try:
                cluster.destroy()
            except StartError as e:
                print(f"demo: stopping PostgreSQL: {e}", file=sys.stderr)


def stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def settings() -> tuple[int, Path]:
    text = os.environ.get("DEMO_PORT", "2525")
    if not text.isascii() or not text.isdigit():
        raise DemoError(f"DEMO_PORT must be a port number, not {text!r}")
    if not SERVER.exists():
        raise DemoError(f"{SERVER} is missing; run 'make venv' (or 'make demo') first")
    folder = Path(os.environ.get("DEMO_DIR", REPO / "demo" / "run")).resolve()
    return int(text), folder


def prepare(folder: Path) -> Path:
    """Control files are written only when missing, so edits survive a rerun."""
    control = folder / "control"
    for sub in ("control", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if not (control / "me").exists():
        (control / "me").write_text("demo.localhost\n")
    if not (control / "rcpthosts").exists():
        (control / "rcpthosts").write_text("demo.localhost\nlocalhost\n")
    cert = control / "servercert.pem"
    if not cert.exists():  # STARTTLS: delete it for a new one, or put your own there
        umask = os.umask(0o077)  # the key in it is readable by us only
        try:
            self_signed_pem(cert, host(control))
        except (OSError, subprocess.SubprocessError) as e:
            print(f"demo: no {cert} ({e}); going on without STARTTLS", file=sys.stderr)
        finally:
            os.umask(umask)
    return control


def host(control: Path) -> str:
    return (control / "me").read_text().split("\n", 1)[0].strip()


def add_user(dsn: str, password: str) -> None:
    """The demo user, made as an admin would: qmail-esmtpd-user, password on stdin."""
    out = subprocess.run([str(ADMIN), "--db", dsn, "add", DEMO_USER, "--limit", str(DEMO_LIMIT)],
                         input=password + "\n", capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise DemoError(f"qmail-esmtpd-user add: {out.stderr.strip()}")


def rules(folder: Path, authdb: str) -> None:
    """tcp.smtp is written at each start: AUTHDB names this run's cluster."""
    (folder / "tcp.smtp").write_text(
        "# 127.0.0.1 may relay; 127.0.0.2 relays after AUTH (the demo's cluster);\n"
        "# anyone else may only mail to rcpthosts.  Rewritten by each `make demo`.\n"
        '127.0.0.1:allow,RELAYCLIENT=""\n'
        f'127.0.0.2:allow,AUTHDB="{authdb}"\n'
        ":allow\n")
    subprocess.run(["tcprules", str(folder / "tcp.smtp.cdb"), str(folder / "tcp.smtp.tmp")],
                   stdin=(folder / "tcp.smtp").open(), check=True, timeout=60)


def environment(folder: Path, control: Path) -> dict:
    env = {**os.environ, "QMAIL_CONTROL": str(control)}
    if "QMAILQUEUE" not in env:
        env["QMAILQUEUE"] = str(REPO / "demo" / "maildir-queue")
        env["DEMO_MAILDIR"] = str(folder / "Maildir")
    return env


def banner(port: int, folder: Path, control: Path, dsn: str, password: str, env: dict) -> None:
    server = f"swaks --server 127.0.0.1:{port}"
    auth = (f"{server} --local-interface 127.0.0.2 --tls --auth PLAIN "
            f"--auth-user {DEMO_USER} --auth-password '{password}'")
    tls = (control / "servercert.pem").exists()
    if not tls:
        auth = auth.replace(" --tls", "")
    lines = [
        "",
        f"qmail-esmtpd demo: listening on 127.0.0.1:{port} (control files in {control})",
        "",
        "  send a message (127.0.0.1 may relay):",
        f"    {server} --from you@demo.localhost --to someone@example.org"
        " --header 'Subject: hello'",
        "  see relaying refused (127.0.0.2 is not a relay client, example.org is not in"
        " rcpthosts):",
        f"    {server} --local-interface 127.0.0.2 --to someone@example.org --quit-after RCPT",
        "",
        f"  SMTP AUTH from 127.0.0.2, user {DEMO_USER}, password {password}, "
        f"daily limit {DEMO_LIMIT} recipients" + (" (AUTH inside STARTTLS):" if tls else ":"),
        "    authenticate:",
        f"      {auth} --quit-after AUTH",
        "    authenticate and relay:",
        f"      {auth} --from {DEMO_USER}@demo.localhost --to someone@example.org"
        " --header 'Subject: sent with AUTH'",
        f"    hit the limit: {DEMO_LIMIT} recipients a day, so the day's message"
        f" {DEMO_LIMIT + 1} gets 451 at MAIL",
        f"    (after the message above, this loop's message {DEMO_LIMIT} and the next):",
        f"      for i in 1 2 3 4; do {auth} --from {DEMO_USER}@demo.localhost"
        " --to someone@example.org --header \"Subject: number $i\"; done",
        "    the account's count, and a fresh start:",
        f"      {ADMIN} --db '{dsn}' show {DEMO_USER}",
        f"      {ADMIN} --db '{dsn}' reset {DEMO_USER}",
        "",
    ]
    if tls:
        lines += ["  talk SMTP by hand inside TLS:",
                  f"    openssl s_client -starttls smtp -connect 127.0.0.1:{port} -crlf -quiet"]
    # telnet is not installed on a Debian host; swaks (which the demo needs) prints
    # every line of a dialogue it holds
    lines += ["  the dialogue in cleartext, up to the EHLO reply:",
              f"    {server} --quit-after EHLO", ""]
    if "DEMO_MAILDIR" in env:
        lines.append(f"  messages land in {folder / 'Maildir' / 'new'}/")
    else:
        lines.append(f"  messages go to {env['QMAILQUEUE']} (QMAILQUEUE was already set)")
    if env["QMAILQUEUE"] != "/var/qmail/bin/qmail-queue" and \
            os.access("/var/qmail/bin/qmail-queue", os.X_OK):
        lines += ["  (a real qmail is installed; the demo leaves its queue alone:",
                  "   QMAILQUEUE=/var/qmail/bin/qmail-queue make demo would use it)"]
    lines += ["  Ctrl-C stops the demo and its PostgreSQL.", ""]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
