#!/usr/bin/env python3
"""Conformance runner: play scenario files against an SMTP server that talks on
stdin/stdout (qmail-smtpd style) and print, write or check normalised transcripts.

usage: dialog.py [--check DIR] [--out DIR] [--timeout S] [--keep] [--stderr]
                 [--control-dir DIR] SCENARIO-or-DIR... -- SERVER-COMMAND [ARG...]

The scenario and transcript formats are described in README.md beside this file.
Only the standard library is used, so the runner works before any virtualenv exists
and can drive any implementation, including the C original.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_QUEUE = HERE / "fake-qmail-queue"
FAKE_CHECKPASSWORD = HERE / "fake-checkpassword"

# What tcpserver would have set for a connection from a client to the MX.
CONNECTION_ENV = {
    "PROTO": "TCP",
    "TCPLOCALIP": "192.0.2.25",
    "TCPLOCALPORT": "25",
    "TCPLOCALHOST": "mx.example.com",
    "TCPREMOTEIP": "198.51.100.7",
    "TCPREMOTEPORT": "49152",
    "TCPREMOTEHOST": "client.example.net",
}

# Control files every scenario gets unless it overrides or removes them.
DEFAULT_CONTROL = {
    "me": b"mx.example.com\n",
    "rcpthosts": b"example.com\n",
}

# A repeated run of at least this many identical bytes is shown as \{N:c}.
RUN_LENGTH = 16
# Seconds of slack around the run when deciding whether a time stamp is current.
CLOCK_SLACK = 2


class ScenarioError(Exception):
    """A scenario that cannot be run as written (or a server that cannot be started)."""


# ------------------------------------------------------------------ escapes

SIMPLE_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
HEX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
REPEAT_ESCAPE = re.compile(r"\\\{([0-9]+):([^}]*)\}")
SHOWN_AS = {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x00: "\\0"}


def unescape(text: str, where: str = "") -> bytes:
    """Scenario text -> the exact bytes meant.

    Scenarios must be able to name any byte (NUL, bare CR, 8-bit) and to send
    very long lines without being huge themselves, hence \\r \\n \\t \\0 \\\\ \\xHH and
    \\{N:TEXT}.  Everything else is taken as UTF-8.
    """
    out = bytearray()
    pos = 0
    while pos < len(text):
        slash = text.find("\\", pos)
        if slash == -1:
            out += text[pos:].encode("utf-8")
            break
        out += text[pos:slash].encode("utf-8")
        decoded, pos = _escape_at(text, slash, where)
        out += decoded
    return bytes(out)


def _escape_at(text: str, at: int, where: str) -> tuple[bytes, int]:
    """Decode the escape whose backslash is text[at]: (bytes, index just after it)."""
    code = text[at + 1:at + 2]
    if code in SIMPLE_ESCAPES:
        return SIMPLE_ESCAPES[code], at + 2
    if code == "x":
        match = HEX_ESCAPE.match(text, at)
        if not match:
            raise ScenarioError(f"{where}: \\x needs two hex digits")
        return bytes([int(match.group(1), 16)]), match.end()
    if code == "{":
        match = REPEAT_ESCAPE.match(text, at)
        if not match:
            raise ScenarioError(f"{where}: malformed \\{{N:TEXT}} (a literal }} is \\x7d)")
        return unescape(match.group(2), where) * int(match.group(1)), match.end()
    if not code:
        raise ScenarioError(f"{where}: backslash at the end of the text")
    raise ScenarioError(f"{where}: unknown escape \\{code}")


def show_byte(byte: int) -> str:
    """One byte as transcript text: printable ASCII as itself, the rest escaped."""
    if byte in SHOWN_AS:
        return SHOWN_AS[byte]
    if 0x20 <= byte <= 0x7E:
        return chr(byte)
    return f"\\x{byte:02x}"


def show(data: bytes) -> str:
    """Bytes -> one line of printable ASCII in the scenario escapes.

    Transcripts must be plain text that diffs well: long runs collapse to
    \\{N:c}, and a trailing blank is written \\x20 so it cannot get lost.
    """
    parts = []
    for match in re.finditer(rb"(.)\1*", data, re.DOTALL):
        run = match.group()
        char = show_byte(run[0])
        if len(run) >= RUN_LENGTH:
            char = char.replace("}", "\\x7d")  # the brace would end the escape
            parts.append(f"\\{{{len(run)}:{char}}}")
        else:
            parts.append(char * len(run))
    text = "".join(parts)
    if text.endswith(" "):
        text = text[:-1] + "\\x20"
    return text


def split_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    """Cut data after each LF into (content, ending) pairs.

    The ending is b"\\r\\n", a bare b"\\n", or b"" for a last piece with no LF;
    the transcript shows which, because qmail-smtpd treats them differently.
    """
    pieces = []
    for match in re.finditer(rb"[^\n]*\n|[^\n]+", data):
        piece = match.group()
        if piece.endswith(b"\r\n"):
            pieces.append((piece[:-2], b"\r\n"))
        elif piece.endswith(b"\n"):
            pieces.append((piece[:-1], b"\n"))
        else:
            pieces.append((piece, b""))
    return pieces


def transcript_line(tag: str, content: bytes, ending: bytes) -> str:
    """A dialogue line: `T: text` for CRLF, `T: text\\n` for a bare LF, `T~ text`
    for bytes with no line end at all."""
    if ending == b"\r\n":
        return f"{tag}: {show(content)}".rstrip(" ")
    if ending == b"\n":
        return f"{tag}: {show(content)}\\n"
    return f"{tag}~ {show(content)}"


def fold_repeats(lines: list[str]) -> list[str]:
    """Three or more identical lines in a row are written once plus a count, so a
    flood of identical replies stays readable."""
    out = []
    for line, group in itertools.groupby(lines):
        count = len(list(group))
        if count >= 3:
            out += [line, f"  ... previous line repeated {count - 1} more times"]
        else:
            out += [line] * count
    return out


# ------------------------------------------------------------------ scenarios

@dataclass
class Scenario:
    """A parsed scenario: how to set up the server, then the steps of the dialogue.

    Steps are ("send", bytes), ("read", count), ("close", None), ("sleep", secs).
    A control value of None means the file must not exist.
    """

    name: str
    title: str = ""
    env: dict[str, bytes] = field(default_factory=dict)
    unset: set[str] = field(default_factory=set)
    control: dict[str, bytes | None] = field(default_factory=dict)
    queue_exit: str = "0"
    queue_errmsg: str | None = None
    queue_missing: bool = False
    args: list[str] = field(default_factory=list)
    early_talk: bool = False
    steps: list[tuple[str, object]] = field(default_factory=list)


def parse_scenario(path: str | Path) -> Scenario:
    """Read a scenario file; any mistake in it is a ScenarioError naming file:line."""
    path = Path(path)
    scenario = Scenario(name=path.stem)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        if line[0] in ">|":
            _parse_send(scenario, line, where)
        elif line[0] == "<":
            _parse_read(scenario, line, where)
        else:
            word, _, arg = line.partition(" ")
            handler = DIRECTIVES.get(word)
            if handler is None:
                raise ScenarioError(f"{where}: unknown directive {word!r}")
            handler(scenario, arg, where)
    return scenario


def _parse_send(scenario: Scenario, line: str, where: str) -> None:
    """`> TEXT` / `| TEXT`, with `~` for no CRLF.  Only the first blank separates:
    further blanks are part of TEXT, since leading blanks can matter to SMTP."""
    exact = line[1:2] == "~"
    marker_length = 2 if exact else 1
    text = line[marker_length:]
    if text.startswith(" "):
        text = text[1:]
    elif text:
        raise ScenarioError(f"{where}: a blank must follow {line[:marker_length]!r}")
    data = unescape(text, where)
    if not exact:
        data += b"\r\n"
    scenario.steps.append(("send", data))
    if line[0] == ">":
        scenario.steps.append(("read", 1))


def _parse_read(scenario: Scenario, line: str, where: str) -> None:
    """`<` reads one reply, `< N` reads N."""
    count = line[1:].strip() or "1"
    if not count.isdigit():
        raise ScenarioError(f"{where}: `<` takes a number of replies, not {count!r}")
    scenario.steps.append(("read", int(count)))


def _directive_env(scenario: Scenario, arg: str, where: str) -> None:
    name, equals, value = arg.partition("=")
    if not name or not equals:
        raise ScenarioError(f"{where}: write env NAME=VALUE")
    scenario.env[name] = unescape(value, where)
    scenario.unset.discard(name)


def _directive_unset(scenario: Scenario, arg: str, where: str) -> None:
    name = arg.strip()
    scenario.unset.add(name)
    scenario.env.pop(name, None)


def _append_control(scenario: Scenario, arg: str, where: str, ending: bytes) -> None:
    """Control lines accumulate per file; the first one replaces the default."""
    name, _, value = arg.partition(" ")
    before = scenario.control.get(name) or b""
    scenario.control[name] = before + unescape(value, where) + ending


def _directive_nocontrol(scenario: Scenario, arg: str, where: str) -> None:
    scenario.control[arg.strip()] = None


def _directive_sleep(scenario: Scenario, arg: str, where: str) -> None:
    try:
        scenario.steps.append(("sleep", float(arg)))
    except ValueError:
        raise ScenarioError(f"{where}: sleep takes seconds, not {arg!r}") from None


def _set(attribute: str, value_of):
    """A directive that just stores value_of(arg) in the scenario."""
    return lambda scenario, arg, where: setattr(scenario, attribute, value_of(arg))


DIRECTIVES = {
    "title:": _set("title", str.strip),
    "env": _directive_env,
    "unset": _directive_unset,
    "control": lambda s, arg, where: _append_control(s, arg, where, b"\n"),
    "control-raw": lambda s, arg, where: _append_control(s, arg, where, b""),
    "nocontrol": _directive_nocontrol,
    "queue-exit": _set("queue_exit", str.strip),
    "queue-errmsg": _set("queue_errmsg", str),
    "queue-missing": _set("queue_missing", lambda arg: True),
    "arg": lambda s, arg, where: s.args.append(arg),
    "early-talk": _set("early_talk", lambda arg: True),
    "close": lambda s, arg, where: s.steps.append(("close", None)),
    "sleep": _directive_sleep,
}


# ------------------------------------------------------------------ the server

class Server:
    """The server under test, on three pipes.

    Threads drain its stdout and stderr all the time, so it never blocks on a
    full pipe while we are still writing to it, and a reply can be awaited with
    a deadline.
    """

    def __init__(self, argv: list[str], env: dict[bytes, bytes], cwd: str) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd)
        except OSError as e:
            raise ScenarioError(f"cannot start {argv[0]}: {e}") from None
        self.output = bytearray()
        self.output_ended = False
        self.errors = bytearray()
        self.changed = threading.Condition()
        self.input_open = True
        self.pumps = [threading.Thread(target=self._pump_output, daemon=True),
                      threading.Thread(target=self._pump_errors, daemon=True)]
        for pump in self.pumps:
            pump.start()

    def _pump_output(self) -> None:
        for chunk in _chunks(self.proc.stdout.fileno()):
            with self.changed:
                self.output += chunk
                self.changed.notify_all()
        with self.changed:
            self.output_ended = True
            self.changed.notify_all()

    def _pump_errors(self) -> None:
        for chunk in _chunks(self.proc.stderr.fileno()):
            self.errors += chunk

    def send(self, data: bytes) -> None:
        """Write to the server; a server that has gone away is not our error."""
        if not self.input_open or not data:
            return
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:
            pass

    def close_input(self) -> None:
        if self.input_open:
            self.input_open = False
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def reply(self, timeout: float) -> tuple[list[tuple[bytes, bytes]], str]:
        """Read one reply: lines up to the first whose 4th character is not '-'.

        Returns (lines, how) with how = "ok", "eof" (the server closed its
        output; a last piece without LF is included) or "timeout".
        """
        lines: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                newline = self.output.find(b"\n")
                if newline >= 0:
                    (line,) = split_lines(bytes(self.output[:newline + 1]))
                    del self.output[:newline + 1]
                    lines.append(line)
                    if line[0][3:4] != b"-":
                        return lines, "ok"
                    continue
                if self.output_ended:
                    if self.output:
                        lines.append((bytes(self.output), b""))
                        self.output.clear()
                    return lines, "eof"
                left = deadline - time.monotonic()
                if left <= 0:
                    return lines, "timeout"
                self.changed.wait(left)

    def remaining_output(self, timeout: float) -> tuple[bytes, bool]:
        """After our side is closed: whatever else the server says, and whether
        it closed its output within the timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.output_ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            data = bytes(self.output)
            self.output.clear()
            return data, self.output_ended

    def exit_status(self, timeout: float) -> int | str:
        """The exit status, or "killed" if it had to be killed for overstaying."""
        try:
            status: int | str = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            status = "killed"
        for pump in self.pumps:
            pump.join(timeout=1)
        if not any(pump.is_alive() for pump in self.pumps):
            self.proc.stdout.close()
            self.proc.stderr.close()
        return status


def _chunks(fd: int):
    """Everything readable from fd until EOF, as it arrives."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        yield chunk


# ------------------------------------------------------------------ normalisation

QUEUED_REPLY = re.compile(rb"250 ok ([0-9]+) qp ([0-9]+)")
RECEIVED_DATE = re.compile(
    rb"(  by .*; )([0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2}) -0000")


@dataclass
class Window:
    """The time span of a run: a time stamp outside it means a wrong clock or a
    value that is not a time at all, which must show up as a difference."""

    start: float
    end: float

    def holds(self, moment: float) -> bool:
        return self.start - CLOCK_SLACK <= moment <= self.end + CLOCK_SLACK


def normalise_reply(content: bytes, window: Window) -> bytes:
    """`250 ok <time> qp <pid>` varies from run to run; keep only whether the time
    was plausible."""
    match = QUEUED_REPLY.fullmatch(content)
    if not match:
        return content
    stamp = match.group(1)
    tag = b"<TIME>" if window.holds(int(stamp)) else b"<BAD-TIME:" + stamp + b">"
    return b"250 ok " + tag + b" qp <PID>"


def normalise_message(message: bytes, window: Window) -> bytes:
    """Replace the date in the server's own Received line (its first two lines)
    by <DATE>, or <BAD-DATE:...> when it is not a current UTC time."""
    lines = message.split(b"\n")
    for index, line in enumerate(lines[:2]):
        match = RECEIVED_DATE.fullmatch(line)
        if match:
            lines[index] = match.group(1) + _date_tag(match.group(2), window) + b" -0000"
    return b"\n".join(lines)


def _date_tag(date: bytes, window: Window) -> bytes:
    try:
        moment = datetime.strptime(date.decode("ascii"), "%d %b %Y %H:%M:%S")
    except ValueError:
        return b"<BAD-DATE:" + date + b">"
    if window.holds(moment.replace(tzinfo=UTC).timestamp()):
        return b"<DATE>"
    return b"<BAD-DATE:" + date + b">"


# ------------------------------------------------------------------ running one scenario

@dataclass
class Options:
    timeout: float = 10.0
    control_dir: str | None = None
    keep: bool = False
    stderr: bool = False


class Dialogue:
    """Plays a scenario's steps against a running server and records the transcript.

    Client bytes are held back and written in one go before the next read,
    close or sleep, so consecutive `|` lines really arrive pipelined; they are
    shown at the moment they are written, before the replies read after them.
    """

    def __init__(self, server: Server, timeout: float, started: float) -> None:
        self.server = server
        self.timeout = timeout
        self.started = started
        self.lines: list[str] = []
        self.unsent: list[bytes] = []
        self.server_closed = False

    def play(self, scenario: Scenario) -> None:
        if not scenario.early_talk:
            self.read(1)
        for kind, value in scenario.steps:
            if kind == "send":
                self.unsent.append(value)
            elif kind == "read":
                self.read(value)
            elif kind == "close":
                self.write_unsent()
                self.lines.append("-- client closed its side")
                self.server.close_input()
            elif kind == "sleep":
                self.write_unsent()
                time.sleep(value)
        self.end()

    def write_unsent(self) -> None:
        if not self.unsent:
            return
        self.server.send(b"".join(self.unsent))
        for chunk in self.unsent:
            self.lines += [transcript_line("C", *line) for line in split_lines(chunk)]
        self.unsent.clear()

    def read(self, count: int) -> None:
        self.write_unsent()
        for _ in range(count):
            if self.server_closed:
                self.lines.append("!! no reply: server already closed the connection")
                continue
            lines, how = self.server.reply(self.timeout)
            self.show_server(lines)
            if how == "timeout":
                self.lines.append(f"!! no complete reply within {self.timeout:g}s")
            elif how == "eof":
                self.lines.append("-- server closed the connection")
                self.server_closed = True

    def show_server(self, lines: list[tuple[bytes, bytes]]) -> None:
        window = Window(self.started, time.time())
        for content, ending in lines:
            self.lines.append(transcript_line("S", normalise_reply(content, window), ending))

    def end(self) -> None:
        """Close our side like a client that is done, collect what the server
        still says, and its exit status (which qmail-smtpd's callers see)."""
        self.write_unsent()
        self.server.close_input()
        rest, ended = self.server.remaining_output(self.timeout)
        self.show_server(split_lines(rest))
        if ended and not self.server_closed:
            self.lines.append("-- server closed the connection")
        self.lines.append(f"-- server exit status: {self.server.exit_status(self.timeout)}")


def queue_runs(queue_dir: Path, window: Window) -> list[str]:
    """Transcript lines for the qmail-queue runs that got a complete envelope.

    Runs with an empty or cut envelope are left out: qmail-smtpd aborts a
    message that way, a real qmail-queue refuses it, and whether it ran at all
    cannot be seen from outside.
    """
    lines = []
    shown = 0
    for path in sorted(queue_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not record.get("envelope_complete"):
            continue
        shown += 1
        lines.append(f"== qmail-queue run {shown}: exit {record['exit']}")
        lines.append(f"Q: F <{show(record['sender'].encode('latin-1'))}>")
        lines += [f"Q: T <{show(r.encode('latin-1'))}>" for r in record["recipients"]]
        message = normalise_message(base64.b64decode(record["message_b64"]), window)
        lines += [message_line(*line) for line in split_lines(message)]
    return lines


def message_line(content: bytes, ending: bytes) -> str:
    """Queued text is LF-terminated; a CR before the LF is part of the content
    and shown as \\r, since it must not be there."""
    if ending == b"\r\n":
        content += b"\r"
    if ending:
        return f"M: {show(content)}".rstrip(" ")
    return f"M~ {show(content)}"


def prepare_control(directory: str, scenario: Scenario) -> None:
    """Empty the control directory of files, then write the scenario's set."""
    real = os.path.realpath(directory)
    if real == "/var/qmail" or real.startswith("/var/qmail/"):
        raise ScenarioError("refusing to write control files under /var/qmail")
    os.makedirs(directory, exist_ok=True)
    for entry in os.scandir(directory):
        if entry.is_symlink() or entry.is_file():
            os.unlink(entry.path)
    files = {**DEFAULT_CONTROL, **scenario.control}
    for name, data in sorted(files.items()):
        if data is not None:
            Path(directory, name).write_bytes(data)


def write_wrapper(path: Path, script: Path) -> str:
    """A tiny sh wrapper that runs one of our helper scripts with this interpreter,
    since the server passes on neither our PATH nor our virtualenv."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)
    return str(path)


def server_environment(scenario: Scenario, control_dir: str, queue_dir: Path,
                       queue_program: str) -> dict[bytes, bytes]:
    """Only PATH from our own environment: a transcript must not depend on who
    runs the check.  Scenario values are bytes, so they may hold any byte."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **CONNECTION_ENV,
           "QMAIL_CONTROL": control_dir,
           "QMAILQUEUE": "/nonexistent/qmail-queue" if scenario.queue_missing else queue_program,
           "FAKEQUEUE_DIR": str(queue_dir), "FAKEQUEUE_EXIT": scenario.queue_exit}
    if scenario.queue_errmsg is not None:
        env["FAKEQUEUE_ERRMSG"] = scenario.queue_errmsg
    result = {name.encode(): value.encode() for name, value in env.items()}
    result.update({name.encode(): value for name, value in scenario.env.items()})
    for name in scenario.unset:
        result.pop(name.encode(), None)
    return result


def run_scenario(scenario: Scenario, server_command: list[str], options: Options) -> str:
    """Run one scenario in a fresh temporary directory; return its transcript."""
    workdir = Path(tempfile.mkdtemp(prefix=f"dialog-{scenario.name}-"))
    try:
        return _run_in(workdir, scenario, server_command, options)
    finally:
        if options.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: Path, scenario: Scenario, server_command: list[str],
            options: Options) -> str:
    queue_dir = workdir / "queue"
    queue_dir.mkdir()
    control_dir = options.control_dir or str(workdir / "control")
    prepare_control(control_dir, scenario)
    queue_program = write_wrapper(workdir / "qmail-queue", FAKE_QUEUE)
    checkpassword = write_wrapper(workdir / "checkpassword", FAKE_CHECKPASSWORD)
    args = [arg.replace("{checkpassword}", checkpassword).replace("{conformance}", str(HERE))
            for arg in scenario.args]
    env = server_environment(scenario, control_dir, queue_dir, queue_program)

    lines = [f"# scenario: {scenario.name}"]
    if scenario.title:
        lines.append(f"# title: {scenario.title}")
    started = time.time()
    server = Server(server_command + args, env, str(workdir))
    dialogue = Dialogue(server, options.timeout, started)
    dialogue.play(scenario)
    lines += dialogue.lines
    lines += queue_runs(queue_dir, Window(started, time.time()))
    if options.stderr:
        lines += [transcript_line("E", *line) for line in split_lines(bytes(server.errors))]
    return "\n".join(fold_repeats(lines)) + "\n"


# ------------------------------------------------------------------ command line

def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options and scenarios come before `--`, the server command after it."""
    parser = argparse.ArgumentParser(
        prog="dialog.py", allow_abbrev=False,
        usage="%(prog)s [options] SCENARIO-or-DIR... -- SERVER-COMMAND [ARG...]",
        description="Play SMTP scenarios against a server on stdin/stdout.")
    parser.add_argument("--check", metavar="DIR", help="compare with DIR/<name>.txt")
    parser.add_argument("--out", metavar="DIR", help="write DIR/<name>.txt")
    parser.add_argument("--timeout", metavar="S", type=float, default=10.0,
                        help="seconds to wait for one reply (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--stderr", action="store_true",
                        help="append the server's stderr (E: lines)")
    parser.add_argument("--control-dir", metavar="DIR",
                        help="write control files here (default: a fresh one per scenario)")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO-or-DIR")
    if "--" not in argv:
        parser.error("missing `--` before the server command")
    split = argv.index("--")
    options, server_command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not server_command:
        parser.error("no server command after `--`")
    return options, server_command


def scenario_files(names: list[str]) -> list[str]:
    """A directory stands for its *.scn files, in name order."""
    files = []
    for name in names:
        if os.path.isdir(name):
            files += [os.path.join(name, f) for f in sorted(os.listdir(name))
                      if f.endswith(".scn")]
        else:
            files.append(name)
    return files


def compare(name: str, text: str, golden_dir: str) -> bool:
    """Print ok/DIFFER/MISSING for one transcript (with a diff when it differs)."""
    try:
        golden = Path(golden_dir, name + ".txt").read_text(encoding="utf-8")
    except OSError:
        print(f"MISSING {name}")
        return False
    if golden == text:
        print(f"ok      {name}")
        return True
    print(f"DIFFER  {name}")
    sys.stdout.writelines(difflib.unified_diff(
        golden.splitlines(True), text.splitlines(True), f"golden/{name}", f"actual/{name}"))
    return False


def main(argv: list[str]) -> int:
    args, server_command = parse_command_line(argv)
    options = Options(timeout=args.timeout, control_dir=args.control_dir,
                      keep=args.keep, stderr=args.stderr)
    files = scenario_files(args.scenarios)
    failed = 0
    for path in files:
        try:
            scenario = parse_scenario(path)
            text = run_scenario(scenario, server_command, options)
        except (ScenarioError, OSError) as e:
            print(f"scenario error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            Path(args.out, scenario.name + ".txt").write_text(text, encoding="utf-8")
        if args.check:
            failed += not compare(scenario.name, text, args.check)
        elif not args.out:
            sys.stdout.write(text)
        sys.stdout.flush()
    if args.check:
        print(f"{len(files)} scenario(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
