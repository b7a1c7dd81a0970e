#!/usr/bin/env python3
"""Record what real qmail does with a message to each address of layout.py.

Run as root on a throwaway machine where qmail (notqmail) is installed in
/var/qmail with its users and groups, and nothing else uses it:

    python3 tests/rcptcheck/record.py /var/tmp/rcptcheck-homes "notqmail a7012e4" \
        > tests/rcptcheck/verdicts.txt

It creates the system users of layout.USERS with useradd (homes under the
folder given), writes the layout into /var/qmail (control/locals,
virtualdomains, envnoathost, me, users/assign, then qmail-newu), starts
qmail-send with ./Mailbox as default delivery, hands one message per address
to qmail-queue, and reads qmail-send's log: each address is `delivered`
(success), `bounced` (failure, with qmail-local's words), `deferred`, or
`remote` (qmail-send gave it to qmail-remote: not ours).  Standard library only.
"""

import os
import pwd
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layout  # noqa: E402

QMAIL = Path("/var/qmail")
MESSAGE = b"From: recorder@example.com\nSubject: rcptcheck\n\nIs there a mailbox?\n"


def make_users(homes: Path) -> dict:
    """layout.USERS as real accounts; name -> (uid, gid, home)."""
    homes.mkdir(parents=True, exist_ok=True)
    homes.chmod(0o755)
    ids = {}
    for name in layout.USERS:
        home = homes / name
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-U", "-d", str(home), "-s", "/usr/sbin/nologin",
                            name], check=True)
        entry = pwd.getpwnam(name)
        ids[name] = (entry.pw_uid, entry.pw_gid, entry.pw_dir)
    return ids


def inject(address: str) -> int:
    """One message from <> to `address` through qmail-queue; its pid (qmail's `qp`)."""
    envelope = b"F\0T" + address.encode() + b"\0\0"
    read_env, write_env = os.pipe()
    os.write(write_env, envelope)
    os.close(write_env)
    proc = subprocess.Popen([str(QMAIL / "bin" / "qmail-queue")], stdin=subprocess.PIPE,
                            stdout=read_env)
    os.close(read_env)
    proc.communicate(MESSAGE, timeout=30)
    if proc.returncode != 0:
        raise SystemExit(f"qmail-queue exited {proc.returncode} for {address}")
    return proc.pid


def outcomes(log: str) -> dict:
    """qp -> (verdict, qmail's words) for every message whose delivery ended.

    Read in order: qmail's message numbers are inode numbers, reused as soon
    as a message ends (the bounces take them)."""
    qp_of_msg, delivery_of = {}, {}
    result = {}
    for line in log.splitlines():
        if m := re.match(r"info msg (\d+): .* qp (\d+) ", line):
            qp_of_msg[m[1]] = m[2]
        elif m := re.match(r"starting delivery (\d+): msg (\d+) to (\w+) ", line):
            delivery_of[m[1]] = (qp_of_msg.get(m[2]), m[3])
        elif m := re.match(r"delivery (\d+): (success|failure|deferral): ?(.*)", line):
            qp, kind = delivery_of.pop(m[1], (None, None))
            if qp is None:
                continue
            verdict = {"success": "delivered", "failure": "bounced",
                       "deferral": "deferred"}[m[2]]
            result[qp] = ("remote" if kind == "remote" else verdict, m[3])
    return result


def main() -> int:
    homes = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/rcptcheck-homes")
    ids = make_users(homes)
    layout.build(QMAIL, QMAIL / "alias", ids)
    subprocess.run([str(QMAIL / "bin" / "qmail-newu")], check=True)
    logpath = Path("/var/tmp/rcptcheck-qmail-send.log")
    logpath.write_text("")
    qmaill = pwd.getpwnam("qmaill")  # qmail-start runs the logger as qmaill
    os.chown(logpath, qmaill.pw_uid, qmaill.pw_gid)
    send = subprocess.Popen(
        [str(QMAIL / "bin" / "qmail-start"), "./Mailbox",
         "/bin/sh", "-c", f"exec cat >> {logpath}"],
        env={"PATH": "/var/qmail/bin:/usr/bin:/bin"}, stdout=subprocess.DEVNULL,
        start_new_session=True)
    try:
        time.sleep(1)
        pids = {inject(address): address for address in layout.ADDRESSES}
        deadline = time.monotonic() + 120
        while True:
            done = outcomes(logpath.read_text(errors="replace"))
            if all(str(pid) in done for pid in pids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        os.killpg(send.pid, signal.SIGTERM)
        send.wait(timeout=30)
    built = sys.argv[2] if len(sys.argv) > 2 else "qmail"
    print(f"# what {built} did with one message to each address of layout.py (record.py)")
    print("# address\tverdict\tqmail-send's log: the delivery's words")
    for pid, address in pids.items():
        verdict, words = done.get(str(pid), ("unfinished", ""))
        print(f"{address}\t{verdict}\t{words[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
