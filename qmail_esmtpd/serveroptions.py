"""qmail-esmtpd-server's command line: tcpserver's options, where they exist.

  -c N   at most N sessions at once (40); more connections wait in the backlog
  -C N   at most N sessions from one source, an IPv4 address or an IPv6 /64
         (0: no limit); more get 421
  -b N   listen backlog (20)
  -x CDB tcprules file; -X: allow all when it is missing
  -u UID, -g GID, -U ($UID, $GID): run as that user and group after binding,
         with no supplementary groups; a user without a group is refused
  -l NAME  TCPLOCALHOST (no DNS: unset without -l)
  -H, -R   accepted: no DNS and no ident lookups is the only mode
  -v, -q, -Q  verbose (tcpserver -v's lines), quiet, errors only (default)
  -1     print the local port on stdout once listening
  -S     take the listening sockets from systemd (LISTEN_FDS, Accept=no)
  -4     IPv4 only: HOST 0 listens on 0.0.0.0 (default: :: for IPv6 and IPv4)
  -6     IPv4 clients in IPv6 form too: PROTO=TCP6, TCPREMOTEIP=::ffff:a.b.c.d
  -I IF  the interface of a link-local HOST (fe80::...)
  -T S   on SIGTERM, wait at most S seconds (60) for running sessions
  -m N   each worker serves up to N connections, one at a time (100; Postfix's
         max_use); 0: a fresh fork for every connection
  -W S   a worker idle for S seconds exits (100; Postfix's max_idle)
  -M MB  a worker whose memory grew by more than MB megabytes since its fork
         exits after its session (64)
  --help, --version (as the first argument): say so on stdout and exit 0
"""

import os
import sys

from .config import MAX_SECONDS

USAGE = ("usage: qmail-esmtpd-server [-46vqQHR1SX] [-c limit] [-C perip] [-b backlog] "
         "[-x rules.cdb] [-u uid] [-g gid] [-U] [-l localname] [-T grace] [-I interface] "
         "[-m maxuse] [-W maxidle] [-M megabytes] "
         "{host port | -S} [arg ...]")
OPTIONS_WITH_VALUE = "cCbxuglTImWM"
OPTIONS_FLAGS = "46vqQHR1SXUD"


class UsageError(Exception):
    """A command line that cannot be run (exit 100, with USAGE)."""


class Options:
    """What the command line asks for; tcpserver's defaults otherwise."""

    def __init__(self) -> None:
        self.limit = 40
        self.per_source = 0
        self.backlog = 20
        self.rules: str | None = None
        self.allow_missing_rules = False
        self.uid: int | None = None  # None: not asked for, the starter's
        self.gid: int | None = None
        self.localhost: str | None = None
        self.verbosity = 1
        self.print_port = False
        self.systemd = False
        self.ipv4_only = False  # -4
        self.force6 = False  # -6
        self.interface: str | None = None  # -I
        self.grace = 60
        self.max_use = 100  # -m; 0: fork per connection
        self.max_idle = 100  # -W
        self.growth = 64  # -M, in MB
        self.host = ""
        self.port = ""
        self.session_argv: list[str] = []


def parse(argv: list[str]) -> Options:
    """tcpserver-style getopt: options first, then HOST PORT (not with -S), then ARGs."""
    if argv[:1] in (["--help"], ["--version"]):
        from . import about

        sys.stdout.write(about("qmail-esmtpd-server", USAGE, argv[0]))
        sys.stdout.flush()
        raise SystemExit(0)  # as argparse's --help: before any socket or log line
    opts = Options()
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg == "--":
            break
        letters = arg[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in OPTIONS_WITH_VALUE:
                if not letters:
                    if not args:
                        raise UsageError(f"-{letter} needs a value")
                    letters = args.pop(0)
                _set_value(opts, letter, letters)
                letters = ""
            elif letter in OPTIONS_FLAGS:
                _set_flag(opts, letter)
            elif letter in "hrpPoOdB":
                raise UsageError(f"-{letter} is not supported (no DNS, ident, banner or IP "
                                 "options: see the README)")
            else:
                raise UsageError(f"unknown option -{letter}")
    if not opts.systemd:
        if len(args) < 2:
            raise UsageError("HOST and PORT are needed (or -S)")
        opts.host, opts.port = args[0], args[1]
        args = args[2:]
    opts.session_argv = args
    if opts.uid is not None and opts.gid is None:
        raise UsageError("-u needs -g (with -U: $UID needs $GID): sessions would keep "
                         "the starter's group and supplementary groups")
    return opts


MAX_COUNT = 2**31 - 1  # listen() takes a C int; no count of sessions gets near it
MAX_MEGABYTES = 2**20  # a terabyte of growth: no bound at all
MAX_ID = 2**32 - 2  # uid_t and gid_t; 2**32 - 1 is -1, "leave unchanged"

# letter -> (attribute, largest value): a larger count or delay is cut to it
NUMBER_OPTIONS = {"c": ("limit", MAX_COUNT), "C": ("per_source", MAX_COUNT),
                  "b": ("backlog", MAX_COUNT), "T": ("grace", MAX_SECONDS),
                  "m": ("max_use", MAX_COUNT), "W": ("max_idle", MAX_SECONDS),
                  "M": ("growth", MAX_MEGABYTES)}
ID_OPTIONS = {"u": "uid", "g": "gid"}
TEXT_OPTIONS = {"x": "rules", "l": "localhost", "I": "interface"}
# letter -> (attribute, value); U reads $UID and $GID (_set_flag)
FLAG_OPTIONS = {"v": ("verbosity", 2), "q": ("verbosity", 0), "Q": ("verbosity", 1),
                "1": ("print_port", True), "S": ("systemd", True),
                "X": ("allow_missing_rules", True), "4": ("ipv4_only", True),
                "6": ("force6", True)}


def _number(letter: str, value: str) -> int:
    if not value.isdigit():
        raise UsageError(f"-{letter} wants a number, not {value!r}")
    return int(value)


def _id(letter: str, value: str) -> int:
    """A uid or gid; one that no uid_t holds is refused, not cut."""
    number = _number(letter, value)
    if number > MAX_ID:
        raise UsageError(f"-{letter} {value}: no such user or group id")
    return number


def _set_value(opts: Options, letter: str, value: str) -> None:
    if letter in NUMBER_OPTIONS:
        attribute, largest = NUMBER_OPTIONS[letter]
        setattr(opts, attribute, min(_number(letter, value), largest))
        opts.limit = max(1, opts.limit)
    elif letter in ID_OPTIONS:
        setattr(opts, ID_OPTIONS[letter], _id(letter, value))
    else:
        setattr(opts, TEXT_OPTIONS[letter], value)


def _set_flag(opts: Options, letter: str) -> None:
    if letter in FLAG_OPTIONS:
        setattr(opts, *FLAG_OPTIONS[letter])
    elif letter == "U":  # as tcpserver: each from its variable when that is set
        uid, gid = os.environ.get("UID"), os.environ.get("GID")
        if uid is not None:
            opts.uid = _id("U", uid)
        if gid is not None:
            opts.gid = _id("U", gid)
    # H, R: the only mode; D: TCP_NODELAY is always set, as tcpserver's default
