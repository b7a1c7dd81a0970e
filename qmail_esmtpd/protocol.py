"""The SMTP state machine of qmail-smtpd, without I/O.

`Session.handle()` takes one command line and returns the reply bytes and
what the caller must do next.  The DATA transaction is decided here too:
`open_message()` gives the 354 (and the decoder for the stream),
`finish_message()` the envelope or nothing, `queued()` the final reply.
The daily limit (auth/limit.py has its rules) is charged at
`finish_message()` and given back in `queued()` when qmail-queue refused
the message.

Every refusal that is policy rather than grammar is a check: at each stage
(STAGES) the session asks the checks the configuration switched on
(config.CHECKS), in order, and the first refusal wins.  Nothing here touches a file
descriptor, the environment, a file or a database: the adapters (server.py
and cli.py) hand in plain values.
"""

import time

from . import replies
from .address import MAX_ADDRESS, parse, rewrite_localiphost
from .config import leading_number
from .message import MAX_HOPS, DataDecoder, received

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .auth import Authenticator, Limit
    from .auth.sasl import Exchange

    Verdict = tuple[bytes, int]  # a refusal: the reply, and what the caller does next
    Check = Callable[["Session", bytes], Verdict | None]
    Keyword = Callable[["Session"], bytes | None]
    Offer = tuple[Keyword, bytes | None]  # the keyword, and the one it follows (None: the last)
    Parameter = Callable[["Session", bytes], Verdict | None]

# What the caller does after writing the reply.
BUFFER = 0   # nothing; the reply may wait for the next read (MAIL, RCPT, RSET)
FLUSH = 1    # flush the reply now
DATA = 2     # start qmail-queue, then call open_message()
QUIT = 3     # flush and exit 0
DROP = 4     # flush and exit 1
STARTTLS = 5  # load the certificate, then call starttls_ready()

# The longest line read before DATA, bytes before the LF: qmail-smtpd had no
# bound (lines of 100 000 bytes are recorded working); an answer inside AUTH
# gets RFC 4954's 12288, the AUTH line itself too.  Longer ends the session.
COMMAND_LINE = 128 * 1024
SASL_LINE = 12288

# The stages at which checks are asked; a check answers one with its
# `on_<stage>` method (Checks.assemble).  The value each check gets:
AT_CONNECT = "connect"  # b"", before the greeting: a verdict replaces it
AT_COMMAND = "command"  # every command line (not AUTH's answers), before its verb
AT_HELO = "helo"        # the HELO/EHLO argument
AT_MAIL = "mail"        # the sender
AT_RCPT = "rcpt"        # the recipient
AT_DATA = "data"        # b""
AT_AUTH = "auth"        # the user a right password logged in
AT_END = "end"          # b"", once the session is over; verdicts are not asked for
STAGES = (AT_CONNECT, AT_COMMAND, AT_HELO, AT_MAIL, AT_RCPT, AT_DATA, AT_AUTH, AT_END)
# What a check may answer besides None (no objection) and a (reply, action)
# refusal: accept the command now, asking no later check (qmail-spp's `O`).
ACCEPT_NOW = (replies.OK, BUFFER)


class Checks:
    """What a session asks its checks: each stage's hooks in order, and what
    the checks add to EHLO and to MAIL.  Also, for the adapter that starts
    qmail-queue, what they change in its environment."""

    __slots__ = ("stages", "keywords", "parameters", "environment")

    def __init__(self, stages: "dict[str, tuple[Check, ...]] | None" = None,
                 keywords: "tuple[Offer, ...]" = (),
                 parameters: "dict[bytes, Parameter] | None" = None,
                 environment: "tuple[Callable[[], dict[bytes, bytes | None]], ...]" = ()
                 ) -> None:
        self.stages = stages or {}
        self.keywords = keywords  # EHLO keywords, offered before AUTH, or after a named one
        self.parameters = parameters or {}  # MAIL parameters by upper-case name (`SIZE=`)
        self.environment = environment  # variables set (or None: unset) for qmail-queue

    @classmethod
    def assemble(cls, checks: "Iterable[object]") -> "Checks":
        """Check objects, in the order they are to be asked, read by their methods:

            on_<stage>(session, value) -> None | (reply, action) | ACCEPT_NOW
                for each stage of STAGES it answers (on_end: told only)
            ehlo_keyword(session) -> bytes | None          an EHLO keyword, before
                AUTH, or right after `ehlo_after` (b"PIPELINING") when that is offered
            mail_parameters = {b"NAME=": handler}          MAIL parameters (`NAME`
                without a value); handler(session, value) answers as on_mail
            queue_environment() -> {name: value, or None to unset}
        """
        stages: dict[str, list[Check]] = {}
        keywords: list[Offer] = []
        parameters: dict[bytes, Parameter] = {}
        environment: list[Callable[[], dict[bytes, bytes | None]]] = []
        for check in checks:
            for stage in STAGES:
                hook = getattr(check, "on_" + stage, None)
                if hook is not None:
                    stages.setdefault(stage, []).append(hook)
            offer = getattr(check, "ehlo_keyword", None)
            if offer is not None:
                keywords.append((offer, getattr(check, "ehlo_after", None)))
            parameters.update(getattr(check, "mail_parameters", {}))
            changes = getattr(check, "queue_environment", None)
            if changes is not None:
                environment.append(changes)
        return cls({stage: tuple(hooks) for stage, hooks in stages.items()},
                   tuple(keywords), parameters, tuple(environment))


NO_CHECKS = Checks()


class Peer:
    """What tcpserver told us about the connection, as qmail-smtpd uses it."""

    __slots__ = ("remoteip", "remotehost", "remoteinfo", "localhost")

    def __init__(self, remoteip: bytes = b"unknown", remotehost: bytes = b"unknown",
                 remoteinfo: bytes | None = None, localhost: bytes = b"unknown") -> None:
        self.remoteip = remoteip
        self.remotehost = remotehost
        self.remoteinfo = remoteinfo
        self.localhost = localhost  # our own name: TCPLOCALHOST, else TCPLOCALIP


class Session:
    """One SMTP session: the transaction state and the reply to every verb."""

    def __init__(self, greeting: bytes, peer: Peer, *,
                 relayclient: bytes | None = None,
                 localiphost: bytes | None = None,
                 is_local_ip: "Callable[[str], bool]" = lambda ip: False,
                 clock: "Callable[[], float]" = time.time,
                 auth: "Authenticator | None" = None,
                 databytes: int = 0,
                 tls_offered: bool = False,
                 auth_needs_tls: bool = False,
                 auth_required: bool = False,
                 checks: Checks = NO_CHECKS,
                 note: "Callable[[str], None]" = lambda text: None) -> None:
        self.greeting = greeting
        self.peer = peer
        self.relayclient = relayclient
        self.tcpserver_said = (relayclient, peer.remoteinfo)  # before any AUTH: TLS restores it
        self.localiphost = localiphost
        self.is_local_ip = is_local_ip
        self.clock = clock
        self.auth = auth
        self.databytes = databytes
        self.tls_offered = tls_offered  # a certificate is configured
        self.tls: bytes | None = None  # the cipher, once TLS is active
        self.auth_needs_tls = auth_needs_tls  # no AUTH in cleartext
        self.auth_required = auth_required  # submission: no MAIL before AUTH
        self.note = note  # one line for the log, for what an admin must be able to see
        self.checks = checks
        self.stages = checks.stages
        self.parameters = {**MAIL_PARAMETERS, **checks.parameters}
        self.headers = b""  # header lines a check adds below the Received line (qmail-spp `H`)
        self.later: dict[str, bytes] = {}  # a check's refusal of a later stage (qmail-spp `L`)
        self.preface = b""  # text a check sends before the next reply (qmail-spp `P`)
        self.ends_after_banner = 0  # QUIT or DROP: a CONNECT check ended the session
        self.user: bytes | None = None  # set by a successful AUTH
        self.limit: "Limit | None" = None  # the authenticated user's sending limit
        self.senders: frozenset[bytes] | None = None  # the user's own senders; None: any
        self.exchange: "Exchange | None" = None
        self.auth_failures = 0
        self.decoder: DataDecoder | None = None  # the message being received
        self.charged = False  # the message in hand counts against the limit
        self.refusal: bytes | None = None  # the limit's reply instead of queueing
        self.helo: bytes | None = None
        self.seen_mail = False
        self.sender = b""
        self.sender_accepted_now = False  # a check vouched for it: qmail's own sender checks pass
        self.size = 0  # the MAIL SIZE= parameter (AUTH sessions only)
        self.given: frozenset[bytes] = frozenset()  # the MAIL parameters this transaction took
        self.recipient = b""  # the address of the RCPT being asked about
        self.recipients: list[bytes] = []
        self.rcpt_asked = 0  # RCPT commands with a valid address in this transaction
        self.left = 0  # recipients the limit allows in this transaction
        self.limit_noted = False  # this transaction's refusal is in the log
        # qmail-smtpd's smtpcommands[]
        self.verbs = {
            b"helo": self.helo_, b"ehlo": self.ehlo, b"mail": self.mail,
            b"rcpt": self.rcpt, b"data": self.data, b"rset": self.rset,
            b"noop": self.noop, b"vrfy": self.vrfy, b"help": self.help_,
            b"quit": self.quit,
        }
        if auth is not None:
            self.verbs[b"auth"] = self.auth_
        if tls_offered:
            self.verbs[b"starttls"] = self.starttls

    # -- entry points -----------------------------------------------------
    def banner(self) -> bytes:
        """The greeting; a CONNECT check's text replaces it (as under qmail-spp,
        the session goes on unless the check also hung up: `ends_after_banner`)."""
        verdict = self.ask(AT_CONNECT, b"") if AT_CONNECT in self.stages else None
        preface, self.preface = self.preface, b""
        if verdict is not None and verdict is not ACCEPT_NOW:
            self.ends_after_banner = verdict[1] if verdict[1] in (DROP, QUIT) else 0
            return preface + verdict[0]
        return preface + replies.greeting_line(b"220 ", self.greeting + b" ESMTP")

    def ask(self, stage: str, value: bytes) -> "Verdict | None":
        """A refusal saved for this stage, else the stage's checks in order: the
        first refusal (or ACCEPT_NOW) wins."""
        if self.later:
            saved = self.later.get(stage)
            if saved:
                return saved, BUFFER
        for check in self.stages.get(stage, ()):
            verdict = check(self, value)
            if verdict is not None:
                return verdict
        return None

    def handle(self, line: bytes) -> tuple[bytes, int]:
        """One command line (LF and one CR already removed) -> (reply, action)."""
        nul = line.find(b"\0")
        if nul >= 0:
            line = line[:nul]
        if self.exchange is not None:
            self.exchange.respond(line)
            return self._auth_step(self.exchange)
        reply, action = self._command(line)
        if self.preface:  # a check's text goes first
            reply, self.preface = self.preface + reply, b""
        return reply, action

    def _command(self, line: bytes) -> tuple[bytes, int]:
        if AT_COMMAND in self.stages:
            verdict = self.ask(AT_COMMAND, line)
            if verdict is not None and verdict is not ACCEPT_NOW:
                return verdict
        space = line.find(b" ")
        if space < 0:
            verb, arg = line, b""
        else:
            verb, arg = line[:space], line[space + 1:].lstrip(b" ")
        handler = self.verbs.get(verb.lower())
        if handler is None:
            return replies.UNIMPLEMENTED, FLUSH
        return handler(arg)

    def end(self) -> None:
        """The session is over (QUIT, drop, timeout, hang-up): the END checks' turn."""
        for check in self.stages.get(AT_END, ()):
            check(self, b"")

    def line_limit(self) -> int:
        """How many bytes the next line may have before its LF."""
        return SASL_LINE if self.exchange is not None else COMMAND_LINE

    def line_too_long(self, auth: bool = False) -> bytes:
        """The last reply of a session whose line passed line_limit() (or an
        AUTH line SASL_LINE), and its log line."""
        sasl, self.exchange = auth or self.exchange is not None, None
        ip = self.peer.remoteip.decode("ascii", "replace")
        self.note(f"{'auth' if sasl else 'command'} line too long ip={ip}: "
                  f"over {SASL_LINE if sasl else COMMAND_LINE} bytes, session ended")
        return replies.AUTH_LINE_TOO_LONG if sasl else replies.LINE_TOO_LONG

    # -- verbs -----------------------------------------------------------
    def _hello(self, arg: bytes) -> None:
        self.seen_mail = False
        self.helo = arg

    def helo_(self, arg: bytes) -> tuple[bytes, int]:
        refused = self._refused(AT_HELO, arg)
        if refused is not None:
            return refused
        self._hello(arg)
        return replies.greeting_line(b"250 ", self.greeting), FLUSH

    def ehlo(self, arg: bytes) -> tuple[bytes, int]:
        refused = self._refused(AT_HELO, arg)
        if refused is not None:
            return refused
        self._hello(arg)
        return replies.ehlo(self.greeting, self.ehlo_keywords()), FLUSH

    def _refused(self, stage: str, value: bytes) -> "Verdict | None":
        """A check's refusal of a command that has no state of its own to undo."""
        verdict = self.ask(stage, value) if stage in self.stages or self.later else None
        return None if verdict is ACCEPT_NOW else verdict

    def ehlo_keywords(self) -> list[bytes]:
        """The extensions we offer, in the order qmail and the AUTH patch list
        them; the checks' own (Checks.keywords) before AUTH, or where they ask."""
        keywords = [b"PIPELINING", b"8BITMIME"]
        if self.tls_offered and self.tls is None:
            keywords.insert(0, b"STARTTLS")
        if self.auth is not None:
            keywords.append(b"SIZE %d" % self.databytes)
        for offer, after in self.checks.keywords:
            keyword = offer(self)
            if keyword is not None:
                at = keywords.index(after) + 1 if after in keywords else len(keywords)
                keywords.insert(at, keyword)
        if self.auth is not None and (self.tls is not None or not self.auth_needs_tls):
            keywords.append(b"AUTH " + b" ".join(self.auth.mechanisms))
        return keywords

    def _address(self, arg: bytes) -> bytes | None:
        addr = rewrite_localiphost(parse(arg), self.localiphost, self.is_local_ip)
        return None if len(addr) > MAX_ADDRESS else addr

    def mail(self, arg: bytes) -> tuple[bytes, int]:
        if self.auth_required and self.user is None:
            return replies.AUTH_REQUIRED, BUFFER
        addr = self._address(arg)
        if addr is None:
            return replies.SYNTAX, BUFFER
        previous, self.sender = self.sender, addr  # checks see it, may change it (qmail-spp `C`)
        verdict, given = self._mail_parameters(arg)
        if verdict is None:
            verdict = self.ask(AT_MAIL, addr)
        if verdict is not None and verdict is not ACCEPT_NOW:
            self.sender = previous
            return verdict
        self.given = given
        self.sender_accepted_now = verdict is ACCEPT_NOW
        self.seen_mail = True
        self.recipients = []
        self.rcpt_asked = 0
        return replies.OK, BUFFER

    def _mail_parameters(self, arg: bytes) -> "tuple[Verdict | None, frozenset[bytes]]":
        """Each parameter the table knows, the first of each name (unknown ones
        are ignored, as qmail ignores them all): a refusal, and the names taken."""
        self.size = 0
        table = self.parameters
        seen: set[bytes] = set()
        for name, value in mail_parameters(arg):
            handler = table.get(name)
            if handler is not None and name not in seen:
                seen.add(name)
                verdict = handler(self, value)
                if verdict is not None:
                    return verdict, frozenset()
        return None, frozenset(seen)

    def rcpt(self, arg: bytes) -> tuple[bytes, int]:
        if not self.seen_mail:
            return replies.WANT_MAIL, BUFFER
        addr = self._address(arg)
        if addr is None:
            return replies.SYNTAX, BUFFER
        self.rcpt_asked += 1
        self.recipient = addr  # the checks see it (a check may change it: qmail-spp `C`)
        verdict = self.ask(AT_RCPT, addr)
        if verdict is not None and verdict is not ACCEPT_NOW:
            return verdict
        addr = self.recipient
        if self.relayclient is not None:
            addr += self.relayclient
        self.recipients.append(addr)
        return replies.OK, BUFFER

    def data(self, arg: bytes) -> tuple[bytes, int]:
        if not self.seen_mail:
            return replies.WANT_MAIL, FLUSH
        if not self.recipients:
            return replies.WANT_RCPT, FLUSH
        verdict = self._refused(AT_DATA, b"")
        if verdict is not None:
            return verdict[0], FLUSH if verdict[1] == BUFFER else verdict[1]
        self.seen_mail = False
        return b"", DATA

    def rset(self, arg: bytes) -> tuple[bytes, int]:
        self.seen_mail = False
        self.headers = b""
        self.later = {}
        return replies.FLUSHED, BUFFER

    def noop(self, arg: bytes) -> tuple[bytes, int]:
        return replies.OK, FLUSH

    def vrfy(self, arg: bytes) -> tuple[bytes, int]:
        return replies.VRFY, FLUSH

    def help_(self, arg: bytes) -> tuple[bytes, int]:
        return replies.HELP, FLUSH

    # -- STARTTLS (only offered when a certificate is configured) ---------
    def starttls(self, arg: bytes) -> tuple[bytes, int]:
        if self.tls is not None:
            return replies.UNIMPLEMENTED, FLUSH
        if arg:
            return replies.STARTTLS_PARAMETERS, FLUSH
        return b"", STARTTLS

    def starttls_ready(self, loaded: bool) -> bytes:
        """220 once the certificate loaded; else 454 and the session goes on in cleartext."""
        return replies.STARTTLS_READY if loaded else replies.TLS_UNAVAILABLE

    def tls_started(self, cipher: bytes) -> None:
        """RFC 3207: after the handshake the session starts over, as if just connected:
        what the client told us before (HELO, a transaction, an AUTH) is forgotten."""
        self.tls = cipher
        self.helo = None
        self.seen_mail = False
        self.user = self.limit = self.senders = None
        self.relayclient, self.peer.remoteinfo = self.tcpserver_said

    def quit(self, arg: bytes) -> tuple[bytes, int]:
        return replies.greeting_line(b"221 ", self.greeting), QUIT

    # -- AUTH (only offered when an authenticator is configured) ----------
    def auth_(self, arg: bytes) -> tuple[bytes, int]:
        if self.user is not None:
            return replies.AUTH_ALREADY, FLUSH
        if self.seen_mail:
            return replies.AUTH_IN_TRANSACTION, FLUSH
        if self.auth_needs_tls and self.tls is None:
            ip = self.peer.remoteip.decode("ascii", "replace")
            self.note(f"auth refused without tls ip={ip}")
            return replies.AUTH_NEEDS_TLS, FLUSH
        if len(arg) > SASL_LINE:  # RFC 4954's bound covers the initial response too
            return self.line_too_long(auth=True), DROP
        from .auth.sasl import start  # only sessions that try AUTH load it

        exchange = start(arg)
        if exchange is None:
            return replies.AUTH_MECHANISM, FLUSH
        return self._auth_step(exchange)

    def _auth_step(self, exchange: "Exchange") -> tuple[bytes, int]:
        """Prompt again, end with a 501, or verify and answer 235/535/454/421."""
        self.exchange = None if exchange.done else exchange
        if exchange.credentials is None or self.auth is None:
            return exchange.reply, FLUSH
        user, password = exchange.credentials
        verdict = self.auth.check(user, password, exchange.mechanism, exchange.authzid)
        if verdict.ok:
            refused = self._refused(AT_AUTH, verdict.user or user)
            if refused is not None:  # a check (qmail-spp [auth]) refused this login
                return refused[0], FLUSH if refused[1] == BUFFER else refused[1]
            self.user = verdict.user or user
            self.limit = verdict.limit
            self.senders = verdict.senders
            self.peer.remoteinfo = self.user
            self.relayclient = b""  # as the AUTH patch: relay like RELAYCLIENT=""
            return replies.AUTH_OK, FLUSH
        if verdict.tempfail is not None:
            return replies.AUTH_TEMPORARY[verdict.tempfail], FLUSH
        self.auth_failures += 1
        if self.auth_failures >= self.auth.max_failures:
            return replies.AUTH_TOO_MANY, DROP
        return replies.AUTH_FAILED, FLUSH

    def note_limit_refusal(self, where: str) -> None:
        """The one log line for each refusal by the daily limit: a compromised
        account shows first here."""
        from .log import printable  # AUTH sessions only

        self.limit_noted = True
        why = self.limit.why if self.limit is not None else ""
        if where == "RCPT":  # what this message holds, beside what was sent before it
            why = (f"{len(self.recipients)} recipients accepted for this message, "
                   f"the next would pass the limit; {why}")
        self.note(f"sendlimit refused user={printable(self.user or b'')} "
                  f"ip={printable(self.peer.remoteip)} at={where}: {why}")

    def child_environment(self) -> dict[bytes, bytes]:
        """What qmail-queue learns beyond our own environment: who authenticated."""
        if self.user is None:
            return {}
        return {b"TCPREMOTEINFO": self.user, b"RELAYCLIENT": b""}

    # -- the DATA transaction ----------------------------------------------
    def open_message(self, queue_started: bool) -> bytes:
        """354 once qmail-queue runs (self.decoder takes the stream), else qmail's 451."""
        if not queue_started:
            return replies.QQT_FAILURE
        self.decoder = DataDecoder(self.databytes)
        self.charged = False
        return replies.GO_AHEAD

    def received_header(self) -> bytes:
        """The first bytes qmail-queue gets."""
        peer = self.peer
        helo = self.helo
        if helo is not None and helo.lower() == peer.remotehost.lower():
            helo = None
        headers, self.headers, self.later = self.headers, b"", {}  # this message's, used up
        return received(peer.remotehost, helo, peer.remoteinfo, peer.remoteip,
                        peer.localhost, self.protocol(), self.clock()) + headers

    def protocol(self) -> bytes:
        """The Received line's `with`, as the AUTH and TLS patches write it, and
        the SMTPUTF8 patch for a transaction that asked for SMTPUTF8 (WITH)."""
        word = WITH[self.tls is not None, self.user is not None, b"SMTPUTF8" in self.given]
        if self.tls is None:
            return word
        if self.user is None:
            return word + b" (" + self.tls + b" encrypted)"
        return word + b" (" + self.tls + b" encrypted, authenticated)"

    def finish_message(self) -> bytes | None:
        """The stream ended with `.`: the envelope for qmail-queue, or None to drop it.

        A message that is looping or too big is dropped; one that the daily
        limit refuses (or cannot count) too.  Only a message that will be
        handed over whole is charged.
        """
        decoder = self.decoder
        if decoder is None or not decoder.acceptable:
            return None
        if self.limit is not None:
            charged = self.limit.charge(len(self.recipients))
            if not charged:
                if charged is not None:
                    self.note_limit_refusal("DATA")
                self.refusal = (replies.LIMIT_UNAVAILABLE if charged is None
                                else replies.LIMIT_REACHED)
                return None
            self.charged = True
        return self.envelope()

    def envelope(self) -> bytes:
        """qmail-queue's fd 1: F sender NUL, T rcpt NUL each, then NUL."""
        parts = [b"F", self.sender, b"\0"]
        for rcpt in self.recipients:
            parts += [b"T", rcpt, b"\0"]
        parts.append(b"\0")
        return b"".join(parts)

    def queued(self, verdict: bytes, qp: int) -> bytes:
        """The final reply, from qmail-queue's verdict (empty: accepted, else its
        D/Z-prefixed text): the limit's refusal, else qmail's order: queued,
        hops, size, qmail-queue's words."""
        decoder, self.decoder = self.decoder, None
        refusal, self.refusal = self.refusal, None
        if self.charged and verdict and self.limit is not None:
            self.limit.refund()  # counted, but qmail-queue did not take it
        self.charged = False
        if refusal is not None:
            return refusal
        if not verdict:
            return replies.accepted(int(self.clock()), qp)
        if decoder is not None and decoder.hops >= MAX_HOPS:
            return replies.TOO_MANY_HOPS
        if decoder is not None and decoder.overflow:
            return replies.TOO_BIG
        return replies.queue_failure(verdict)


def mail_parameters(arg: bytes) -> "list[tuple[bytes, bytes]]":
    """MAIL's parameters as the AUTH patch finds them, only after a `>`: (the
    upper-case name with its `=` if it has one, the value)."""
    gt = arg.find(b">")
    if gt <= 4:
        return []
    found = []
    for word in arg[gt + 1:].split(b" "):
        name, eq, value = word.partition(b"=")
        if name:
            found.append((name.upper() + eq, value))
    return found


def size_parameter(session: Session, value: bytes) -> "Verdict | None":
    """The AUTH patch's `SIZE=n` (AUTH sessions only); junk is 0."""
    if session.auth is not None:
        session.size = leading_number(value) or 0
    return None


# The Received line's `with` word by (TLS, AUTH, SMTPUTF8 asked for): the
# SMTPUTF8 patch drops the E and puts UTF8 before it, which gives RFC 6531's
# registered names (the TLS words are followed by the cipher, as above).
WITH = {
    (False, False, False): b"SMTP", (False, False, True): b"UTF8SMTP",
    (False, True, False): b"ESMTPA", (False, True, True): b"UTF8SMTPA",
    (True, False, False): b"ESMTPS", (True, False, True): b"UTF8SMTPS",
    (True, True, False): b"ESMTPSA", (True, True, True): b"UTF8SMTPSA",
}

# The MAIL parameters the core knows; checks add theirs (Checks.parameters).
MAIL_PARAMETERS: "dict[bytes, Parameter]" = {b"SIZE=": size_parameter}
