"""Every reply text the server sends, in one place.

The strings are qmail-smtpd's (notqmail column of the behaviour reference) and,
for AUTH, the widely deployed qmail AUTH patch's: admins grep logs and write
client workarounds against these exact bytes, so they are facts, not style.
Each constant is a complete reply line including CRLF.
"""

CRLF = b"\r\n"


def greeting_line(code: bytes, greeting: bytes) -> bytes:
    """`220 `/`250 `/`250-`/`221 ` followed by the smtpgreeting text."""
    return code + greeting + CRLF


# start-up
CONTROLS = b"421 unable to read controls (#4.3.0)\r\n"
# qmail-esmtpd-server only: one source holds its per-source limit of sessions
TOO_MANY_FROM_SOURCE = b"421 too many connections from your address, try again later (#4.7.0)\r\n"



def ehlo(greeting: bytes, keywords: "list[bytes]") -> bytes:
    """The EHLO reply: the greeting, then one keyword a line, the last with `250 `."""
    lines = [greeting, *keywords]
    return b"".join(b"250-" + line + CRLF for line in lines[:-1]) + b"250 " + lines[-1] + CRLF


# ordinary commands
OK = b"250 ok\r\n"
FLUSHED = b"250 flushed\r\n"
VRFY = b"252 send some mail, i'll try my best\r\n"
HELP = b"214 notqmail home page: https://notqmail.org\r\n"
UNIMPLEMENTED = b"502 unimplemented (#5.5.1)\r\n"
SYNTAX = b"555 syntax error (#5.5.4)\r\n"
WANT_MAIL = b"503 MAIL first (#5.5.1)\r\n"
WANT_RCPT = b"503 RCPT first (#5.5.1)\r\n"
BADMAILFROM = b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n"
NO_GATEWAY = b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"
TIMEOUT = b"451 timeout (#4.4.2)\r\n"
# ours: a line longer than protocol.COMMAND_LINE (qmail ran out of memory:
# 421 out of memory); RFC 5321 4.5.3.1.4's "500 line too long", then the end
LINE_TOO_LONG = b"500 line too long, closing connection (#5.5.2)\r\n"
# recipient checks: qmail-local's bounce text, the badrcptto patch's, and ours
NO_MAILBOX = b"550 sorry, no mailbox here by that name (#5.1.1)\r\n"
BADRCPTTO = b"553 sorry, mail to that recipient is not accepted (#5.7.1)\r\n"
TOO_MANY_UNKNOWN = b"421 too many unknown recipients, closing connection (#4.7.1)\r\n"
# rblsmtpd's (ucspi-tcp 0.88) to a listed client: its greeting and its answer
# to HELO, EHLO, MAIL, RSET and NOOP; the refusal itself is 451 or 553 and the
# list's text (check_rbl.py)
RBL_GREETING = b"220 rblsmtpd.local\r\n"
RBL_OK = b"250 rblsmtpd.local\r\n"
RBL_QUIT = b"221 rblsmtpd.local\r\n"


def spp_failure(plugin: bytes, reason: str) -> bytes:
    """qmail-spp's words for a plugin that could not run (or, ours, ran too long)."""
    return b"451 qmail-spp failure: " + plugin + b": " + reason.encode() + b" (#4.3.0)\r\n"


# DATA
GO_AHEAD = b"354 go ahead\r\n"
QQT_FAILURE = b"451 qqt failure (#4.3.0)\r\n"
STRAY_NEWLINE = b"451 See https://cr.yp.to/docs/smtplf.html.\r\n"
TOO_MANY_HOPS = b"554 too many hops, this message is looping (#5.4.6)\r\n"
TOO_BIG = b"552 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n"


def accepted(seconds: int, qp: int) -> bytes:
    """The 250 after a message was queued: `250 ok <time> qp <pid>`."""
    return b"250 ok %d qp %d\r\n" % (seconds, qp)


# qmail-queue exit status -> reply text; a leading D is permanent (554),
# anything else temporary (451), as in qmail's qmail_close().
QQ_EXEC_FAILED = 120
QQ_CRASHED = b"Zqq crashed (#4.3.0)"
QQ_READ_ERROR = b"Zqq read error (#4.3.0)"
QQ_PERMANENT = b"Dqq permanent problem (#5.3.0)"
QQ_TEMPORARY = b"Zqq temporary problem (#4.3.0)"
QQ_EXIT_TEXT = {
    11: b"Denvelope address too long for qq (#5.1.3)",
    115: b"Denvelope address too long for qq (#5.1.3)",
    31: b"Dmail server permanently rejected message (#5.3.0)",
    51: b"Zqq out of memory (#4.3.0)",
    52: b"Zqq timeout (#4.3.0)",
    53: b"Zqq write error or disk full (#4.3.0)",
    54: QQ_READ_ERROR,
    55: b"Zqq unable to read configuration (#4.3.0)",
    56: b"Zqq trouble making network connection (#4.3.0)",
    61: b"Zqq trouble in home directory (#4.3.0)",
    62: b"Zqq trouble creating files in queue (#4.3.0)",
    63: b"Zqq trouble creating files in queue (#4.3.0)",
    64: b"Zqq trouble creating files in queue (#4.3.0)",
    65: b"Zqq trouble creating files in queue (#4.3.0)",
    66: b"Zqq trouble creating files in queue (#4.3.0)",
    71: b"Zmail server temporarily rejected message (#4.3.0)",
    72: b"Zconnection to mail server timed out (#4.4.1)",
    73: b"Zconnection to mail server rejected (#4.4.1)",
    74: b"Zcommunication with mail server failed (#4.4.2)",
    81: b"Zqq internal bug (#4.3.0)",
    91: b"Zqq internal bug (#4.3.0)",
    QQ_EXEC_FAILED: b"Zunable to exec qq (#4.3.0)",
}


def queue_failure(text: bytes) -> bytes:
    """Turn a D/Z-prefixed qmail-queue text into the 554 or 451 reply."""
    return (b"554 " if text[:1] == b"D" else b"451 ") + text[1:] + CRLF

# our own: a bug must end the session with a clear temporary reply, never a traceback
INTERNAL_ERROR = b"421 internal error, closing connection (#4.3.0)\r\n"

# STARTTLS (the qmail TLS patch's texts; the 454's reason is ours, details go to the log)
STARTTLS_READY = b"220 ready for tls\r\n"
STARTTLS_PARAMETERS = b"501 Syntax error (no parameters allowed) (#5.5.4)\r\n"
TLS_UNAVAILABLE = b"454 TLS certificate or key cannot be loaded (#4.3.0)\r\n"

# SMTP AUTH (the qmail AUTH patch's texts; the 454 for the database is ours)
AUTH_OK = b"235 ok, go ahead (#2.0.0)\r\n"
AUTH_FAILED = b"535 authentication failed (#5.7.1)\r\n"
AUTH_PROMPT_USER = b"334 VXNlcm5hbWU6\r\n"  # base64 "Username:"
AUTH_PROMPT_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"  # base64 "Password:"
AUTH_PROMPT_PLAIN = b"334 \r\n"
AUTH_CANCELED = b"501 auth exchange canceled (#5.0.0)\r\n"
AUTH_MALFORMED = b"501 malformed auth input (#5.5.4)\r\n"
AUTH_ALREADY = b"503 you're already authenticated (#5.5.0)\r\n"
AUTH_IN_TRANSACTION = b"503 no auth during mail transaction (#5.5.0)\r\n"
AUTH_MECHANISM = b"504 auth type unimplemented (#5.5.1)\r\n"
AUTH_LINE_TOO_LONG = (b"500 auth exchange line too long, closing connection "
                      b"(#5.5.6)\r\n")  # ours: RFC 4954's 5.5.6, protocol.SASL_LINE
AUTH_TOO_MANY = b"421 too many failed authentication attempts, closing connection (#4.7.0)\r\n"
SENDER_NOT_YOURS = (b"553 sorry, that envelope sender does not belong to the authenticated "
                    b"user (#5.7.1)\r\n")  # ours: control/senderbinding
AUTH_NEEDS_TLS = b"538 auth not available without TLS (#5.3.3)\r\n"
AUTH_REQUIRED = b"530 authentication required (#5.7.0)\r\n"  # ours: SMTPAUTH="!" (RFC 4954)
AUTH_TEMP_DB = b"454 temporary authentication failure, try again later (#4.3.0)\r\n"
AUTH_TEMP_PIPE = b"454 oops, unable to open pipe and I can't auth (#4.3.0)\r\n"
AUTH_TEMP_START = b"454 oops, child won't start and I can't auth (#4.3.0)\r\n"
AUTH_TEMP_WRITE = b"454 oops, unable to write pipe and I can't auth (#4.3.0)\r\n"
AUTH_TEMP_CHILD = b"454 oops, problem with child and I can't auth (#4.3.0)\r\n"
AUTH_THROTTLED = (b"454 too many failed logins from your network, "
                  b"try again later (#4.7.0)\r\n")  # ours: auth/throttle.py
# auth.Verdict.tempfail -> its 454 (keys are the reasons named in auth/__init__.py)
AUTH_TEMPORARY = {
    "database": AUTH_TEMP_DB,
    "pipe": AUTH_TEMP_PIPE,
    "start": AUTH_TEMP_START,
    "write": AUTH_TEMP_WRITE,
    "child": AUTH_TEMP_CHILD,
    "throttled": AUTH_THROTTLED,
}
SIZE_EXCEEDED = TOO_BIG  # MAIL ... SIZE=n over databytes: the same words at MAIL time

# the daily sending limit (ours)
LIMIT_REACHED = (b"451 daily sending limit reached for this account, "
                 b"try again tomorrow (#4.7.1)\r\n")
LIMIT_RECIPIENTS = (b"452 too many recipients: daily sending limit reached for this "
                    b"account (#4.5.3)\r\n")  # RFC 5321 4.5.3.1.10: send to those accepted
LIMIT_UNAVAILABLE = (b"451 temporary failure checking the sending limit, "
                     b"try again later (#4.3.0)\r\n")
