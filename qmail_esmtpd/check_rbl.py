"""DNS blocklists, decided as rblsmtpd (ucspi-tcp 0.88) decides before it runs
qmail-smtpd, so that a run script's `rblsmtpd -r LIST` moves into a control
file or a rules entry unchanged.

The decision is rblsmtpd's main(): $RBLSMTPD from the rules first (empty: no
lookups; a text: refused with it, a leading `-` making the 451 a 553), then
rblsmtpd's own options in their order ($RBLLISTS, else control/rbllists):
`-r BASE` a list whose TXT record is the reason, `-a BASE` an allow-list whose
A record lets the client through, `-b`/`-B` 553 or 451 for a listed client,
`-c`/`-C` a failed lookup refuses (451) or passes, `-t N` seconds a listed
client may go on talking (0: the refusal instead of the greeting).  A listed
client gets rblsmtpd's reply to every command and rblsmtpd's log line.  Ours:
where AUTH is offered and `rblauth` is on (the default), greeting, HELO, EHLO,
QUIT, STARTTLS and AUTH are the host's, and a client that logs in may send.

DNS is asked through dnspython, loaded only when a lookup is made, from the
servers djbdns asks ($DNSCACHEIP, else /etc/resolv.conf); every lookup of a
session together within `rbltimeout` seconds.
"""

import posix
import time

from . import replies
from .config import clamp_seconds, leading_number, number_setting
from .log import log, printable
from .protocol import FLUSH, QUIT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import dns.resolver

    from .config import Settings
    from .protocol import Session, Verdict

# rblsmtpd's decision: undecided, let through, refuse (451), bounce (553)
UNDECIDED, ACCEPT, REFUSE, BOUNCE = 0, 1, 2, 3
SESSION_SECONDS = 60  # -t's default: how long rblsmtpd talks to a listed client
LOOKUP_SECONDS = 5  # rbltimeout's default: all lookups of one session together
TRY_SECONDS = 2.0  # one question to one server, before the next is asked
TEXT_MAX = 200  # rblsmtpd keeps this much of a reason
LOOKUP_ERROR = b"temporary RBL lookup error"  # -c's reason when a lookup failed
# rblsmtpd's reply and log line show bytes outside 32..126 as `?`
UNPRINTABLE = bytes([*range(32), *range(127, 256)])
PRINTABLE = bytes.maketrans(UNPRINTABLE, b"?" * len(UNPRINTABLE))
ANSWERED = frozenset((b"helo", b"ehlo", b"mail", b"rset", b"noop"))  # rblsmtpd's 250s
HOST_VERBS = frozenset((b"helo", b"ehlo", b"quit", b"starttls", b"auth"))  # rblauth: the host's
OPTION_LETTERS = "bBcCtra"  # rblsmtpd's getopt("bBcCt:r:a:")
WITH_ARGUMENT = "tra"
RESOLV_CONF = b"/etc/resolv.conf"
MAX_SERVERS = 16  # djbdns asks at most 16 servers
LOCALHOST = "127.0.0.1"  # djbdns's server when none is named, and for 0.0.0.0


class TemporaryFailure(Exception):
    """A lookup that got no usable answer: timeout, SERVFAIL, REFUSED, no server."""


class Blocked:
    """A client rblsmtpd would not have passed on: its conversation."""

    def __init__(self, refusal: bytes, seconds: int, host_talks: bool,
                 clock: "Callable[[], float]" = time.monotonic) -> None:
        self.refusal = refusal + replies.CRLF
        self.seconds = seconds
        self.host_talks = host_talks  # rblauth: greeting, EHLO, AUTH are the host's
        self.clock = clock
        self.ends = clock() + seconds  # rblsmtpd's alarm(), set before its greeting
        self.logged_in = False

    def on_connect(self, session: "Session", value: bytes) -> "Verdict | None":
        if self.seconds == 0:  # -t0: the refusal instead of a greeting, then close
            return self.refusal, QUIT
        return None if self.host_talks else (replies.RBL_GREETING, FLUSH)

    def on_command(self, session: "Session", line: bytes) -> "Verdict | None":
        if session.user is not None:  # logged in (rblauth): sends as any client
            if not self.logged_in:
                self.logged_in = True
                session.note(f"rbl listed client logged in, may send ip="
                             f"{printable(session.peer.remoteip)} user={printable(session.user)}")
            return None
        if self.clock() >= self.ends:  # rblsmtpd's alarm: closed without a word
            return b"", QUIT
        space = line.find(b" ")
        verb = (line if space < 0 else line[:space]).lower()
        if self.host_talks and verb in HOST_VERBS:
            return None
        if verb in ANSWERED:
            return replies.RBL_OK, FLUSH
        if verb == b"quit":
            return replies.RBL_QUIT, QUIT
        return self.refusal, FLUSH


def options(words: "list[bytes]") -> "tuple[list[tuple[str, bytes]], list[str]]":
    """(letter, argument) pairs as rblsmtpd's getopt("bBcCt:r:a:") reads the
    words, and what it could not read: logged and skipped, as a typo in a
    control file must not refuse mail."""
    found: list[tuple[str, bytes]] = []
    wrong: list[str] = []
    at = 0
    while at < len(words):
        word = words[at]
        at += 1
        if len(word) < 2 or word[:1] != b"-":
            wrong.append(printable(word))
            continue
        for position in range(1, len(word)):
            letter = chr(word[position])
            if letter not in OPTION_LETTERS:
                wrong.append(printable(word))
                break
            if letter not in WITH_ARGUMENT:
                found.append((letter, b""))
                continue
            argument = word[position + 1:]
            if not argument:
                if at == len(words):
                    wrong.append(printable(word))
                    break
                argument = words[at]
                at += 1
            found.append((letter, argument))
            break
    return found, wrong


def decide(rblsmtpd: bytes | None, steps: "list[tuple[str, bytes]]",
           lookups: "Lookups") -> tuple[bytes | None, int]:
    """rblsmtpd's main(): (the refusal without CRLF, or None to let the client
    through; seconds a refused client may talk).  Lookups are made in the
    order of the options, and only while nothing is decided."""
    decision, text = UNDECIDED, b""
    if rblsmtpd is not None:
        if not rblsmtpd:
            decision = ACCEPT
        elif rblsmtpd[:1] == b"-":
            decision, text = BOUNCE, rblsmtpd[1:]
        else:
            decision, text = REFUSE, rblsmtpd
    bounce = fail_closed = must_not_bounce = False
    seconds = SESSION_SECONDS
    for letter, argument in steps:
        if letter in "bB":
            bounce = letter == "b"
        elif letter in "cC":
            fail_closed = letter == "c"
        elif letter == "t":  # scan_ulong: no digits is 0
            seconds = clamp_seconds(leading_number(argument) or 0)
        elif decision != UNDECIDED:
            continue
        elif letter == "r":
            try:
                text = lookups.listed(argument)
            except TemporaryFailure:
                must_not_bounce = True
                if fail_closed:
                    decision, text = REFUSE, LOOKUP_ERROR
                continue
            if text:
                decision = BOUNCE if bounce else REFUSE
        else:  # "a"
            try:
                if lookups.allowed(argument):
                    decision = ACCEPT
            except TemporaryFailure:
                must_not_bounce = True
                if not fail_closed:
                    decision = ACCEPT
    if decision < REFUSE:
        return None, seconds
    code = b"451 " if must_not_bounce or decision == REFUSE else b"553 "
    return (code + text[:TEXT_MAX]).translate(PRINTABLE), seconds


def dns_servers(env: "Mapping[bytes, bytes]", resolv_conf: bytes = RESOLV_CONF) -> list[str]:
    """The servers djbdns asks: $DNSCACHEIP's IPv4 addresses (dots between
    them too), else resolv.conf's `nameserver` lines (IPv4; 0.0.0.0 is
    127.0.0.1), else 127.0.0.1; at most 16."""
    servers: list[str] = []
    given = env.get(b"DNSCACHEIP")
    if given:
        at = 0
        while len(servers) < MAX_SERVERS:
            if given[at:at + 1] == b".":
                at += 1
                continue
            address, used = scan_ip4(given, at)
            if not used:
                break
            servers.append(address)
            at += used
    if not servers:
        try:
            with open(resolv_conf, "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            lines = []
        for line in lines:
            if line[:11] in (b"nameserver ", b"nameserver\t") and len(servers) < MAX_SERVERS:
                address, used = scan_ip4(line[10:].lstrip(b" \t"), 0)
                if used:
                    servers.append(LOCALHOST if address == "0.0.0.0" else address)
    return servers or [LOCALHOST]


def scan_ip4(text: bytes, at: int) -> tuple[str, int]:
    """djbdns's ip4_scan at `at`: (the address, bytes read), 0 read if none;
    each part is the low byte of its number, as djbdns stores it."""
    parts = []
    start = at
    for index in range(4):
        if index:
            if text[at:at + 1] != b".":
                return "", 0
            at += 1
        end = at
        while end < len(text) and 0x30 <= text[end] <= 0x39:
            end += 1
        if end == at:
            return "", 0
        parts.append(str(int(text[at:end]) & 255))
        at = end
    return ".".join(parts), at - start


class Lookups:
    """The questions about one client, within one time budget; a failure is
    logged once a session, with the lists that failed."""

    def __init__(self, ip: bytes, env: "Mapping[bytes, bytes]", seconds: int) -> None:
        self.ip = ip.decode("ascii", "replace")
        self.env = env
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.failures: list[str] = []
        self.resolver: "dns.resolver.Resolver | None" = None

    def listed(self, base: bytes) -> bytes:
        """The TXT records of the client under `base`, joined as djbdns joins
        them; empty: not listed."""
        answer = self._ask(base, "TXT")
        return b"".join(part for record in answer for part in record.strings)

    def allowed(self, base: bytes) -> bool:
        """Whether the client has an A record under `base`."""
        return bool(self._ask(base, "A"))

    def _ask(self, base: bytes, kind: str) -> list:
        import dns.exception
        import dns.name
        import dns.resolver
        import dns.reversename

        try:
            origin = dns.name.from_text(base.decode("ascii"))
            name = dns.reversename.from_address(self.ip, origin, origin)
        except (UnicodeDecodeError, ValueError, dns.exception.DNSException) as e:
            return self._failed(base, f"no name to ask: {e}")
        left = self.deadline - time.monotonic()
        if left <= 0:
            return self._failed(base, f"no time left of rbltimeout {self.seconds} s")
        if self.resolver is None:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = dns_servers(self.env)
            resolver.timeout = TRY_SECONDS
            resolver.cache = None
            self.resolver = resolver
        try:
            answer = self.resolver.resolve(name, kind, search=False, raise_on_no_answer=False,
                                           lifetime=left)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            return self._failed(base, f"no answer within rbltimeout {self.seconds} s")
        except Exception as e:  # SERVFAIL, REFUSED, no server, a broken packet: as djbdns, -1
            return self._failed(base, str(e) or type(e).__name__)
        return list(answer.rrset or ())

    def _failed(self, base: bytes, why: str) -> list:
        self.failures.append(f"{printable(base, 255)}: {why[:300]}")
        raise TemporaryFailure(why)


def rblsmtpd_log(ip: bytes, message: bytes) -> None:
    """rblsmtpd's own line, `rblsmtpd: IP pid PID: 451 text`, for the log
    parsers that know it."""
    try:
        posix.write(2, b"rblsmtpd: %s pid %d: %s\n" % (ip, posix.getpid(), message))
    except OSError:
        pass


def build(settings: "Settings") -> Blocked | None:
    """The decision, before the greeting as rblsmtpd makes it: a Blocked
    conversation, or None (no check at all) for a client let through."""
    env, controls = settings.env, settings.controls
    ip = env.get(b"TCPREMOTEIP", b"")
    steps, wrong = options(settings.rbl or [])
    if wrong:
        log(f"rbl: rbllists: not rblsmtpd options, skipped: {' '.join(wrong)}")
    seconds = max(1, clamp_seconds(number_setting(controls, env, b"rbltimeout", LOOKUP_SECONDS)))
    lookups = Lookups(ip, env, seconds)
    refusal, talk = decide(env.get(b"RBLSMTPD"), steps, lookups)
    if lookups.failures:  # once a session: the client passed unless -c said otherwise
        outcome = "let through" if refusal is None else f"refused: {refusal.decode()}"
        log(f"rbl lookup failed ip={printable(ip)}: {'; '.join(lookups.failures)}; {outcome}")
    if refusal is None:
        return None
    rblsmtpd_log(ip, refusal)
    host_talks = (settings.auth_backend is not None
                  and number_setting(controls, env, b"rblauth", 1) != 0)
    return Blocked(refusal, talk, host_talks)
