"""qmail-esmtpd-server: tcpserver's rules and environment (checked against real
tcprules/tcpserver on the same cdb, and Debian's ucspi-tcp-ipv6 for IPv6),
its limits, signals, privileges and logs."""

import os
import pwd
import re
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmail_esmtpd import replies
from qmail_esmtpd.config import MAX_SECONDS
from qmail_esmtpd.serveroptions import MAX_COUNT, UsageError, parse
from qmail_esmtpd.tcpaddress import ip6_text, tcp_ips
from qmail_esmtpd.tcprules import RulesFile, decode, find_rule, lookup_keys

from harness.files import (
    closed_library_server,
    compile_users,
    self_signed_pem,
    write_launcher,
    write_program,
)
from harness.forkserver import ForkServer
from harness.netns import own_network
from harness.paths import FORKSERVER, ROOT, SERVER
from harness.system_users import let_service_user_in, service_ids, service_python
from harness.tcpserver import TcpServer
from harness.ucspi6 import Ucspi6Server, compile_rules6

# the server's two ways of serving: workers (the default) and a fork per connection
MODES = pytest.mark.parametrize("mode", [[], ["-m", "0"]], ids=["workers", "fork"])

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: a network namespace of its own")

# --- the lookup, pure ---------------------------------------------------------


def test_lookup_order_is_tcpservers_without_host_names():
    assert lookup_keys(b"10.1.2.3") == [b"10.1.2.3", b"10.1.2.", b"10.1.", b"10.", b""]


def test_ipv6_lookup_tries_each_prefix_ending_in_a_colon():
    """As ucspi-tcp-ipv6's rules.c (seen on the real binary: the table test below)."""
    assert lookup_keys(b"2001:db8:aa:bb::cc") == [
        b"2001:db8:aa:bb::cc", b"2001:db8:aa:bb::", b"2001:db8:aa:bb:", b"2001:db8:aa:",
        b"2001:db8:", b"2001:", b""]
    assert lookup_keys(b"::1") == [b"::1", b"::", b":", b""]


def test_addresses_are_written_as_ucspi_tcp_ipv6_writes_them():
    """Its ip6_fmt, not inet_ntop: a lone zero group is `::` too, the first of
    two equally long runs is, and only a mapped address has a dotted tail."""
    table = {"2001:db8:0:1:1:1:1:1": "2001:db8::1:1:1:1:1",
             "2001:db8:1:0:0:1:0:0": "2001:db8:1::1:0:0",
             "2001:DB8:0:0:1::": "2001:db8:0:0:1::", "::": "::", "::1": "::1",
             "::1.2.3.4": "::102:304", "1::": "1::", "fe80::1:2": "fe80::1:2",
             "1:2:3:4:5:6:7:8": "1:2:3:4:5:6:7:8", "::ffff:10.0.0.1": "::ffff:10.0.0.1"}
    for address, text in table.items():
        assert ip6_text(socket.inet_pton(socket.AF_INET6, address)) == text, address
    assert tcp_ips("10.0.0.1") == ("10.0.0.1", "::ffff:10.0.0.1")
    assert tcp_ips("::ffff:10.0.0.1") == ("10.0.0.1", "::ffff:10.0.0.1")
    assert tcp_ips("::ffff:10.0.0.1", force6=True) == ("::ffff:10.0.0.1",) * 2
    assert tcp_ips("10.0.0.1", force6=True) == ("::ffff:10.0.0.1",) * 2
    assert tcp_ips("fe80::1%lo") == ("fe80::1", "fe80::1")


def test_values_decode_as_tcpservers_found():
    rule = decode(b"D\0+A=1\0+B=x=y\0+NOEQUALS\0+C=cut")
    assert rule.deny and rule.variables == [(b"A", b"1"), (b"B", b"x=y")]
    assert not decode(b"").deny


def test_first_key_found_decides():
    table = {b"10.1.": b"+WHICH=two\0", b"": b"D\0"}
    assert find_rule(table.get, b"10.1.2.3").variables == [(b"WHICH", b"two")]
    assert find_rule(table.get, b"10.10.2.3").deny  # "10.1." is no prefix of "10.10."
    assert find_rule({}.get, b"10.1.2.3").variables == []


def test_rules_are_kept_per_address_until_the_file_is_replaced(tmp_path, monkeypatch):
    cdb = tmp_path / "tcp.smtp.cdb"

    def compile_rules(text: str) -> None:
        subprocess.run(["tcprules", str(cdb), f"{cdb}.tmp"], input=text.encode(), check=True)

    compile_rules('127.0.0.:allow,WHICH="one"\n:deny\n')
    rules = RulesFile(bytes(cdb))
    monkeypatch.setattr(RulesFile, "CACHED", 2)
    first = rules.rule(b"127.0.0.1")
    assert first.variables == [(b"WHICH", b"one")] and rules.rule(b"127.0.0.1") is first
    assert rules.rule(b"10.0.0.1").deny and len(rules.found) == 2
    assert rules.rule(b"127.0.0.2") is not first and len(rules.found) == 1  # started again
    compile_rules('127.0.0.:allow,WHICH="two"\n')
    assert rules.rule(b"127.0.0.2").variables == [(b"WHICH", b"two")]
    assert not rules.rule(b"10.0.0.1").deny


# --- against real tcpserver --------------------------------------------------

RULES = """\
127.0.0.1:allow,RELAYCLIENT="",WHICH="exact"
127.0.0.:allow,WHICH="three"
127.0.:deny
127.1.2.3-5:allow,WHICH="range"
127.1.:allow,WHICH="two",DATABYTES="100000"
=localhost:deny
:allow,WHICH="default",TCPLOCALHOST="from-a-rule"
"""
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.5.5", "127.1.2.4", "127.1.2.9", "127.1.9.9",
           "127.9.9.9"]
# what differs by nature between two servers: ports, and where each records
DIFFERENT = {"TCPLOCALPORT", "TCPREMOTEPORT", "TCP6LOCALPORT", "TCP6REMOTEPORT", "ENVDIR"}
# ucspi-tcp 0.88 has none of these; the server sets them as ucspi-tcp-ipv6 does
TCP6_VARIABLES = frozenset({"TCP6LOCALIP", "TCP6LOCALHOST", "TCP6REMOTEIP"})


def env_queue(directory: Path) -> Path:
    """A qmail-queue in sh: records its environment and uid per source, queues nothing."""
    return write_program(directory / "env-queue", (
        "#!/bin/sh\n"
        'env > "$ENVDIR/$TCPREMOTEIP"\n'
        'id -u > "$ENVDIR/$TCPREMOTEIP.uid"\n'
        "cat >/dev/null && cat <&1 >/dev/null\n"))


def one_session(port: int, source: str, destination: str = "127.0.0.1") -> str:
    """'denied' (closed before a greeting) or 'queued'."""
    try:
        client = smtplib.SMTP(destination, port, timeout=20, source_address=(source, 0))
    except smtplib.SMTPServerDisconnected:
        return "denied"
    with client:
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    return "queued"


def recorded(directory: Path, source: str, ignore: frozenset[str] = frozenset()) -> dict:
    path = directory / source
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if k not in DIFFERENT | ignore}


def verbose_lines(log: str, program: str) -> tuple[list[str], set[str]]:
    """The `ok`/`deny` lines in order (pids and ports as N), and the shapes of
    the others (all numbers as N)."""
    lines = [line[len(program) + 2:] for line in log.splitlines()
             if line.startswith(program + ": ")]
    return ([re.sub(r"(?<=[ :])\d+(?=$| )", "N", line) for line in lines
             if line.startswith(("ok ", "deny "))],
            {re.sub(r"\d+", "N", line) for line in lines
             if not line.startswith(("ok ", "deny "))})


@pytest.fixture
def env_dirs(tmp_path: Path, control: Path):
    let_service_user_in(tmp_path)
    dirs = {}
    for name in ("tcpserver", "forkserver"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        dirs[name].chmod(0o777)
    return dirs


def test_same_decisions_and_environment_as_tcpserver(tmp_path, control, env_dirs):
    queue = env_queue(tmp_path)
    base = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": str(queue),
            "PATH": "/usr/local/bin:/usr/bin:/bin"}
    reference = TcpServer(tmp_path, RULES, {**base, "ENVDIR": str(env_dirs["tcpserver"])},
                          [SERVER])
    ours = ForkServer(tmp_path, RULES, {**base, "ENVDIR": str(env_dirs["forkserver"])})
    try:
        for source in SOURCES:
            expected = one_session(reference.port, source)
            assert one_session(ours.port, source) == expected, source
            theirs = recorded(env_dirs["tcpserver"], source)
            mine = recorded(env_dirs["forkserver"], source, ignore=TCP6_VARIABLES)
            assert mine == theirs, source
            if expected == "queued":
                assert mine["TCPREMOTEIP"] == source and "WHICH" in mine
        assert [s for s in SOURCES if not recorded(env_dirs["forkserver"], s)] == \
            ["127.0.5.5"]
        assert recorded(env_dirs["forkserver"], "127.9.9.9")["TCPLOCALHOST"] == "from-a-rule"
        # tcpserver -v's lines, word for word but for the program's name and numbers
        theirs_lines, theirs_shapes = verbose_lines(reference.log(), "tcpserver")
        assert verbose_lines(ours.log(), "qmail-esmtpd-server") == \
            (theirs_lines[1:], theirs_shapes)  # [0]: TcpServer's probe for the port
    finally:
        reference.stop()
        ours.stop()
    if os.geteuid() == 0:  # the sessions ran as nobody, never as root
        uid = (env_dirs["forkserver"] / "127.0.0.1.uid").read_text().strip()
        assert uid == str(subprocess.run(["id", "-u", "nobody"], capture_output=True,
                                         text=True).stdout.strip())


# --- against real ucspi-tcp-ipv6 (Debian's tcpserver with the IPv6 patch) ---------

RULES6 = """\
::1:allow,WHICH="v6 exact",RELAYCLIENT=""
2001:db8:aa:bb:::allow,WHICH="ends in two colons"
2001:db8:aa:bb::allow,WHICH="four groups"
2001:db8:aa::allow,WHICH="three groups"
2001:db8:dead::deny
2001:db8::1:1:1:1:1:allow,WHICH="one zero group written ::"
2001:db8::allow,WHICH="two groups",DATABYTES="100000"
::102:304:allow,WHICH="hex, not dotted"
127.0.0.1:allow,WHICH="v4 exact"
127.0.0.:allow,WHICH="v4 three"
127.0.:deny
::ffff:127.1.0.1:allow,WHICH="mapped key: only under -6"
127.1.2.3-5:allow,WHICH="range"
127.1.:allow,WHICH="v4 two"
=localhost:deny
:::allow,WHICH="double colon"
:allow,WHICH="default",TCPLOCALHOST="from-a-rule"
"""
# (source, destination): IPv6 clients, IPv4 ones (mapped on the dual-stack
# socket), and IPv4 ones from an IPv6 socket (::ffff:a.b.c.d on the wire alike)
SOURCES6 = [
    ("::1", "::1"), ("2001:db8:aa:bb::cc", "::1"), ("2001:db8:aa:bb:1:2:3:4", "::1"),
    ("2001:db8:aa:cc::1", "2001:db8:0:1:1:1:1:1"), ("2001:db8:dead::1", "::1"),
    ("2001:db8:0:1:1:1:1:1", "::1"), ("2001:db8:1:0:0:1:0:0", "::1"),
    ("2001:db8:0:1::5", "::1"), ("::102:304", "::1"), ("::5", "::1"), ("2001:db9::1", "::1"),
    ("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.1"), ("127.0.5.5", "127.0.0.1"),
    ("127.1.2.4", "127.0.0.1"), ("127.1.0.1", "127.0.0.1"), ("127.9.9.9", "127.0.0.1"),
    ("::ffff:127.0.0.3", "::ffff:127.0.0.1"), ("::ffff:127.1.0.1", "::ffff:127.0.0.1"),
]
OWN_ADDRESSES = [source for source, _ in SOURCES6 if ":" in source and source != "::1" and
                 not source.startswith("::ffff:")]


def recorded_as(directory: Path, address: str) -> dict:
    """What the session from `address` recorded, under whichever name its
    TCPREMOTEIP gave the file (IPv6 written ucspi-tcp-ipv6's way, -6 or not)."""
    ip6 = tcp_ips(address)[1]
    for path in directory.iterdir():
        if not path.name.endswith(".uid"):
            seen = recorded(directory, path.name)
            if seen.get("TCP6REMOTEIP") == ip6:
                return seen
    return {}


@needs_root
@pytest.mark.parametrize("options", [[], ["-6"]], ids=["default", "force6"])
def test_same_decisions_and_environment_as_ucspi_tcp_ipv6(tmp_path, control, env_dirs, options):
    """Issue 25, item 1: on one cdb from ucspi-tcp-ipv6's own tcprules, both
    listening on 0 (IPv6 and IPv4 on one socket): the same allow or deny and
    the same environment (TCPREMOTEIP/TCPLOCALIP written alike, TCP6 twins,
    PROTO) for each IPv6, IPv4 and mapped source; the same -v lines for the
    IPv6 ones (an IPv4 client's keep ucspi-tcp 0.88's dotted form)."""
    queue = env_queue(tmp_path)
    cdb = tmp_path / "tcp.smtp6.cdb"
    compile_rules6(RULES6, cdb)
    base = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": str(queue),
            "PATH": "/usr/local/bin:/usr/bin:/bin"}
    with own_network(OWN_ADDRESSES):
        reference = Ucspi6Server(tmp_path, cdb, {**base, "ENVDIR": str(env_dirs["tcpserver"])},
                                 options=options)
        ours = ForkServer(tmp_path, "", {**base, "ENVDIR": str(env_dirs["forkserver"])},
                          host="0", cdb=cdb, options=options)
        try:
            decisions = {}
            for source, destination in SOURCES6:
                decisions[source] = one_session(reference.port, source, destination)
                assert one_session(ours.port, source, destination) == decisions[source], source
            theirs_lines, _ = verbose_lines(reference.log(), "tcpserver")
            mine_lines, _ = verbose_lines(ours.log(), "qmail-esmtpd-server")
        finally:
            reference.stop()
            ours.stop()
    for source, _ in SOURCES6:
        plain = source.removeprefix("::ffff:")
        theirs = recorded_as(env_dirs["tcpserver"], plain)
        assert recorded_as(env_dirs["forkserver"], plain) == theirs, source
        assert bool(theirs) == (decisions[source] == "queued"), source
    if not options:  # what the table is for: each kind of key matched somewhere
        assert {source for source, decision in decisions.items() if decision == "denied"} == \
            {"2001:db8:dead::1", "127.0.5.5"}
        which = {recorded_as(env_dirs["forkserver"], s.removeprefix("::ffff:")).get("WHICH")
                 for s, _ in SOURCES6}
        assert which >= {"v6 exact", "ends in two colons", "four groups", "three groups",
                         "one zero group written ::", "two groups", "hex, not dotted",
                         "double colon", "v4 exact", "v4 three", "range", "v4 two",
                         "default"}, which
        seen = recorded_as(env_dirs["forkserver"], "2001:db8:aa:cc::1")
        assert (seen["PROTO"], seen["TCPLOCALIP"]) == ("TCP6", "2001:db8::1:1:1:1:1")
        assert recorded_as(env_dirs["forkserver"], "127.0.0.3")["TCP6REMOTEIP"] == \
            "::ffff:127.0.0.3"
    else:  # -6: an IPv4 client is written, and looked up, as ::ffff:a.b.c.d
        seen = recorded_as(env_dirs["forkserver"], "127.1.0.1")
        assert (seen["WHICH"], seen["PROTO"], seen["TCPREMOTEIP"]) == \
            ("mapped key: only under -6", "TCP6", "::ffff:127.1.0.1")
    ipv6_lines = [line for line in theirs_lines if "." not in line]
    assert len(ipv6_lines) >= 9
    assert [line for line in mine_lines if "." not in line] == ipv6_lines


@needs_root
def test_per_source_limit_counts_an_ipv6_64(forkserver, tmp_path):
    """Issue 25, item 1: -C counts an IPv6 client's /64 as one source, as the
    AUTH throttle does, and an IPv4 client alike whether mapped or not."""
    with own_network(["2001:db8:aa:bb::1", "2001:db8:aa:bb::2", "2001:db8:aa:cc::1"]):
        server = forkserver(":allow\n", options=["-C", "1"], host="0")
        try:
            def connect(source: str, destination: str = "::1") -> socket.socket:
                return socket.create_connection((destination, server.port), timeout=20,
                                                source_address=(source, 0))

            first = connect("2001:db8:aa:bb::1")
            assert greeting(first).startswith(b"220 ")
            same_64 = connect("2001:db8:aa:bb::2")
            assert same_64.makefile("rb").read() == replies.TOO_MANY_FROM_SOURCE
            other_64 = connect("2001:db8:aa:cc::1")
            assert greeting(other_64).startswith(b"220 ")
            ipv4 = connect("127.0.0.7", "127.0.0.1")
            assert greeting(ipv4).startswith(b"220 ")
            mapped = connect("::ffff:127.0.0.7", "::ffff:127.0.0.1")
            assert mapped.makefile("rb").read() == replies.TOO_MANY_FROM_SOURCE
            for sock in (first, same_64, other_64, ipv4, mapped):
                sock.close()
            log = wait_count(server, ": end ", 5)
        finally:
            server.stop()
    assert re.search(r"limit \d+ localhost:::1:\d+ :2001:db8:aa:bb::2::\d+", log), log
    assert re.search(r"limit \d+ localhost:127\.0\.0\.1:\d+ :127\.0\.0\.7::\d+", log), log


def test_listens_as_ucspi_tcp_ipv6_on_0_and_an_ipv6_address(forkserver):
    """0 takes IPv6 and IPv4 clients on one socket, -4 IPv4 only, ::1 IPv6 only."""
    both = forkserver(":allow\n", host="0")
    assert one_session(both.port, "::1", "::1") == "queued"
    assert one_session(both.port, "127.0.0.1") == "queued"
    assert re.search(r"ok \d+ localhost:::1:\d+ :::1::\d+", both.wait_log(":::1::"))
    ipv4 = forkserver(":allow\n", host="0", options=["-4"])
    assert one_session(ipv4.port, "127.0.0.1") == "queued"
    with pytest.raises(OSError):
        socket.create_connection(("::1", ipv4.port), timeout=5).close()
    ipv6 = forkserver(":allow\n", host="::1", rules6=True)
    assert one_session(ipv6.port, "::1", "::1") == "queued"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ipv6.port), timeout=5).close()


def test_a_replaced_rules_file_counts_from_the_next_connection(forkserver, queue):
    server = forkserver(":allow\n")
    assert one_session(server.port, "127.0.0.1") == "queued"
    server.compile_rules("127.0.0.1:deny\n:allow\n")
    assert one_session(server.port, "127.0.0.1") == "denied"
    assert one_session(server.port, "127.0.0.3") == "queued"


def test_missing_rules_drop_the_connection_unless_x(forkserver, tmp_path):
    server = forkserver(":allow\n")
    server.cdb.unlink()
    assert one_session(server.port, "127.0.0.1") == "denied"
    assert "unable to read" in server.wait_log("unable to read")
    allowing = forkserver(":allow\n", options=["-X"])
    allowing.cdb.unlink()
    assert one_session(allowing.port, "127.0.0.1") == "queued"


# --- limits ------------------------------------------------------------------


def greeting(sock: socket.socket) -> bytes:
    return sock.makefile("rb").readline()


@MODES
def test_concurrency_limit_keeps_the_next_connection_in_the_backlog(forkserver, mode):
    server = forkserver(":allow\n", options=["-c", "1", *mode])
    first = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert greeting(first).startswith(b"220 ")
    second = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    second.settimeout(1)  # a negative check: nothing while the first one runs
    with pytest.raises(socket.timeout):
        second.recv(1)
    first.sendall(b"QUIT\r\n")
    first.close()
    second.settimeout(20)
    assert greeting(second).startswith(b"220 ")
    second.close()


@MODES
def test_per_source_limit_answers_421_from_a_child(forkserver, mode):
    server = forkserver(":allow\n", options=["-C", "1", *mode])
    first = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                     source_address=("127.0.0.7", 0))
    assert greeting(first).startswith(b"220 ")
    again = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                     source_address=("127.0.0.7", 0))
    assert again.makefile("rb").read() == replies.TOO_MANY_FROM_SOURCE
    other = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                     source_address=("127.0.0.8", 0))
    assert greeting(other).startswith(b"220 ")
    for sock in (first, again, other):
        sock.close()
    wait_count(server, ": end ", 3)
    assert one_session(server.port, "127.0.0.7") == "queued"  # the count went down again
    assert re.search(r"limit \d+ localhost:127\.0\.0\.1:\d+ :127\.0\.0\.7::\d+",
                     server.wait_log(":127.0.0.7::"))


@MODES
def test_a_source_over_its_limit_that_the_rules_deny_is_closed_without_a_byte(forkserver, mode):
    """Issue 24, item 5: the rules first, then the count.  A source with a
    session running that the rules now deny gets no 421, nor do many fast
    connections from a denied address; neither counts against -C."""
    server = forkserver(":allow\n", options=["-C", "1", *mode])
    first = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                     source_address=("127.0.0.7", 0))
    assert greeting(first).startswith(b"220 ")
    server.compile_rules("127.0.0.7:deny\n127.0.0.9:deny\n:allow\n")
    again = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                     source_address=("127.0.0.7", 0))
    assert again.makefile("rb").read() == b""
    flood = [socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                      source_address=("127.0.0.9", 0)) for _ in range(100)]
    assert [sock.makefile("rb").read() for sock in flood] == [b""] * 100
    for sock in (first, again, *flood):
        sock.close()
    log = wait_count(server, ": end ", 102)
    assert "limit " not in log and log.count(": deny ") == 101, log


def test_a_source_over_its_limit_on_an_smtps_port_gets_no_cleartext(forkserver, control):
    """Issue 24, item 5: a TLS client waits for a handshake; a cleartext 421 would
    be a protocol error to it (WRONG_VERSION_NUMBER).  The connection is closed
    without a byte, as SMTPS is set by a rule or in the server's environment."""
    import ssl

    self_signed_pem(control / "servercert.pem").chmod(0o644)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for rules, env in ((':allow,SMTPS=""\n', {}), (":allow\n", {"SMTPS": ""})):
        server = forkserver(rules, env=env, options=["-C", "1"])
        with context.wrap_socket(socket.create_connection(("127.0.0.1", server.port),
                                                          timeout=20)) as first:
            assert greeting(first).startswith(b"220 ")
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as again:
                assert again.makefile("rb").read() == b""
        assert re.search(r"limit \d+ localhost:127\.0\.0\.1:\d+ :127\.0\.0\.1::\d+",
                         server.wait_log("limit "))


def test_a_client_that_resets_before_the_accept_gets_tcpservers_lines(forkserver):
    """Issue 24, item 6: the address accept() gave is the one used (getpeername()
    fails once the client reset): `pid` and `ok` lines, the session's own end."""
    server = forkserver(":allow\n", options=["-c", "1"])
    first = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert greeting(first).startswith(b"220 ")
    resetting = socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                         source_address=("127.0.0.6", 0))
    resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetting.close()  # an RST while it waits in the backlog (-c 1)
    first.sendall(b"QUIT\r\n")
    first.close()
    log = wait_count(server, ": end ", 2)
    assert "session failed" not in log, log
    (pid,) = re.findall(r": pid (\d+) from 127\.0\.0\.6\n", log)
    assert re.search(rf": ok {pid} localhost:127\.0\.0\.1:\d+ :127\.0\.0\.6::\d+\n", log), log
    assert re.search(rf": end {pid} status 256\n", log), log  # the session's exit 1


def test_a_user_without_a_group_is_refused(monkeypatch):
    """Issue 24, item 4: -u alone would keep group 0 and the starter's
    supplementary groups; so would -U with $UID and no $GID."""
    for argv in (["-u", "65534", "0", "25"], ["-U", "0", "25"]):
        monkeypatch.setenv("UID", "65534")
        monkeypatch.delenv("GID", raising=False)
        with pytest.raises(UsageError, match="needs -g"):
            parse(argv)
    monkeypatch.setenv("GID", "65534")
    opts = parse(["-U", "0", "25"])
    assert (opts.uid, opts.gid) == (65534, 65534)
    out = subprocess.run([str(FORKSERVER), "-u", "65534", "127.0.0.1", "0"],
                         capture_output=True, timeout=60)
    assert out.returncode == 100 and b"-u needs -g" in out.stderr, out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: changes ids")
def test_sessions_keep_no_group_of_the_starter(forkserver, tmp_path):
    """Issue 24, item 4: started with a supplementary group (42, shadow on
    Debian), the server's sessions have only the group -g gave; -g 0 is refused."""
    directory = tmp_path / "ids"
    directory.mkdir()
    directory.chmod(0o777)
    queue = write_program(tmp_path / "ids-queue", (
        "#!/bin/sh\n"
        'id -g > "$ENVDIR/gid"; id -G > "$ENVDIR/groups"\n'
        "cat >/dev/null && cat <&1 >/dev/null\n"))
    server = forkserver(env={"QMAILQUEUE": str(queue), "ENVDIR": str(directory)},
                        wrapper=["setpriv", "--groups", "42"])
    assert one_session(server.port, "127.0.0.1") == "queued"
    gid = str(pwd.getpwnam("nobody").pw_gid)
    assert (directory / "gid").read_text().split() == [gid]
    assert (directory / "groups").read_text().split() == [gid]
    root_group = subprocess.run([str(FORKSERVER), "-u", str(pwd.getpwnam("nobody").pw_uid),
                                 "-g", "0", "127.0.0.1", "0"], capture_output=True, timeout=20)
    assert root_group.returncode == 111 and b"group 0" in root_group.stderr, root_group


def starttls_cipher(port: int, source: str, cipher: str) -> tuple[str, bool] | None:
    """STARTTLS from `source` offering TLS 1.2 with `cipher` only, twice, the
    second time offering the first's session: the cipher taken and whether
    the session was resumed, which it is only when both connections met the
    same context, one the server loaded and its worker kept (-c 1: one
    worker), not one the session loaded for itself.  None: the handshake failed."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=20,
                                      source_address=(source, 0)) as sock:
            answers = sock.makefile("rb")
            assert answers.readline().startswith(b"220 ")
            sock.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
            while not answers.readline().startswith(b"250 "):
                pass
            if not answers.readline().startswith(b"220 "):
                return None
            try:
                tls = context.wrap_socket(sock, session=session)
            except (ssl.SSLError, ConnectionError):
                return None
            with tls:  # QUIT: a session ended without close_notify is not resumable
                tls.sendall(b"QUIT\r\n")
                assert tls.recv(100).startswith(b"221 ")
                taken, reused, session = tls.cipher()[0], tls.session_reused, tls.session
    return taken, reused


def test_a_context_per_cipher_list_is_preloaded(forkserver, control):
    """Issue 24, item 7: port 25's list (OpenSSL's) and submission's (the strict
    one) each get a context, and so does a list a rule names; a session asking
    for another loads its own.  A worker keeps the preloaded ones, so a
    session resumes only with one of those, which tells them apart."""
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    server = forkserver('127.0.0.2:allow,SMTPAUTH="!"\n'
                        '127.0.0.3:allow,TLSSERVERCIPHERS="ECDHE-RSA-AES256-SHA384"\n:allow\n',
                        options=["-c", "1"])
    assert starttls_cipher(server.port, "127.0.0.1", "AES128-SHA") == ("AES128-SHA", True)
    assert starttls_cipher(server.port, "127.0.0.2", "AES128-SHA") is None
    assert starttls_cipher(server.port, "127.0.0.2", "ECDHE-RSA-AES128-GCM-SHA256") == \
        ("ECDHE-RSA-AES128-GCM-SHA256", True)
    assert starttls_cipher(server.port, "127.0.0.3", "ECDHE-RSA-AES256-SHA384") == \
        ("ECDHE-RSA-AES256-SHA384", True)
    server.compile_rules('127.0.0.4:allow,TLSSERVERCIPHERS="ECDHE-RSA-AES128-SHA256"\n:allow\n')
    assert starttls_cipher(server.port, "127.0.0.4", "ECDHE-RSA-AES128-SHA256") == \
        ("ECDHE-RSA-AES128-SHA256", False)  # named since the last SIGHUP: the session's own
    server.signal(signal.SIGHUP)
    server.wait_log("SIGHUP")
    assert starttls_cipher(server.port, "127.0.0.4", "ECDHE-RSA-AES128-SHA256") == \
        ("ECDHE-RSA-AES128-SHA256", True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run sessions as root")
def test_refuses_to_run_sessions_as_root(tmp_path):
    out = subprocess.run([str(FORKSERVER), "127.0.0.1", "0"], capture_output=True, timeout=60)
    assert out.returncode == 111
    assert b"refusing to run sessions as root" in out.stderr


# --- signals, crashes, fork safety ---------------------------------------------


def wait_count(server: ForkServer, text: str, count: int, timeout: float = 20) -> str:
    """The server's log once `text` is in it `count` times (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while (log := server.log()).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return log


def child_pids(server: ForkServer, count: int) -> list[int]:
    log = wait_count(server, ": pid ", count)
    return [int(pid) for pid in re.findall(r": pid (\d+) from", log)]


@MODES
def test_sigterm_stops_accepting_and_lets_sessions_finish(forkserver, mode):
    server = forkserver(":allow\n", options=mode)
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=20)
    client.ehlo("client.test")
    server.signal(signal.SIGTERM)
    server.wait_log("SIGTERM: waiting")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert client.quit()[0] == 221
    assert server.proc.wait(timeout=20) == 0


@MODES
def test_sighup_reloads_and_sessions_go_on(forkserver, control, mode):
    server = forkserver(":allow\n", options=mode)
    assert one_session(server.port, "127.0.0.1") == "queued"
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    server.signal(signal.SIGHUP)
    server.wait_log("SIGHUP")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert server.proc.poll() is None


@MODES
def test_a_killed_session_affects_nobody_else(forkserver, mode):
    server = forkserver(":allow\n", options=mode)
    victim = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert greeting(victim).startswith(b"220 ")
    (pid,) = child_pids(server, 1)
    os.kill(pid, signal.SIGKILL)
    assert victim.recv(1) == b""
    assert f"end {pid} status 9" in server.wait_log(f"end {pid}")
    assert one_session(server.port, "127.0.0.1") == "queued"


def test_children_do_not_share_random_state():
    """The facts fork safety rests on: after os.fork() (which the server uses),
    Python's `random` is reseeded and OpenSSL's generator notices the new pid."""
    code = ("import os, random, ssl\n"
            "random.random(); ssl.RAND_bytes(16)\n"
            "for _ in range(2):\n"
            "    if os.fork() == 0:\n"
            "        print(random.getrandbits(64), ssl.RAND_bytes(16).hex(), flush=True)\n"
            "        os._exit(0)\n"
            "    os.wait()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert len(out) == 4 and out[0] != out[2] and out[1] != out[3]


def test_the_server_holds_no_database_connection(db, forkserver, queue):
    from test_auth import ALICE, ALICE_PW, login

    db.add(ALICE, ALICE_PW)
    server = forkserver(":allow\n", env=db.env())
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            login(client, ALICE, ALICE_PW)
    sockets = [os.readlink(f"/proc/{server.proc.pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{server.proc.pid}/fd")]
    sockets = [s for s in sockets if s.startswith("socket:")]
    # the listener, and the workers' channels (socketpairs of type SEQPACKET, 5)
    seqpacket = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                 if line.split()[4] == "0005"}
    assert len([s for s in sockets if s[8:-1] not in seqpacket]) == 1, sockets


def test_checkpassword_arguments_and_queue_environment(forkserver, tmp_path):
    """What test_forkserver_suites leaves out, with stand-ins in sh."""
    checker = write_program(tmp_path / "checkpassword", (
        "#!/bin/sh\n"
        "read -r line <&3 || true\n"
        'case "$line" in alice*wonderland*) exec "$@";; esac\n'
        "exit 1\n"))
    directory = tmp_path / "seen"
    directory.mkdir()
    directory.chmod(0o777)
    let_service_user_in(tmp_path)
    server = forkserver(":allow\n", env={"AUTHFAILDELAY": "0", "QMAILQUEUE": str(
        env_queue(tmp_path)), "ENVDIR": str(directory)}, argv=[SERVER, checker, "/bin/true"])
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        client.ehlo("client.test")
        assert "LOGIN" in client.esmtp_features.get("auth", "")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "wonderland")
        client.sendmail("alice@client.test", ["x@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
    seen = recorded(directory, "127.0.0.1")
    assert seen["TCPREMOTEINFO"] == "alice" and seen["RELAYCLIENT"] == ""


def served_by_systemd(tmp_path: Path, control: Path, listeners: list) -> str:
    """The server as systemd starts it: `listeners` on fds 3, 4, ..., LISTEN_FDS
    and LISTEN_PID naming the server's own pid (a Python shim moves the sockets
    and execs, keeping its pid); an EHLO on each, then SIGTERM.  Its log."""
    let_service_user_in(tmp_path)
    for listener in listeners:
        listener.listen(5)
    fds = [listener.fileno() for listener in listeners]
    shim = ("import os, sys\n"
            "n = int(sys.argv[1])\n"
            "for i, fd in enumerate(sys.argv[2:2 + n]): os.dup2(int(fd), 3 + i)\n"
            "os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "os.execv(sys.argv[2 + n], sys.argv[2 + n:])\n")
    env = {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true",
           "LISTEN_FDS": str(len(fds))}
    log = tmp_path / "systemd.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", shim, str(len(fds)), *map(str, fds),
                                 str(FORKSERVER), "-v", "-S", "-T", "5", *service_ids()],
                                env=env, pass_fds=fds, stderr=err, start_new_session=True)
    try:
        for listener in listeners:
            with smtplib.SMTP(*listener.getsockname()[:2], timeout=20) as client:
                assert client.ehlo("client.test")[0] == 250
    finally:
        for listener in listeners:
            listener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return log.read_text()


def test_systemd_socket(tmp_path, control, queue):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    log = served_by_systemd(tmp_path, control, [listener])
    assert re.search(r"ok \d+ :127\.0\.0\.1:\d+ :127\.0\.0\.1::\d+", log)


def test_systemd_sockets_one_per_family(tmp_path, control, queue):
    """Issue 25, item 1: LISTEN_FDS=2, an IPv6 socket on fd 3 and an IPv4 one
    on fd 4 (two ListenStream= lines): the server accepts on both."""
    listeners = [socket.socket(socket.AF_INET6), socket.socket(socket.AF_INET)]
    listeners[0].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listeners[0].bind(("::1", 0))
    listeners[1].bind(("127.0.0.1", 0))
    log = served_by_systemd(tmp_path, control, listeners)
    assert re.search(r"ok \d+ :::1:\d+ :::1::\d+", log), log
    assert re.search(r"ok \d+ :127\.0\.0\.1:\d+ :127\.0\.0\.1::\d+", log), log


def test_usage_errors_are_exit_100():
    out = subprocess.run([str(FORKSERVER), "-h", "0", "25"], capture_output=True, timeout=60)
    assert out.returncode == 100 and b"not supported" in out.stderr


def test_huge_numbers_are_cut_or_refused_at_parse():
    """Counts and seconds beyond what the system takes are cut to it; an id no
    uid_t holds is a usage error (not an OverflowError at setuid)."""
    huge = "9" * 30
    opts = parse(["-c", huge, "-C", huge, "-b", huge, "-T", huge, "0", "25"])
    assert (opts.limit, opts.per_source, opts.backlog) == (MAX_COUNT,) * 3
    assert opts.grace == MAX_SECONDS
    for option in ("-u", "-g"):
        with pytest.raises(UsageError):
            parse([option, str(2**32 - 1), "0", "25"])
    assert parse(["-u", str(2**32 - 2), "-g", "1", "0", "25"]).uid == 2**32 - 2


def test_hostile_start_values_end_cleanly(tmp_path):
    """A huge id, a port above 65535, LISTEN_FDS that is not a number: tcpserver's
    exit codes and one line saying why, never a traceback."""
    huge_id = subprocess.run([str(FORKSERVER), "-u", "9" * 30, "-g", "1", "127.0.0.1", "0"],
                             capture_output=True, timeout=60)
    assert huge_id.returncode == 100 and b"no such user or group id" in huge_id.stderr
    port = subprocess.run([str(FORKSERVER), *service_ids(), "127.0.0.1", "99999"],
                          capture_output=True, timeout=60)
    assert port.returncode == 111 and b"port 99999 is above 65535" in port.stderr
    shim = ("import os, sys\n"
            "os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    fds = subprocess.run([sys.executable, "-c", shim, str(FORKSERVER), "-S", *service_ids()],
                         env={"PATH": "/usr/bin:/bin", "LISTEN_FDS": "abc"},
                         capture_output=True, timeout=60)
    assert fds.returncode == 111 and b"no socket from systemd" in fds.stderr
    for out in (huge_id, port, fds):
        assert b"Traceback" not in out.stderr


def test_huge_limits_and_grace_still_serve_and_stop(forkserver):
    """-c, -C, -b and -T far beyond any system's range: sessions run, and SIGTERM
    waits for the one running (select() would refuse such a timeout uncut)."""
    huge = "9" * 30
    server = forkserver(":allow\n", options=["-c", huge, "-C", huge, "-b", huge, "-T", huge])
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=20)
    client.ehlo("client.test")
    server.signal(signal.SIGTERM)
    server.wait_log(f"SIGTERM: waiting up to {MAX_SECONDS} s")
    client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert client.quit()[0] == 221
    assert server.proc.wait(timeout=20) == 0
    assert "Traceback" not in server.log()


def test_worker_options_far_beyond_range_still_serve(forkserver):
    """-m, -W and -M far beyond any system's range (clamped, as -c is): a worker
    serves two sessions in turn, and SIGHUP retires it for a new one."""
    huge = "9" * 30
    server = forkserver(":allow\n", options=["-c", "1", "-m", huge, "-W", huge, "-M", huge])
    assert one_session(server.port, "127.0.0.1") == "queued"
    assert one_session(server.port, "127.0.0.1") == "queued"
    first = [int(pid) for pid in re.findall(r": ok (\d+) ", wait_count(server, ": end ", 2))]
    assert len(set(first)) == 1, first
    server.signal(signal.SIGHUP)
    server.wait_log("SIGHUP: reading")
    assert one_session(server.port, "127.0.0.1") == "queued"
    log = wait_count(server, ": end ", 3)
    assert int(re.findall(r": ok (\d+) ", log)[-1]) != first[0], log
    assert "Traceback" not in log, log


def test_no_session_byte_comes_from_the_server(forkserver):
    """A denied connection sees nothing at all (the parent never writes SMTP)."""
    server = forkserver("127.0.0.1:deny\n:allow\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        assert s.recv(100) == b""


# --- the recorded transcripts, through the server -------------------------------

CONFORMANCE = Path(__file__).resolve().parent / "conformance"


@pytest.mark.parametrize("golden, scenarios, host", [
    ("golden", "scenarios", "127.0.0.1"), ("golden", "scenarios", "::1"),
    ("golden-auth", "scenarios-auth", "127.0.0.1"), ("golden-utf8", "scenarios-utf8", "127.0.0.1"),
], ids=["ipv4", "ipv6", "auth-ipv4", "utf8-ipv4"])
def test_recorded_transcripts_through_the_server(golden, scenarios, host):
    """`make conformance` with tests/conformance/through-server in the launcher's
    place: a connection through qmail-esmtpd-server per scenario, over IPv4
    and over IPv6 (the scenario's TCP variables come from its rules either
    way; the AUTH and SMTPUTF8 sets, whose sessions the family does not
    change, over IPv4 only: the suites in test_forkserver_suites_ipv6.py cover
    AUTH over IPv6).  Left out: scenarios without TCPREMOTEIP or TCPLOCALIP,
    which no TCP server makes."""
    chosen = [str(path) for path in sorted((CONFORMANCE / scenarios).glob("*.scn"))
              if not re.search(r"^unset TCP(REMOTE|LOCAL)IP$", path.read_text(), re.M)]
    assert len(chosen) >= 10
    out = subprocess.run([sys.executable, str(CONFORMANCE / "dialog.py"), "--check",
                          str(CONFORMANCE / golden), *chosen, "--",
                          str(CONFORMANCE / "through-server"), "--host", host, str(FORKSERVER)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{len(chosen)} scenario(s), 0 failed" in out.stdout


def test_malloc_huge_pages_for_the_server_not_for_sessions(forkserver, tmp_path):
    """The server starts itself again with glibc.malloc.hugetlb=1 (argon2's
    19 MiB per AUTH in 2 MB pages); qmail-queue does not inherit it."""
    directory = tmp_path / "seen"
    directory.mkdir()
    directory.chmod(0o777)
    server = forkserver(":allow\n", env={"QMAILQUEUE": str(env_queue(tmp_path)),
                                         "ENVDIR": str(directory)})
    start = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in start
    assert one_session(server.port, "127.0.0.1") == "queued"
    assert "GLIBC_TUNABLES" not in recorded(directory, "127.0.0.1")


def test_auth_over_starttls_under_the_documented_softlimit(db, forkserver, control):
    """service/run-server's `softlimit -m M -s S` around the server: every child
    (a copy of it, AUTH and TLS loaded) verifies argon2id within it."""
    import ssl

    from test_auth import ALICE, ALICE_PW

    db.add(ALICE, ALICE_PW)
    self_signed_pem(control / "servercert.pem").chmod(0o644)
    limits = re.search(r"softlimit (-m \d+ -s \d+)", (ROOT / "service" / "run-server").read_text())
    assert limits
    server = forkserver(":allow\n", env=db.env(), wrapper=["softlimit", *limits[1].split()])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.starttls(context=context)
        client.login(ALICE, ALICE_PW)
        client.sendmail(ALICE, ["x@elsewhere.test"], b"Subject: x\r\n\r\n" + b"y" * 4000)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sessions run as nobody")
def test_checks_work_with_the_library_closed_to_the_session_user(forkserver, control, tmp_path):
    """The server imports every check module before it drops privileges: a
    session that cannot read the library (0700, root's) still checks."""
    program = closed_library_server(tmp_path)
    (control / "badrcptto").write_text("trap@example.com\n")
    (control / "smtpplugins").write_text("[rcpt]\n:case \"$SMTPRCPTTO\" in no@*) echo E553 "
                                         "plugin says no;; esac\n")
    (control / "checkrecipients").write_text("1\n")
    for name in ("badrcptto", "smtpplugins", "checkrecipients"):
        (control / name).chmod(0o644)
    server = forkserver(program=program)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        client.ehlo("client.example.net")
        client.mail("a@b.example")
        assert client.rcpt("trap@example.com")[0] == 553  # badrcptto
        assert client.rcpt("no@example.com") == (553, b"plugin says no")  # smtpplugins
        assert client.rcpt("postmaster@example.com")[0] == 250  # checkrecipients: unsure here
    log = server.log()
    assert "Error" not in log and "Traceback" not in log, log


def test_users_cdb_replaced_by_qmail_newu_counts_from_the_next_connection(forkserver, control,
                                                                          tmp_path):
    """The server never holds users/cdb: each session opens the one in place."""
    (control / "locals").write_text("example.com\n")
    (control / "checkrecipients").write_text("1\n")
    users = tmp_path / "users"
    users.mkdir()
    homes = {}
    for name, files in (("bare", ()), ("catchall", (".qmail-default",))):
        homes[name] = tmp_path / name
        homes[name].mkdir()
        for file in files:
            (homes[name] / file).write_text("./Maildir/\n")
    nobody = pwd.getpwnam("nobody")

    def newu(home: Path) -> None:  # compiled beside, then renamed into place, as qmail-newu
        (users / "assign").write_text(
            f"+:alias:{nobody.pw_uid}:{nobody.pw_gid}:{home}:-::\n.\n")
        compile_users(users / "assign", users / "cdb.tmp")
        (users / "cdb.tmp").chmod(0o644)
        (users / "cdb.tmp").rename(users / "cdb")

    newu(homes["bare"])
    server = forkserver(env={"QMAIL_HOME": str(tmp_path)})

    def rcpt_code() -> int:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.mail("a@b.example")
            return client.rcpt("pat-x@example.com")[0]

    assert rcpt_code() == 550  # no .qmail-pat-x nor -default in the bare home
    newu(homes["catchall"])
    assert rcpt_code() == 250


# --- make install over a running server -------------------------------------------


def data_replies(port: int, source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """The 354 and the final reply of one message: which code answered."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, text = client.docmd("DATA")
        assert code == 354
        client.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        return text, client.getreply()[1]


def install_tree(library: Path, new: bool = False, broken: bool = False,
                 gate: Path | None = None) -> None:
    """This checkout's package into `library`, as tools/install.py puts it: a new
    tree (stage_tree) renamed into place."""
    import shutil

    stage = library.with_name(library.name + ".new")
    stage_tree(stage, new, broken, gate)
    old = library.with_name(library.name + ".old")
    if library.exists():
        library.rename(old)
    stage.rename(library)
    shutil.rmtree(old, ignore_errors=True)


def stage_tree(stage: Path, new: bool = False, broken: bool = False,
               gate: Path | None = None) -> None:
    """This checkout's package in `stage`.  The `new` one says so in its 354,
    and its AUTH package (which the server does not preload without AUTH) on
    stderr; a `broken` one does not start at all; one with a `gate` starts
    only once that file exists."""
    import shutil

    shutil.copytree(ROOT / "qmail_esmtpd", stage / "qmail_esmtpd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if new:
        replies_py = stage / "qmail_esmtpd" / "replies.py"
        replies_py.write_text(replies_py.read_text().replace(
            'GO_AHEAD = b"354 go ahead\\r\\n"', 'GO_AHEAD = b"354 go ahead, new code\\r\\n"'))
        auth_py = stage / "qmail_esmtpd" / "auth" / "__init__.py"
        auth_py.write_text('import posix\nposix.write(2, b"new AUTH code loaded\\n")\n' +
                           auth_py.read_text())
    if broken:
        server_py = stage / "qmail_esmtpd" / "forkserver.py"
        server_py.write_text('raise SystemExit("a broken install")\n' + server_py.read_text())
    if gate is not None:
        server_py = stage / "qmail_esmtpd" / "forkserver.py"
        server_py.write_text(f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n"
                             f"    time.sleep(0.02)\n" + server_py.read_text())


def installed_server(forkserver, tmp_path: Path, mode: list,
                     installed: bool = False) -> "tuple[Path, ForkServer]":
    """A server started from an installed tree (the old code, unless already
    `installed`), and that tree."""
    library = tmp_path / "lib"
    if not installed:
        install_tree(library)
    # an interpreter the sessions' user can run: the new code starts as that user
    program = write_launcher(tmp_path / "qmail-esmtpd-server", "qmail_esmtpd.forkserver:main",
                             interpreter=service_python(), library=library)
    return library, forkserver(":allow\n", program=program, options=mode)


AUTH_RULES = '127.0.0.2:allow,AUTHDB="dbname=nothing host=/nonexistent"\n:allow\n'
NEW_CODE_SERVES = "upgrade: serving with the new code"


def notice_install(server) -> bytes:
    """One session, which makes the server notice the new install, and which
    the old code or the new serves, whole; then the new code serves."""
    said = data_replies(server.port)[0]
    assert said in (b"go ahead", b"go ahead, new code"), said
    assert NEW_CODE_SERVES in server.wait_log(NEW_CODE_SERVES, timeout=30)
    return said


@MODES
def test_an_install_over_the_running_server_hands_it_to_the_new_code(forkserver, tmp_path,
                                                                     mode):
    """Issue 26: `make install` replaces the workers without dropping a
    session.  The server execs the new code in its own process (same pid,
    same listening socket); a session in progress finishes on the old code,
    and its end line and -c slot pass to the new; once the new code serves,
    a connection, and a session that needs a module the old server had not
    loaded (AUTH, switched on by a rule since), run wholly new code."""
    library, server = installed_server(forkserver, tmp_path, mode)
    pid = server.proc.pid
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as held:
        held.mail("a@example.com")
        held.rcpt("b@example.com")
        assert held.docmd("DATA") == (354, b"go ahead")  # the old code
        install_tree(library, new=True)
        server.compile_rules(AUTH_RULES)
        notice_install(server)
        assert data_replies(server.port)[0] == b"go ahead, new code"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20,
                          source_address=("127.0.0.2", 0)) as client:
            assert client.ehlo("client.test")[0] == 250
        held.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert held.getreply()[0] == 250  # the old session went on, and queued
    assert "new AUTH code loaded" in server.wait_log("new AUTH code loaded")
    deadline = time.monotonic() + 10
    while len(re.findall(r" end \d+ status", log := server.log())) < 4 and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.proc.poll() is None and server.proc.pid == pid
    assert "Traceback" not in log and "warning" not in log, log
    oks = re.findall(r" ok (\d+) ", log)
    ends = re.findall(r" end (\d+) status 0", log)
    assert len(oks) == 4 and sorted(oks) == sorted(ends), log  # one pair per connection
    assert "upgrade: serving with the new code; 1 sessions finish on the old" in log, log
    assert re.findall(r"status: \d+/100", log)[-1] == "status: 0/100", log  # every slot freed


def test_an_install_that_does_not_start_leaves_the_old_code_serving(forkserver, tmp_path):
    """A new install that fails to start (tried on the side first) never takes
    the server down: the old code goes on whole, a session that would need a
    module it had not loaded is refused with a 421 (its client tries again
    later), never run with the new module under the old code; the next
    install that starts takes over."""
    from qmail_esmtpd.upgrade import REFUSED

    library, server = installed_server(forkserver, tmp_path, [])
    assert data_replies(server.port)[0] == b"go ahead"  # serving (the port comes before the code)
    install_tree(library, new=True, broken=True)
    server.compile_rules(AUTH_RULES)
    assert data_replies(server.port)[0] == b"go ahead"  # old, whole
    with socket.create_connection(("127.0.0.1", server.port), timeout=20,
                                  source_address=("127.0.0.2", 0)) as needs_auth:
        assert needs_auth.makefile("rb").read() == REFUSED
    log = server.wait_log("(the new code did not start: exit 1: a broken install)",
                          timeout=30)
    assert "(the new code did not start: exit 1: a broken install)" in log, log
    assert "new AUTH code loaded" not in log, log
    assert "Traceback" not in log, log
    install_tree(library, new=True)
    notice_install(server)
    assert data_replies(server.port)[0] == b"go ahead, new code"  # new, whole
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20,
                      source_address=("127.0.0.2", 0)) as client:
        assert client.ehlo("client.test")[0] == 250
    assert "new AUTH code loaded" in server.wait_log("new AUTH code loaded")


def test_an_install_while_the_server_starts_is_an_upgrade(forkserver, tmp_path):
    """install renames a new tree into place while the server loads (here:
    before it preloads what sessions need): the server took the installation
    it started from first, so its first connection brings the new code in."""
    library, next_tree = tmp_path / "lib", tmp_path / "lib.next"
    install_tree(library)
    stage_tree(next_tree, new=True)
    server_py = library / "qmail_esmtpd" / "forkserver.py"
    preloading = "    missing = preload.import_modules(preload.SESSION_MODULES)\n"
    assert preloading in server_py.read_text()
    server_py.write_text(server_py.read_text().replace(preloading, (
        f"    os.rename({str(library)!r}, {str(library) + '.old'!r})\n"
        f"    os.rename({str(next_tree)!r}, {str(library)!r})\n") + preloading))
    _, server = installed_server(forkserver, tmp_path, [], installed=True)
    notice_install(server)  # (the port is printed before the server loads the rest)
    assert not next_tree.exists()  # installed while the server loaded
    assert data_replies(server.port)[0] == b"go ahead, new code"


@MODES
def test_the_old_code_serves_while_the_new_starts(forkserver, tmp_path, mode):
    """A new install is tried on the side: until it has started, the old code
    answers (a slow start holds up no connection); then the new code serves."""
    library, server = installed_server(forkserver, tmp_path, mode)
    assert data_replies(server.port)[0] == b"go ahead"  # serving (the port comes before the code)
    gate = tmp_path / "gate"
    install_tree(library, new=True, gate=gate)
    assert data_replies(server.port)[0] == b"go ahead"  # noticed; the trial waits at the gate
    assert "starting the new code on the side" in server.wait_log("on the side")
    for _ in range(3):
        assert data_replies(server.port)[0] == b"go ahead"  # served, by the old code
    assert NEW_CODE_SERVES not in server.log()
    gate.touch()
    assert NEW_CODE_SERVES in server.wait_log(NEW_CODE_SERVES, timeout=30)
    assert data_replies(server.port)[0] == b"go ahead, new code", server.log()
    log = server.log()
    assert "Traceback" not in log and "warning" not in log, log


def test_a_trial_that_takes_too_long_is_killed_and_said(monkeypatch):
    """The trial's bound: past it, the new code is killed and counts as not started."""
    from qmail_esmtpd import upgrade

    monkeypatch.setattr(upgrade, "TRIAL_SECONDS", 0.2)
    monkeypatch.setattr(upgrade, "own_command",
                        lambda: ["/bin/sh", "-c", "echo starting >&2; exec sleep 30"])
    trial = upgrade.Trial((1, 2), {"PATH": "/usr/bin:/bin"})
    started = time.monotonic()
    while not trial.killed:
        trial.seconds_left()
        time.sleep(0.01)
    trial.exited(os.waitpid(trial.pid, 0)[1])
    assert time.monotonic() - started < 10  # killed, not waited for: sleep 30 would take 30
    assert trial.why_not() == "it did not start within 0.2 s"
    assert trial.said == b"starting\n" and trial.fd is None


def test_a_trial_that_fails_says_its_last_line(monkeypatch):
    from qmail_esmtpd import upgrade

    monkeypatch.setattr(upgrade, "own_command",
                        lambda: ["/bin/sh", "-c", "echo one >&2; echo two >&2; exit 3"])
    trial = upgrade.Trial(None, {"PATH": "/usr/bin:/bin"})
    trial.exited(os.waitpid(trial.pid, 0)[1])
    assert trial.why_not() == "exit 3: two"


def test_sigterm_during_a_trial_ends_the_trial_too(forkserver, tmp_path):
    """The server that stops leaves no new code starting behind it."""
    library, server = installed_server(forkserver, tmp_path, [])
    assert data_replies(server.port)[0] == b"go ahead"
    gate = tmp_path / "gate"
    install_tree(library, new=True, gate=gate)
    try:
        assert data_replies(server.port)[0] == b"go ahead"
        assert len(trials_running(1)) == 1, server.log()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        assert trials_running(0) == [], server.log()  # SIGKILLed: gone once it has died
    finally:
        gate.touch()  # a trial left behind by a failure here ends by itself


def trials_running(expected: int) -> list[int]:
    """The pids of new code being tried (upgrade.Trial) on this machine, once
    there are `expected` of them (or as they are after 20 s)."""
    from qmail_esmtpd.upgrade import STATE, TRIAL

    deadline = time.monotonic() + 20
    while True:
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and f"{STATE}={TRIAL}".encode() in \
                        open(f"/proc/{entry}/environ", "rb").read().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                pass
        if len(found) == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_trial_that_writes_on_and_on_holds_up_no_read(monkeypatch):
    """One read of the trial's stderr takes a bounded amount (the server's
    loop goes on), and what it said is kept only to its end."""
    from qmail_esmtpd import upgrade

    monkeypatch.setattr(upgrade, "own_command", lambda: ["/bin/sh", "-c", "exec sleep 30"])
    trial = upgrade.Trial(None, {"PATH": "/usr/bin:/bin"})
    reads = []
    real_read = os.read

    def endless(fd: int, size: int) -> bytes:  # as a pipe that never runs dry
        if fd != trial.fd:
            return real_read(fd, size)
        reads.append(size)
        return b"said\n" * (size // 5)

    monkeypatch.setattr(os, "read", endless)
    try:
        trial.read()
        assert len(reads) == 16  # 1 MB, then back to the loop
        assert len(trial.said) == 4096 and trial.said.endswith(b"said\n")
    finally:
        monkeypatch.undo()
        trial.stop()
        trial.exited(os.waitpid(trial.pid, 0)[1])
    assert trial.fd is None
