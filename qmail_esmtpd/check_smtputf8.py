"""SMTPUTF8 (RFC 6531), as Arnt Gulbrandsen's qmail-smtputf8 patch offers it:
the keyword in the EHLO reply right after PIPELINING, and the MAIL parameter
taken, after which the transaction's Received line says UTF8SMTP (UTF8SMTPA,
UTF8SMTPS, UTF8SMTPSA: protocol.WITH).

Like the patch, it validates and refuses nothing: addresses reach the checks
and qmail-queue byte for byte as qmail-smtpd passes them, UTF-8 or not, with
the parameter or without.  Off unless control/smtputf8 or $SMTPUTF8 holds a
number other than 0 (config.Settings.smtputf8).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Settings
    from .protocol import Session, Verdict

KEYWORD = b"SMTPUTF8"


class Smtputf8:
    ehlo_after = b"PIPELINING"  # where the patch lists it: PIPELINING, SMTPUTF8, 8BITMIME

    def __init__(self) -> None:
        # The core remembers which parameters a transaction took (Session.given).
        self.mail_parameters = {KEYWORD: self.taken}

    def ehlo_keyword(self, session: "Session") -> bytes:
        return KEYWORD

    @staticmethod
    def taken(session: "Session", value: bytes) -> "Verdict | None":
        """Never a refusal: the parameter has no value to get wrong."""
        return None


def build(settings: "Settings") -> Smtputf8:
    return Smtputf8()
