"""qmail-spp plugins (control/smtpplugins): programs run at connect, HELO,
MAIL, RCPT, DATA and AUTH whose output says what to do, with the interface
of Pawel Foremski's qmail-spp patch (the README lists its commands).

Each run is bounded in time (`spptimeout`) and in output, and ends with
everything it started (its process group); its stdin is closed and its
stderr is our log.
"""

import _signal  # the C module behind `signal`, already loaded
import posix
import select
import time

from . import replies
from .check_rcpthosts import RcptHosts
from .config import Controls, clamp_seconds, number_setting
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
    from collections.abc import Callable, Mapping

    from .config import Settings
    from .protocol import Session, Verdict

    Variables = dict[bytes, bytes]

# a section of the file by its first letter, as the patch reads `[rcpt]`
SECTIONS = {ord("c"): AT_CONNECT, ord("h"): AT_HELO, ord("m"): AT_MAIL, ord("r"): AT_RCPT,
            ord("d"): AT_DATA, ord("a"): AT_AUTH}
LATER = {ord("M"): AT_MAIL, ord("R"): AT_RCPT, ord("D"): AT_DATA}  # `L` + letter
DEFAULT_TIMEOUT = 30  # seconds for one plugin run
OUTPUT_MAX = 65536  # bytes of output read from one plugin run
CANNOT_EXECUTE = 120  # the exit status qmail-spp reads as "can't execute"
STOPS = b"ANODER"  # commands after which a plugin's output is not read further
POLL_SECONDS = 0.01  # how often to look for the plugin's exit where no pidfd says it
# In a plugin's `H` line every control character but tab becomes `?`, as in
# qmail's Received line: CR ends a line for most readers of the queued
# message, VT, FF and FS..RS for Python's str.splitlines(), none belongs there.
HEADER_CONTROLS = bytes(c for c in range(32) if c != 0x09)
HEADER_SAFE = bytes.maketrans(HEADER_CONTROLS, b"?" * len(HEADER_CONTROLS))


def _stage(stage: str) -> "Callable[[Plugins, Session, bytes], Verdict | None]":
    def run(plugins: "Plugins", session: "Session", value: bytes) -> "Verdict | None":
        return plugins.run_stage(session, stage, value)
    return run


class Plugins:
    """The configured plugins and the variables they share over one session."""

    def __init__(self, sections: "dict[str, list[bytes]]", env: "Mapping[bytes, bytes]",
                 timeout: int = DEFAULT_TIMEOUT,
                 rcpthosts: "Callable[[bytes], bool | None]" = lambda address: True) -> None:
        self.sections = sections
        self.env = dict(env)  # S and U change it, and qmail-queue's (queue_environment())
        self.changed: dict[bytes, bytes | None] = {}
        self.timeout = timeout
        self.rcpthosts = rcpthosts
        self.on = True  # `A` turns the plugins off for the rest of the session

    def queue_environment(self) -> "dict[bytes, bytes | None]":
        """The variables plugins set (value) or unset (None)."""
        return self.changed

    def environment(self, session: "Session") -> "Mapping[bytes, bytes]":
        """What the next plugin sees: after AUTH also RELAYCLIENT and
        TCPREMOTEINFO, as the AUTH patch puts them in qmail-smtpd's environment
        (a plugin's own S or U of them still wins, as for qmail-queue)."""
        authenticated = session.child_environment()
        if not authenticated:
            return self.env
        return {**self.env, **{name: value for name, value in authenticated.items()
                               if name not in self.changed}}

    # each section's stage runs its plugins (STAGE_VARIABLES: what each tells them)
    on_connect = _stage(AT_CONNECT)
    on_helo = _stage(AT_HELO)
    on_mail = _stage(AT_MAIL)
    on_rcpt = _stage(AT_RCPT)
    on_data = _stage(AT_DATA)
    on_auth = _stage(AT_AUTH)

    def run_stage(self, session: "Session", stage: str, value: bytes) -> "Verdict | None":
        """The stage's variables set, then its plugins in order until one has
        the last word."""
        if not self.on:
            return None
        variables = STAGE_VARIABLES.get(stage)
        if variables is not None:
            self.env.update(variables(self, session, value))
        for plugin in self.sections.get(stage, ()):
            run = Run(self, session, stage)
            verdict = run.execute(plugin)
            if run.last_word:
                return verdict
        return None


def _rcpt_variables(plugins: Plugins, session: "Session", recipient: bytes) -> "Variables":
    ours = session.relayclient is not None or plugins.rcpthosts(recipient)
    return {b"SMTPRCPTTO": recipient,
            b"SMTPRCPTCOUNT": b"%d" % len(session.recipients),
            b"SMTPRCPTCOUNTALL": b"%d" % session.rcpt_asked,
            b"SMTPRCPTHOSTSOK": b"1" if ours else b"0"}


# what the patch tells the plugins of each stage, in their environment
STAGE_VARIABLES: "dict[str, Callable[[Plugins, Session, bytes], Variables]]" = {
    AT_HELO: lambda plugins, session, helo: {b"SMTPHELOHOST": helo},
    AT_MAIL: lambda plugins, session, sender: {b"SMTPMAILFROM": sender},
    AT_RCPT: _rcpt_variables,
    AT_AUTH: lambda plugins, session, user: {b"SMTPAUTHUSER": user},
}


class Run:
    """One plugin's run at one stage: its output read one command a line."""

    def __init__(self, plugins: Plugins, session: "Session", stage: str) -> None:
        self.plugins = plugins
        self.session = session
        self.stage = stage
        self.plugin = b""  # the configuration line of the plugin being run
        self.printed: list[bytes] = []  # `P` lines, sent before the reply
        self.last_word = False  # this plugin decided: no more plugins for the command

    def execute(self, plugin: bytes) -> "Verdict | None":
        self.plugin = plugin
        output, failure = run_program(plugin, self.plugins.environment(self.session),
                                      self.plugins.timeout)
        if failure is not None:
            self.session.note(f"spp plugin {printable(plugin, 200)} failed: {failure}")
            self.last_word = True
            return replies.spp_failure(plugin, failure), BUFFER
        for line in output.split(b"\n"):
            line = line.partition(b"\0")[0]  # where the patch's C string ends
            if not line:
                continue
            command = COMMANDS.get(line[0])
            if command is None:
                continue
            verdict = command(self, line[1:])
            if self.last_word:
                return verdict
        self.session.preface += b"".join(self.printed)
        return None

    def _printed(self) -> bytes:
        return b"".join(self.printed)

    # -- the commands a plugin prints, by their letter (COMMANDS) -----------
    def add_header(self, text: bytes) -> None:
        """Never a CR into the queue: a plugin's header carries client text
        ($SMTPHELOHOST), which could otherwise add a header line of its own."""
        safe = text.translate(HEADER_SAFE)
        if safe != text:
            self.session.note(f"spp plugin {printable(self.plugin, 200)} header with control "
                              f"characters, queued with ? for them: {printable(text, 200)}")
        self.session.headers += safe + b"\n"

    def change_address(self, text: bytes) -> None:
        if self.stage == AT_MAIL:
            self.session.sender = text
            self.plugins.env[b"SMTPMAILFROM"] = text
        elif self.stage == AT_RCPT:
            self.session.recipient = text
            self.plugins.env[b"SMTPRCPTTO"] = text

    def set_variable(self, text: bytes) -> None:
        name, _, value = text.partition(b"=")
        if name:
            self.plugins.env[name] = value
            self.plugins.changed[name] = value

    def unset_variable(self, text: bytes) -> None:
        self.plugins.env.pop(text, None)
        self.plugins.changed[text] = None

    def print_first(self, text: bytes) -> None:
        self.printed.append(text + replies.CRLF)

    def refuse_later(self, text: bytes) -> None:
        stage = LATER.get(text[0]) if text else None
        if stage is not None:
            later = self.session.later
            later[stage] = later.get(stage, b"") + text[1:] + replies.CRLF

    def refuse(self, text: bytes) -> "Verdict":
        self.last_word = True
        return self._printed() + text + replies.CRLF, BUFFER

    def refuse_and_hang_up(self, text: bytes) -> "Verdict":
        self.last_word = True  # the patch exits 0, as after QUIT
        return self._printed() + text + replies.CRLF, QUIT

    def hang_up(self, text: bytes) -> "Verdict":
        self.last_word = True
        return self._printed(), QUIT

    def next_command(self, text: bytes) -> None:
        self.last_word = True
        self.session.preface += self._printed()

    def accept_session(self, text: bytes) -> None:
        self.next_command(text)
        self.plugins.on = False

    def accept_command(self, text: bytes) -> "Verdict":
        self.next_command(text)
        return ACCEPT_NOW


# qmail-spp's commands by their first letter; the last six (STOPS) end the run
COMMANDS: "dict[int, Callable[[Run, bytes], Verdict | None]]" = {
    ord("H"): Run.add_header,
    ord("C"): Run.change_address,
    ord("S"): Run.set_variable,
    ord("U"): Run.unset_variable,
    ord("P"): Run.print_first,
    ord("L"): Run.refuse_later,
    ord("E"): Run.refuse,
    ord("R"): Run.refuse_and_hang_up,
    ord("D"): Run.hang_up,
    ord("N"): Run.next_command,
    ord("A"): Run.accept_session,
    ord("O"): Run.accept_command,
}


# -- running a program ---------------------------------------------------------
def run_program(plugin: bytes, env: "Mapping[bytes, bytes]",
                timeout: int) -> "tuple[bytes, str | None]":
    """Its output up to the first stopping command, or why it could not run.

    The plugin leads a process group of its own, and the whole group is
    killed once the plugin has exited (or at the timeout): what it left
    running without detaching (setsid) ends with it, and a background child
    that still holds the pipe does not hold the session."""
    if plugin.startswith(b":"):
        argv = [b"/bin/sh", b"-c", plugin[1:]]
    else:
        argv = [plugin]
    read_end, write_end = posix.pipe()
    try:
        pid = spawn(argv[0], argv, env, own_group=True, file_actions=[
            (posix.POSIX_SPAWN_CLOSE, 0),
            (posix.POSIX_SPAWN_DUP2, write_end, 1),
        ])
    except OSError:
        posix.close(read_end)
        return b"", "can't execute"
    finally:
        posix.close(write_end)
    output = Output()
    try:
        exited = _collect(pid, read_end, output, time.monotonic() + timeout)
    finally:
        posix.close(read_end)
        try:  # still unreaped, the plugin keeps its pid: the group is ours to end
            posix.killpg(pid, _signal.SIGKILL)
        except OSError:
            pass
        _, status = posix.waitpid(pid, 0)
    if output.size > OUTPUT_MAX:
        return output.data, "too much output"
    if not exited:
        return output.data, "timed out"
    if posix.WIFSIGNALED(status):
        return output.data, "child crashed"
    if posix.WEXITSTATUS(status) == CANNOT_EXECUTE:
        return output.data, "can't execute"
    return output.data, None


class Output:
    """What a plugin wrote: kept up to its first stopping command; what follows
    is read but not kept (the plugin may still be writing, and must not die of
    SIGPIPE for it)."""

    def __init__(self) -> None:
        self.data = b""
        self.size = 0
        self.stopped = False

    def add(self, chunk: bytes) -> bool:
        """Take a chunk; False once the output passed OUTPUT_MAX."""
        self.size += len(chunk)
        if not self.stopped:
            self.data += chunk
            stop = _stop_at(self.data)
            if stop >= 0:
                self.data = self.data[:stop]
                self.stopped = True
        return self.size <= OUTPUT_MAX

    def drain(self, fd: int) -> None:
        """Take what is in the pipe now, without waiting for the rest."""
        posix.set_blocking(fd, False)
        try:
            while (chunk := posix.read(fd, 4096)) and self.add(chunk):
                pass
        except BlockingIOError:
            pass


def _collect(pid: int, fd: int, output: Output, deadline: float) -> bool:
    """Read the plugin's output until it exits (True: what it wrote is all
    taken), or until the deadline or OUTPUT_MAX (False)."""
    watch = _exit_watch(pid)
    waiting = [fd] if watch < 0 else [fd, watch]
    try:
        while True:
            if _has_exited(pid):
                output.drain(fd)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = select.select(waiting, [], [], left if watch >= 0
                                  else min(left, POLL_SECONDS))[0]
            if fd in ready:
                chunk = posix.read(fd, 4096)
                if not chunk:
                    waiting.remove(fd)  # the plugin closed it: its exit is all we wait for
                elif not output.add(chunk):
                    return False
    finally:
        if watch >= 0:
            posix.close(watch)


def _exit_watch(pid: int) -> int:
    """A descriptor that becomes readable when the plugin exits (Linux's
    pidfd), or -1 where there is none: then we look every POLL_SECONDS."""
    try:
        return posix.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _has_exited(pid: int) -> bool:
    """The plugin has exited; it stays unreaped (WNOWAIT), so its pid still
    names its process group."""
    return posix.waitid(posix.P_PID, pid,
                        posix.WEXITED | posix.WNOHANG | posix.WNOWAIT) is not None


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


# -- the configuration ---------------------------------------------------------
def parse_config(lines: "list[bytes]") -> "dict[str, list[bytes]]":
    """Section -> plugin lines, in order; lines before any known section count for none."""
    sections: dict[str, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in lines:
        if line.startswith(b"["):
            stage = SECTIONS.get(line[1]) if len(line) > 1 else None
            current = None if stage is None else sections.setdefault(stage, [])
        elif current is not None:
            current.append(line)
    return sections


def build(settings: "Settings") -> "Plugins | None":
    """The plugins of the file Settings found; None when it lists none.

    A file that exists but cannot be read raises ControlError (421, as the
    patch's die_control); a missing one means no plugins (the patch would
    refuse every connection)."""
    assert settings.smtpplugins is not None
    directory, _, name = settings.smtpplugins.rpartition(b"/")
    lines = Controls(directory).lines(name)
    sections = parse_config(lines) if lines else None
    if not sections:
        return None
    timeout = clamp_seconds(number_setting(settings.controls, settings.env, b"spptimeout",
                                           DEFAULT_TIMEOUT))
    return Plugins(sections, settings.env, timeout,
                   RcptHosts(settings.rcpthosts, settings.morercpthosts))
