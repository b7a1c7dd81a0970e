"""International domain names as an admin expects them compared: a U-label
(`müller.example`) and its A-label (`xn--mller-kva.example`) name one domain,
whichever form the control file or the client wrote.

The forms come from the IDNA 2008 library `idna` (with UTS 46's mapping, so
case and Unicode normalization do not matter either), imported only when a
domain with a non-ASCII byte is met: an ASCII domain needs no conversion, and
is compared as qmail compares it, lower-cased bytes.  What `idna` refuses, and
bytes that are not UTF-8, stay as they are: such a domain matches only itself.

Callers load this module only for a domain that could be written another
way, one with a non-ASCII byte or an A-label (`xn--`): a plain session loads
neither it nor `idna`.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

ACE = b"xn--"  # the prefix of an A-label


def ascii_form(domain: bytes) -> bytes:
    """The domain lower-cased, each non-ASCII label as its A-label."""
    low = domain.lower()
    if low.isascii():
        return low
    try:
        text = low.decode("utf-8")
    except UnicodeDecodeError:
        return low
    return b".".join(label.encode("ascii") if label.isascii() else _alabel(label)
                     for label in text.split("."))


def unicode_form(domain: bytes) -> bytes:
    """The domain lower-cased, each label as its U-label (UTF-8, NFC): for what
    cannot be converted in advance, the keys of a cdb."""
    return b".".join(_ulabel(label) for label in ascii_form(domain).split(b"."))


def _alabel(label: str) -> bytes:
    idna = _library()
    if idna is not None:
        try:
            return idna.encode(label, uts46=True)
        except UnicodeError:  # idna.IDNAError among them
            pass
    return label.encode("utf-8")


def _ulabel(label: bytes) -> bytes:
    if not label.startswith(ACE):
        return label
    idna = _library()
    if idna is not None:
        try:
            return idna.decode(label).encode("utf-8")
        except UnicodeError:
            pass
    return label


_missing = False


def _library() -> "ModuleType | None":
    """`idna`, or None when the installation lacks it: then a domain matches
    only as written, as under qmail-smtpd, and the log says so once."""
    global _missing
    if _missing:
        return None
    try:
        import idna
    except ImportError as e:
        from .log import log

        _missing = True
        log(f"warning: international domains compared as written: {e}")
        return None
    return idna
