"""qmail's lenient MAIL/RCPT address parsing (qmail-smtpd's addrparse).

qmail never checks `FROM:`/`TO:`, ignores ESMTP parameters and strips quotes,
source routes and backslashes; only an address of 900 bytes or more is a
syntax error.  Clients rely on this leniency, so it is reproduced exactly.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_ADDRESS = 899


def parse(arg: bytes) -> bytes:
    """The envelope address inside a MAIL/RCPT argument, before any rewrite."""
    lt = arg.find(b"<")
    if lt >= 0:
        rest = arg[lt + 1:]
        terminator = 0x3E  # '>'
    else:
        colon = arg.find(b":")
        rest = arg[colon + 1:] if colon >= 0 else b""
        rest = rest.lstrip(b" ")
        terminator = 0x20  # ' '
    if rest[:1] == b"@":  # source route: drop up to and including the first ':'
        colon = rest.find(b":")
        rest = rest[colon + 1:] if colon >= 0 else b""
    if b"\\" not in rest and b'"' not in rest:  # the common case, no copying loop
        end = rest.find(bytes((terminator,)))
        return rest if end < 0 else rest[:end]
    out = bytearray()
    escaped = quoted = False
    for ch in rest:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == terminator and not quoted:
            break
        elif ch == 0x5C:  # backslash
            escaped = True
        elif ch == 0x22:  # double quote
            quoted = not quoted
        else:
            out.append(ch)
    return bytes(out)


def bracketed_ipv4(literal: bytes) -> str | None:
    """`[a.b.c.d]` as a dotted quad, or None; like qmail's ip_scanbracket.

    The literal must be the whole text.  Each number keeps only its low
    byte, as qmail stores it in an unsigned char; 10**8 is a multiple of 256,
    so the last eight digits decide that byte, however many digits come.
    """
    if literal[:1] != b"[" or literal[-1:] != b"]":
        return None
    parts = literal[1:-1].split(b".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return ".".join(str(int(p[-8:]) & 0xFF) for p in parts)


def rewrite_localiphost(address: bytes, localiphost: bytes | None,
                        is_local_ip: "Callable[[str], bool]") -> bytes:
    """Replace `@[our.ip]` by `@localiphost` so local literals deliver locally."""
    if localiphost is None:
        return address
    at = address.rfind(b"@")
    if at < 0 or address[at + 1:at + 2] != b"[":
        return address
    ip = bracketed_ipv4(address[at + 1:])
    if ip is None or not is_local_ip(ip):
        return address
    return address[:at + 1] + localiphost


def listed(entries: "frozenset[bytes]", address: bytes) -> bool:
    """qmail's rule for badmailfrom and badrcptto: the whole address, or
    `@domain` from the last @, case-insensitively (`entries` lower-cased)."""
    low = address.lower()
    at = low.rfind(b"@")
    return low in entries or (at >= 0 and low[at:] in entries)
