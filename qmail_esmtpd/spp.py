"""qmail-spp plugins: programs an admin lists in control/smtpplugins, run at
connect, HELO, MAIL, RCPT, DATA and AUTH, whose output says what to do.

The interface is Pawel Foremski's qmail-spp patch's, so existing plugins run
unchanged: sections `[connection]`, `[helo]`, `[mail]`, `[rcpt]`, `[data]`,
`[auth]` (the first letter counts); a line starting with `:` runs through
`/bin/sh -c`; `NOSPP` turns them off, `SPPCONFFILE` names another file.  A
plugin reads the SMTP* environment variables and prints commands, one a line:

    A  accept: no more plugins this session     N  next: no more plugins for this command
    O  ok: no more plugins, and skip qmail's own checks of this MAIL/RCPT
    Emsg  refuse this command with msg          Rmsg  say msg and drop the connection
    D  drop the connection                      Pmsg  send msg before the reply
    Svar=value, Uvar  set, unset a variable (for later plugins and qmail-queue)
    Hline  add a header line                    Caddr  change the MAIL/RCPT address
    LMmsg, LRmsg, LDmsg  refuse the next MAIL/RCPT/DATA with msg

Better than the patch: each run is bounded in time (`spptimeout`, a hung
plugin gets `451 qmail-spp failure`), its output in size, and its stdin is
closed.  Its stderr is ours: the log.  The runner is an adapter: the core
only sees checks (`check(session, value)`).
"""

import posix
import select
import time

from . import replies
from .log import printable
from .protocol import (
    ACCEPT_NOW,
    AT_AUTH,
    AT_CONNECT,
    AT_DATA,
    AT_HELO,
    AT_MAIL,
    AT_RCPT,
    BUFFER,
    QUIT,
)
from .queue import spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .protocol import Check, Checks, Session, Verdict  # noqa: F401

SECTIONS = {ord("c"): AT_CONNECT, ord("h"): AT_HELO, ord("m"): AT_MAIL, ord("r"): AT_RCPT,
            ord("d"): AT_DATA, ord("a"): AT_AUTH}
LATER = {ord("M"): AT_MAIL, ord("R"): AT_RCPT, ord("D"): AT_DATA}
DEFAULT_TIMEOUT = 30  # seconds for one plugin run
OUTPUT_MAX = 65536  # bytes of output read from one plugin run
CANNOT_EXECUTE = 120  # the exit status qmail-spp reads as "can't execute"
STOPS = b"ANODER"  # commands after which a plugin's output is not read further


def parse_config(lines: "list[bytes]") -> "dict[int, list[bytes]]":
    """Section -> plugin lines, in order; lines before any known section count for none."""
    sections: dict[int, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in lines:
        if line.startswith(b"["):
            stage = SECTIONS.get(line[1]) if len(line) > 1 else None
            current = None if stage is None else sections.setdefault(stage, [])
        elif current is not None:
            current.append(line)
    return sections


class Plugins:
    """The configured plugins and the variables they share over one session."""

    def __init__(self, sections: "dict[int, list[bytes]]", env: "Mapping[bytes, bytes]",
                 timeout: int = DEFAULT_TIMEOUT) -> None:
        self.sections = sections
        self.env = dict(env)  # S and U change it; qmail-queue gets it too (changes())
        self.changed: dict[bytes, bytes | None] = {}
        self.timeout = timeout
        self.on = True  # `A` turns the plugins off for the rest of the session

    def checks(self) -> "Checks":
        """One check per stage that has plugins, for protocol.with_checks(plugins=...)."""
        stages = {*self.sections, AT_HELO, AT_MAIL, AT_RCPT, AT_AUTH}  # these set variables
        return {stage: (self._check_for(stage),) for stage in stages}

    def changes(self) -> "dict[bytes, bytes | None]":
        """The variables plugins set (value) or unset (None), for qmail-queue."""
        return self.changed

    def _check_for(self, stage: int) -> "Check":
        def check(session: "Session", value: bytes) -> "Verdict | None":
            return self.run_stage(session, stage, value)
        return check

    # -- one stage ---------------------------------------------------------
    def run_stage(self, session: "Session", stage: int, value: bytes) -> "Verdict | None":
        if not self.on:
            return None
        env = self.env
        if stage == AT_HELO:
            env[b"SMTPHELOHOST"] = value
        elif stage == AT_MAIL:
            env[b"SMTPMAILFROM"] = value
        elif stage == AT_RCPT:
            env[b"SMTPRCPTTO"] = value
            env[b"SMTPRCPTCOUNT"] = b"%d" % len(session.recipients)
            env[b"SMTPRCPTCOUNTALL"] = b"%d" % session.rcpt_asked
            allowed = session.relayclient is not None or session.rcpt_allowed(value)
            env[b"SMTPRCPTHOSTSOK"] = b"1" if allowed else b"0"
        elif stage == AT_AUTH:
            env[b"SMTPAUTHUSER"] = value
        for plugin in self.sections.get(stage, ()):
            last, verdict = self._run_one(session, stage, plugin)
            if last:
                return verdict
        return None

    def _run_one(self, session: "Session", stage: int,
                 plugin: bytes) -> "tuple[bool, Verdict | None]":
        """One plugin: (whether it was the last to ask, its verdict)."""
        output, failure = self._execute(plugin)
        if failure is not None:
            session.note(f"spp plugin {printable(plugin, 200)} failed: {failure}")
            return True, (replies.spp_failure(plugin, failure), BUFFER)
        printed = []
        for line in output.split(b"\n"):
            line = line.partition(b"\0")[0]  # where the patch's C string ends
            if not line:
                continue
            command, text = line[0], line[1:]
            if command == 0x48:  # H
                session.headers += text + b"\n"
            elif command == 0x43:  # C
                if stage == AT_MAIL:
                    session.sender = text
                    self.env[b"SMTPMAILFROM"] = text
                elif stage == AT_RCPT:
                    session.recipient = text
                    self.env[b"SMTPRCPTTO"] = text
            elif command == 0x53:  # S
                name, _, val = text.partition(b"=")
                if name:
                    self.env[name] = val
                    self.changed[name] = val
            elif command == 0x55:  # U
                self.env.pop(text, None)
                self.changed[text] = None
            elif command == 0x50:  # P
                printed.append(text + replies.CRLF)
            elif command == 0x4C:  # L
                later = LATER.get(text[0]) if text else None
                if later is not None:
                    session.later[later] = session.later.get(later, b"") + text[1:] + replies.CRLF
            elif command in STOPS:
                preface = b"".join(printed)
                if command == 0x45:  # E
                    return True, (preface + text + replies.CRLF, BUFFER)
                if command == 0x52:  # R: the patch exits 0, as after QUIT
                    return True, (preface + text + replies.CRLF, QUIT)
                if command == 0x44:  # D
                    return True, (preface, QUIT)
                session.preface += preface
                if command == 0x41:  # A
                    self.on = False
                return True, ACCEPT_NOW if command == 0x4F else None
        session.preface += b"".join(printed)
        return False, None

    # -- running a program -------------------------------------------------
    def _execute(self, plugin: bytes) -> "tuple[bytes, str | None]":
        """Its output up to the first stopping command, or why it could not run."""
        if plugin.startswith(b":"):
            argv = [b"/bin/sh", b"-c", plugin[1:]]
        else:
            argv = [plugin]
        read_end, write_end = posix.pipe()
        try:
            pid = spawn(argv[0], argv, self.env, file_actions=[
                (posix.POSIX_SPAWN_CLOSE, 0),
                (posix.POSIX_SPAWN_DUP2, write_end, 1),
            ])
        except OSError:
            posix.close(read_end)
            return b"", "can't execute"
        finally:
            posix.close(write_end)
        deadline = time.monotonic() + self.timeout
        try:
            output, failure = _read_output(read_end, deadline)
        finally:
            posix.close(read_end)
        status = _wait(pid, deadline)
        if failure is None:
            if status is None:
                failure = "timed out"
            elif posix.WIFSIGNALED(status):
                failure = "child crashed"
            elif posix.WEXITSTATUS(status) == CANNOT_EXECUTE:
                failure = "can't execute"
        return output, failure


def _read_output(fd: int, deadline: float) -> "tuple[bytes, str | None]":
    """Everything up to EOF, bounded in time and size; what follows the first
    stopping command is read but not kept (the plugin may still be writing,
    and must not die of SIGPIPE for it)."""
    data = b""
    size = 0
    stop = -1
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return (data, None) if stop >= 0 else (data, "timed out")
        chunk = posix.read(fd, 4096)
        if not chunk:
            return data, None
        size += len(chunk)
        if stop < 0:
            data += chunk
            stop = _stop_at(data)
            if stop >= 0:
                data = data[:stop]
        if size > OUTPUT_MAX:
            return (data, None) if stop >= 0 else (data, "too much output")


def _stop_at(data: bytes) -> int:
    """The end of the first complete line starting with A/N/O/D/E/R, or -1."""
    start = 0
    while True:
        nl = data.find(b"\n", start)
        if nl < 0:
            return -1
        if nl > start and data[start] in STOPS:
            return nl + 1
        start = nl + 1


def _wait(pid: int, deadline: float) -> int | None:
    """The plugin's wait status; killed (None) if it outlives its deadline."""
    while True:
        done, status = posix.waitpid(pid, posix.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            try:
                posix.kill(pid, 9)
            except OSError:
                pass
            posix.waitpid(pid, 0)
            return None
        time.sleep(0.002)


def open_plugins(controls_dir: bytes, env: "Mapping[bytes, bytes]",
                 timeout: int) -> "Plugins | None":
    """The plugins of $SPPCONFFILE or control/smtpplugins; None when there are none.

    A relative $SPPCONFFILE is taken from the qmail home, as the patch (whose
    qmail-smtpd runs there) does.  A file that exists but cannot be read
    raises ControlError (421, as the patch's die_control); a missing one
    means no plugins (the patch would refuse every connection)."""
    from .config import Controls

    path = env.get(b"SPPCONFFILE") or controls_dir + b"/smtpplugins"
    if not path.startswith(b"/"):
        path = controls_dir.rpartition(b"/")[0] + b"/" + path
    directory, _, name = path.rpartition(b"/")
    lines = Controls(directory).lines(name)
    if not lines:
        return None
    sections = parse_config(lines)
    return Plugins(sections, env, timeout) if sections else None
