"""qmail control files and tcpserver's environment, read once at start-up.

The rules are qmail's control.c: single-value files use their first line with
trailing blanks, TABs and LFs removed (a CR stays), list files drop empty and
`#` lines, numbers are the leading digits.  A missing file is a default; any
other error reading one is fatal (`421 unable to read controls`).
"""

from __future__ import annotations

import os

DEFAULT_CONTROL = "/var/qmail/control"
DEFAULT_TIMEOUT = 1200


class ControlError(Exception):
    """A control file exists but cannot be read."""


class Controls:
    """Reads files from one control directory with qmail's rules."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _read(self, name: str) -> bytes | None:
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ControlError(f"{name}: {e.strerror}") from None

    def line(self, name: str) -> bytes | None:
        """First line, trailing spaces/TABs removed; None if the file is missing."""
        data = self._read(name)
        if data is None:
            return None
        return data.split(b"\n", 1)[0].rstrip(b" \t")

    def lines(self, name: str) -> list[bytes] | None:
        """Entries of a list file; None if the file is missing."""
        data = self._read(name)
        if data is None:
            return None
        entries = (raw.rstrip(b" \t") for raw in data.split(b"\n"))
        return [e for e in entries if e and not e.startswith(b"#")]

    def number(self, name: str) -> int | None:
        """Leading decimal digits of the first line; None if missing or no digits."""
        text = self.line(name)
        return None if text is None else leading_number(text)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))


def leading_number(text: bytes) -> int | None:
    """qmail's scan_ulong: the digits at the start, or None if there are none."""
    end = 0
    while end < len(text) and 0x30 <= text[end] <= 0x39:
        end += 1
    return int(text[:end]) if end else None


class Settings:
    """Everything the session needs from control files and the environment."""

    def __init__(self, controls: Controls, env: dict[str, str]) -> None:
        me = controls.line("me")
        greeting = controls.line("smtpgreeting")
        if greeting is None:
            greeting = me
        if greeting is None:
            raise ControlError("neither control/smtpgreeting nor control/me exists")
        self.greeting: bytes = greeting
        localiphost = controls.line("localiphost")
        self.localiphost: bytes | None = me if localiphost is None else localiphost
        timeout = controls.number("timeoutsmtpd")
        self.timeout: int = DEFAULT_TIMEOUT if timeout is None else max(timeout, 1)
        self.rcpthosts: list[bytes] | None = controls.lines("rcpthosts")
        self.morercpthosts: str | None = None
        if self.rcpthosts is not None and controls.exists("morercpthosts.cdb"):
            self.morercpthosts = controls.path("morercpthosts.cdb")
        bmf = controls.lines("badmailfrom") or []
        self.badmailfrom = frozenset(entry.lower() for entry in bmf)
        databytes = controls.number("databytes") or 0
        if "DATABYTES" in env:
            databytes = leading_number(env["DATABYTES"].encode()) or 0
        if databytes == 4294967295:  # qmail's databytes + 1 must not wrap to 0
            databytes -= 1
        self.databytes: int = databytes
        self.relayclient: bytes | None = _env_bytes(env, "RELAYCLIENT")
        self.remoteip = _env_bytes(env, "TCPREMOTEIP", b"unknown")
        self.remotehost = _env_bytes(env, "TCPREMOTEHOST", b"unknown")
        self.remoteinfo: bytes | None = _env_bytes(env, "TCPREMOTEINFO")
        self.local = _env_bytes(env, "TCPLOCALHOST",
                                _env_bytes(env, "TCPLOCALIP", b"unknown"))


def _env_bytes(env: dict[str, str], name: str,
               default: bytes | None = None) -> bytes | None:
    """A variable as bytes; set-but-empty stays empty, as in qmail's env_get."""
    value = env.get(name)
    return default if value is None else os.fsencode(value)
