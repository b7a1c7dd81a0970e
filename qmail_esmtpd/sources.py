"""The network a client answers for: what per-source counts count.

An IPv4 client owns its address; an IPv6 client commonly owns a whole /64
(RFC 6177) and can change addresses within it at will, so counting per
address would let it slip past any limit.  The AUTH throttle, the
harvesting memory and qmail-esmtpd-server's -C all count by this.
"""


def source_of(remoteip: str) -> str | None:
    """The network a client answers for: its IPv4 address, or its IPv6 /64
    (an IPv4-mapped IPv6 address is the IPv4 one).  None when not an address."""
    parts = remoteip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return ".".join(str(int(p)) for p in parts)  # the usual case, without ipaddress
    if ":" not in remoteip:
        return None
    import ipaddress  # (13 ms: IPv6 clients only)

    try:
        address = ipaddress.ip_address(remoteip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
