#!/usr/bin/env python3
"""Record what real qmail does with a message to each address of layout.py.

Run as root on a throwaway machine where qmail (notqmail) is installed in
/var/qmail with its users and groups, and nothing else uses it:

    python3 tests/rcptcheck/record.py /var/tmp/rcptcheck-homes "notqmail a7012e4" \
        > tests/rcptcheck/verdicts-2.txt

(An /etc of its own keeps the accounts off the machine: `unshare -m`, then
`mount --bind` a copy of /etc over /etc, and do qmail's INSTALL.ids and
`make setup check` and this in there.)

It adds the system users of layout.USERS to /etc/passwd and /etc/group (homes
under the folder given; names useradd would refuse, 8-bit ones, too), writes
the layout into /var/qmail (control/locals, virtualdomains, percenthack,
envnoathost, me, users/assign, then qmail-newu), starts qmail-send with
./Mailbox as default delivery, hands one message per address to qmail-queue,
then again one per address of each layout.ALIAS_CONDITIONS while the alias
home is so, and reads qmail-send's log: each address is `delivered`
(success), `bounced` (failure, with qmail-local's words), `deferred` (with
why), or `remote` (qmail-send gave it to qmail-remote: not ours).  Only a
message's first delivery attempt counts.  Standard library only.
"""

import grp
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


FIRST_UID = 47001


def make_users(homes: Path) -> dict:
    """layout.USERS as real accounts (a group each); name -> (uid, gid, home)."""
    homes.mkdir(parents=True, exist_ok=True)
    homes.chmod(0o755)
    ids = {}
    uid = FIRST_UID
    for name in layout.USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            while _taken(uid):
                uid += 1
            line = f"{name}:x:{uid}:{uid}::{homes / name}:/usr/sbin/nologin\n"
            with open("/etc/passwd", "ab") as f:
                f.write(os.fsencode(line))
            with open("/etc/group", "ab") as f:
                f.write(os.fsencode(f"{name}:x:{uid}:\n"))
            entry = pwd.getpwnam(name)
        ids[name] = (entry.pw_uid, entry.pw_gid, entry.pw_dir)
    return ids


def _taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        try:
            grp.getgrgid(uid)
        except KeyError:
            return False
    return True


def inject(address: str) -> int:
    """One message from <> to `address` through qmail-queue; its pid (qmail's `qp`)."""
    envelope = b"F\0T" + os.fsencode(address) + b"\0\0"
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
    """qp -> (verdict, qmail's words) for every message whose first delivery ended.

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
            result.setdefault(qp, ("remote" if kind == "remote" else verdict, m[3]))
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
    sent = []  # (qp, address, condition)
    try:
        time.sleep(1)
        sent += [(inject(address), address, "") for address in layout.ADDRESSES]
        done = wait_for(logpath, sent)
        for condition, addresses in layout.ALIAS_CONDITIONS.items():
            with layout.alias_condition(condition, QMAIL / "alias"):
                batch = [(inject(address), address, condition) for address in addresses]
                done = wait_for(logpath, batch)
            sent += batch
    finally:
        os.killpg(send.pid, signal.SIGTERM)
        send.wait(timeout=30)
    built = sys.argv[2] if len(sys.argv) > 2 else "qmail"
    print(f"# what {built} did with one message to each address of layout.py (record.py)")
    print("# address (escaped)\tverdict\tqmail-send's log: the delivery's words"
          "\tlayout.ALIAS_CONDITIONS")
    for pid, address, condition in sent:
        verdict, words = done.get(str(pid), ("unfinished", ""))
        line = f"{layout.escaped(address)}\t{verdict}\t{words[:80]}"
        print(f"{line}\t{condition}" if condition else line)
    return 0


def wait_for(logpath: Path, sent: list) -> dict:
    """qmail-send's outcomes once every message of `sent` has one (or 120 s passed)."""
    deadline = time.monotonic() + 120
    while True:
        done = outcomes(logpath.read_text(errors="replace"))
        if all(str(pid) in done for pid, _, _ in sent) or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
