"""`qmail-esmtpd-user rcpt ADDRESS`: what RCPT TO:<ADDRESS> would get from a
client that may not relay, with recipient checking on, and which of qmail's
rules decided.  It asks the server's own checks (rcpthosts, badrcptto,
recipients) through the core, with the control files and the qmail home the
server reads; it needs no database.
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from ..auth.db import Database


def cmd_rcpt(db: "Database | None", args: "argparse.Namespace") -> int:
    """Prints the reply, the rule and the log lines the server would write;
    exit status 0 when the recipient would be taken, 1 when refused."""
    from ..check_badrcptto import BadRcptTo
    from ..check_rcpthosts import RcptHosts, Relaying
    from ..check_recipients import build as recipient_check
    from ..config import Settings
    from ..protocol import Checks, Peer, Session

    settings = Settings(os.environb)
    checks: list[object] = []
    if settings.rcpthosts is not None:
        checks.append(Relaying(RcptHosts(settings.rcpthosts, settings.morercpthosts)))
    if settings.badrcptto:
        checks.append(BadRcptTo(settings.badrcptto))
    recipients = recipient_check(settings)
    checks.append(recipients)
    notes: list[str] = []
    session = Session(settings.greeting, Peer(b"none"), checks=Checks.assemble(checks),
                      note=notes.append)
    session.handle(b"MAIL FROM:<>")
    address = os.fsencode(args.address)
    reply, _ = session.handle(b"RCPT TO:<" + address + b">")
    verdict, why = recipients.mailboxes.verdict(session.recipient)
    print(reply.decode("utf-8", "replace").rstrip("\r\n"))
    print(f"qmail: {verdict}" + (f" ({why})" if why else ""))
    for line in notes:
        print(f"log: {line}")
    return 0 if reply.startswith(b"250") else 1
