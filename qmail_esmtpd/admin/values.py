"""What `qmail-esmtpd-user` accepts: names, addresses, limits, POP3 columns, passwords.

Names and passwords are bounded (MAX_NAME_BYTES, MAX_PASSWORD_BYTES) so
that an account made here can log in on every path: SMTP AUTH, POP3 through
the checkpassword interface (at most 512 bytes of name, password and
timestamp) and the failure throttle (which keeps 256 characters of a name).
The POP3 columns `set` writes are checked the way the POP3 program reads
them, so that no row is stored that could never log in.

Argument checks are argparse types: a bad value is a usage error (status 2)
before any database is asked.  Passwords never come from the command line
(other users can read it in ps): read_password asks for one.
"""

import argparse
import getpass
import ipaddress
import pwd
import re
import sys

from ..auth.accounts import canonical_name, nfc

# A name of MAX_NAME_BYTES and a password of MAX_PASSWORD_BYTES, with three
# NULs and qmail-popup's timestamp (<pid.time@host>, 85 bytes with a 64-byte
# host name), fit the 512 bytes a checkpassword program reads; the name stays
# under the throttle's 256-character cut; AUTH PLAIN carries both in a
# 700-byte line even with the name repeated as authorization identity.
MAX_NAME_BYTES = 128
MAX_PASSWORD_BYTES = 256
MAX_ADDRESS_BYTES = 254  # RFC 5321's 256-octet path, without its < >
MAX_INTEGER = 2**31 - 1  # PostgreSQL's integer column
# the POP3 columns `set` may change (column names in SQL come only from this tuple)
POP_COLUMNS = ("sysuser", "dir", "hostname", "ip")
# POSIX's portable user names (useradd's default rule), at most 32 characters
SYSUSER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?")
HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class Failure(Exception):
    """A refusal the user can act on: one line on stderr and this exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def name_arg(text: str, strict: bool) -> str:
    """A user name as AUTH looks it up: UTF-8, in NFC.

    New names must also pass accounts.canonical_name (no control or invisible
    characters, not empty), so that no two names in `list` look alike.
    """
    try:
        text.encode("utf-8")  # argv's undecodable bytes arrive as lone surrogates
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("user name is not UTF-8") from None
    if "\0" in text:
        raise argparse.ArgumentTypeError("user name has a NUL")
    if not strict:
        return nfc(text)
    name = canonical_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(
            "user name is empty, has spaces at an end, or control or invisible characters")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise argparse.ArgumentTypeError(
            f"user name longer than {MAX_NAME_BYTES} bytes (UTF-8): POP3 logins carry at "
            "most 512 bytes of name, password and timestamp; choose a shorter name")
    return name


def new_name(text: str) -> str:
    return name_arg(text, strict=True)


def existing_name(text: str) -> str:
    return name_arg(text, strict=False)


def address_arg(text: str) -> str:
    """An envelope sender as the server compares it (MAIL FROM's address without
    its < >, lower case): local@domain, no blanks, no invisible characters."""
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]  # as written in MAIL FROM:<...>
    if not text:
        raise argparse.ArgumentTypeError(
            "the address is empty: the null sender <> needs no sendas, it is always accepted")
    address = canonical_name(text)
    if address is None or " " in address:
        raise argparse.ArgumentTypeError(
            f"the address has blanks, control or invisible characters: {text!r}")
    local, _, domain = address.rpartition("@")
    labels = domain.split(".")
    if not local or not domain or "<" in address or ">" in address or not all(labels):
        raise argparse.ArgumentTypeError(
            f"not an address: {text!r} (want local@domain, e.g. alias@example.org)")
    if len(address.encode("utf-8")) > MAX_ADDRESS_BYTES:
        raise argparse.ArgumentTypeError(
            f"address longer than {MAX_ADDRESS_BYTES} bytes, more than SMTP allows")
    return address.lower()


def limit_or_default(text: str) -> int | None:
    """A daily limit: recipients (messages with control/sendlimitmessages), 0 for
    none, or `default` in any case for the site's."""
    if text.lower() == "default":
        return None
    if not text.isascii() or not text.isdigit() or int(text) > MAX_INTEGER:
        raise argparse.ArgumentTypeError(
            f"not a daily limit: {text!r} (want a whole number of recipients up to "
            f"{MAX_INTEGER}, 0 for no limit, or default)")
    return int(text)


def count_arg(text: str) -> int:
    """How many users `top` lists: at least one."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"not a number of users to list: {text!r}")
    return int(text)


def column_value(text: str) -> tuple[str, str | None]:
    """COLUMN=VALUE for `set`: one of POP_COLUMNS, its value as the POP3 program
    can use it; an empty VALUE means NULL."""
    column, sep, value = text.partition("=")
    if column == "active":
        raise argparse.ArgumentTypeError(
            "active is not set here: `disable NAME` deactivates an account, `enable NAME` "
            "reactivates it")
    if not sep or column not in POP_COLUMNS:
        raise argparse.ArgumentTypeError(
            f"not COLUMN=VALUE with COLUMN one of {', '.join(POP_COLUMNS)}: {text!r}")
    if not value:
        return column, None
    if not value.isprintable():
        raise argparse.ArgumentTypeError(f"{column} has control or invisible characters")
    return column, POP_CHECKS[column](value)


def sysuser_value(value: str) -> str:
    """A system user name; whether this host knows it is check_sysuser's question,
    asked once `set` knows whether --force was given."""
    if not SYSUSER.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"sysuser is not a system user name: {value!r} (letters, digits, _ . -)")
    return value


def dir_value(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"dir must be an absolute path, e.g. /home/vmail/alice, not {value!r}: "
            "the POP3 session starts there")
    return value


def hostname_value(value: str) -> str:
    """A host name as control/pophost names the POP3 host (compared ignoring case)."""
    labels = value.split(".")
    if len(value) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(
            f"hostname is not a host name: {value!r} (want e.g. pop.example.org, as "
            "control/pophost names the POP3 host)")
    return value


def ip_value(value: str) -> str:
    """An IPv4 or IPv6 address in its canonical text, the form to write in control/popip."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ip is not an IP address: {value!r} (want e.g. 192.0.2.1, as control/popip "
            "names the POP3 host)") from None


POP_CHECKS = {"sysuser": sysuser_value, "dir": dir_value, "hostname": hostname_value,
              "ip": ip_value}


def check_sysuser(name: str, force: bool) -> None:
    """Refuse what the POP3 program refuses at login: root, and (without
    --force, for tables several hosts share) a user this host does not know."""
    try:
        uid: int | None = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if name == "root" or uid == 0:
        raise Failure(f"sysuser {name} is root (uid 0): POP3 sessions never run as root; "
                      "choose an unprivileged user, e.g. vmail")
    if uid is None and not force:
        raise Failure(f"sysuser {name} is not a user of this host: create it (useradd), or "
                      "add --force if the POP3 host that serves this account has it")


def read_password() -> bytes:
    """A tty asks twice and compares; otherwise exactly one line, minus its LF or CRLF.

    Bytes, because the server checks the bytes the client sent: a UTF-8
    password hashed here matches the same password typed into a mail client.
    """
    if sys.stdin.isatty():
        try:
            first = getpass.getpass("New password: ")
            second = getpass.getpass("Retype new password: ")
        except EOFError:
            raise Failure("no password given") from None
        if first != second:
            raise Failure("passwords do not match")
        password = first.encode("utf-8", "surrogateescape")
    else:
        password = piped_password(sys.stdin.buffer.read(MAX_PASSWORD_BYTES + 3))
    if not password:
        raise Failure("empty password")
    if b"\0" in password:
        raise Failure("the password has a NUL byte, which AUTH cannot carry")
    if len(password) > MAX_PASSWORD_BYTES:
        raise Failure(f"password longer than {MAX_PASSWORD_BYTES} bytes: POP3 logins carry at "
                      "most 512 bytes of name, password and timestamp; choose a shorter one")
    return password


def piped_password(data: bytes) -> bytes:
    """The one line of `data` without its LF or CRLF (one rule for a pipe from
    any system); a second line is refused, not silently dropped."""
    line, newline, rest = data.partition(b"\n")
    if rest:
        raise Failure("stdin has more than one line: give the password alone, on one line")
    if newline and line.endswith(b"\r"):
        line = line[:-1]
    return line
