"""Addresses as Debian's ucspi-tcp-ipv6 tcpserver writes them into the environment.

Its rules file is keyed by these strings, so they must come out exactly
alike, character for character, or an admin's IPv6 rules would not match:

- an IPv4 client, on an IPv4 socket or mapped (`::ffff:a.b.c.d`) on an IPv6
  one, is `a.b.c.d`, its PROTO `TCP`; with -6 (`force6`) it stays
  `::ffff:a.b.c.d` and its PROTO is `TCP6`;
- an IPv6 client is in lowercase hex without leading zeros, its longest
  run of zero groups (the first of equally long ones) written `::` even
  when it is a single group (`2001:db8::1:1:1:1:1`, where RFC 5952 and
  inet_ntop keep the lone 0), and never a dotted tail but for a mapped
  address (`::102:304`, not `::1.2.3.4`); its PROTO is `TCP6`;
- the TCP6 variables (TCP6REMOTEIP, TCP6LOCALIP) always hold the IPv6 form,
  mapped ones as `::ffff:a.b.c.d`.
"""

import socket

MAPPED = "::ffff:"


def ip6_text(packed: bytes) -> str:
    """A 16-byte address as ucspi-tcp-ipv6 prints it (see above)."""
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return MAPPED + socket.inet_ntop(socket.AF_INET, packed[12:])
    groups = [packed[i] << 8 | packed[i + 1] for i in range(0, 16, 2)]
    best_start, best_length, start = 0, 0, None
    for i, group in enumerate(groups + [1]):  # the sentinel ends a trailing run
        if group == 0 and start is None:
            start = i
        elif group != 0 and start is not None:
            if i - start > best_length:
                best_start, best_length = start, i - start
            start = None
    if not best_length:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best_start])
    tail = ":".join(f"{g:x}" for g in groups[best_start + best_length:])
    return f"{head}::{tail}"


def tcp_ips(host: str, force6: bool = False) -> tuple[str, str]:
    """(TCP…IP, TCP6…IP) for an address as accept() or getsockname() give it
    (`a.b.c.d` on an IPv4 socket; inet_ntop's text, perhaps `%scope`, on IPv6)."""
    if ":" not in host:  # an IPv4 socket: the usual case, kept cheap
        return (MAPPED + host if force6 else host), MAPPED + host
    if host.startswith(MAPPED) and "." in host:
        return (host if force6 else host[len(MAPPED):]), host
    text = ip6_text(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]))
    return text, text


def proto(tcp_ip: str) -> bytes:
    """$PROTO for a client whose TCPREMOTEIP is `tcp_ip`: TCP6 exactly when it
    is written as IPv6 (an IPv6 client, or any client under -6)."""
    return b"TCP6" if ":" in tcp_ip else b"TCP"
