"""DNS blocklists (check_rbl.py): the decisions and replies of real rblsmtpd
(ucspi-tcp) for the same options and the same DNS answers, from a real DNS
server (dnsmasq) on a loopback address; through tcpserver and through the
warm server; a DNS server that never answers; a listed client that logs in.

What rblsmtpd says when $RBLSMTPD decides (no DNS) is recorded in
tests/conformance/golden-rbl and replayed by `make conformance`.
"""

import ipaddress
import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_auth import ALICE, ALICE_PW, login

from qmail_esmtpd.check_rbl import dns_servers, options

from harness.paths import FORKSERVER, ROOT, SERVER
from harness.processes import StartError, imported_modules

CLEAN = "127.0.0.1"  # in no list
LISTED = "127.0.0.2"  # in bl.test and other.test
ALLOWED = "127.0.0.3"  # in bl.test and in the allow-list allow.test
TWO_RECORDS = "127.0.0.4"  # two TXT records in bl.test
EMPTY = "127.0.0.5"  # a TXT record of no text: rblsmtpd lists nobody by it
LONG = "127.0.0.6"  # 240 bytes of text
V6 = "2001:db8::1"
LONG_TEXT = "long " + "y" * 235
BROKEN = "x" * 64 + ".test"  # a label longer than DNS allows: the lookup fails at once
SESSION = b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@example.com>\r\nVRFY b\r\nNOOP\r\nQUIT\r\n"



def need_port_53() -> None:
    """A DNS server on port 53 (the only one djbdns and rblsmtpd ask) needs root;
    the real one is dnsmasq (dnsmasq-base), compared with rblsmtpd (ucspi-tcp)."""
    if os.geteuid() != 0 or not shutil.which("dnsmasq") or not shutil.which("rblsmtpd"):
        pytest.skip("needs root, dnsmasq and rblsmtpd (tools/install-deps)")


def reversed_name(ip: str, base: str) -> str:
    """RFC 5782: the address's reverse-DNS labels (IPv6 in nibbles) under the list."""
    pointer = ipaddress.ip_address(ip).reverse_pointer
    return pointer.rsplit(".", 2)[0] + "." + base


def loopback_address() -> str:
    """A loopback address of this run's own, so parallel runs never share port 53."""
    return f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"


class DnsServer:
    """dnsmasq on port 53 of a loopback address, answering for the test lists
    only: nothing is forwarded (a name outside them gets REFUSED, a
    temporary failure to rblsmtpd), every query is in its log."""

    def __init__(self, workdir: Path) -> None:
        self.logpath = workdir / "dnsmasq.log"
        records = [
            ("txt", reversed_name(LISTED, "bl.test"), "listed: see https://bl.test/127.0.0.2"),
            ("txt", reversed_name(LISTED, "other.test"), "in the other list"),
            ("txt", reversed_name(ALLOWED, "bl.test"), "listed but allow-listed"),
            ("host", reversed_name(ALLOWED, "allow.test"), "127.0.0.2"),
            ("txt", reversed_name(TWO_RECORDS, "bl.test"), "first"),
            ("txt", reversed_name(TWO_RECORDS, "bl.test"), "second"),
            ("txt", reversed_name(EMPTY, "bl.test"), ""),
            ("txt", reversed_name(LONG, "bl.test"), LONG_TEXT),
            ("txt", reversed_name(V6, "bl.test"), "listed by nibbles"),
        ]
        flags = [f"--{kind}-record={name},{value}" for kind, name, value in records]
        for _ in range(5):
            self.ip = loopback_address()
            with self.logpath.open("wb") as log:
                self.proc = subprocess.Popen(
                    ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                     "--no-hosts", "--bind-interfaces", f"--listen-address={self.ip}",
                     "--port=53", "--pid-file=", "--user=nobody", "--log-queries",
                     "--log-facility=-", "--local=/bl.test/", "--local=/other.test/",
                     "--local=/allow.test/", *flags],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self.answers():
                return
            self.stop()
        raise StartError(f"dnsmasq did not start: {self.logpath.read_text()[-600:]}")

    def answers(self, timeout: float = 10) -> bool:
        import dns.message
        import dns.query

        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                dns.query.udp(dns.message.make_query("ready.bl.test", "TXT"), self.ip,
                              timeout=0.2)
                return True
            except Exception:
                time.sleep(0.05)
        return False

    def queries(self) -> list[str]:
        return re.findall(r"query\[\w+\] (\S+) from", self.logpath.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    need_port_53()
    server = DnsServer(tmp_path_factory.mktemp("dns"))
    yield server
    server.stop()


@pytest.fixture
def silent():
    """A DNS server that never answers: a UDP socket on port 53 nobody reads."""
    need_port_53()
    for _ in range(5):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((loopback_address(), 53))
            break
        except OSError:
            sock.close()
    with sock:
        yield sock.getsockname()[0]


def session_env(control: Path, **extra: str) -> dict:
    return {"PATH": "/usr/bin:/bin", "QMAIL_CONTROL": str(control), "QMAILQUEUE": "/bin/true",
            "TCPLOCALIP": "127.0.0.1", **extra}


def on_pipes(argv: list, env: dict, session: bytes = SESSION) -> tuple[bytes, list[str]]:
    """One session on pipes: what the client read, and rblsmtpd's log lines
    (the pid made constant)."""
    out = subprocess.run([str(a) for a in argv], input=session, env=env, capture_output=True,
                         timeout=60)
    said = [re.sub(r" pid \d+: ", " pid N: ", line)
            for line in out.stderr.decode(errors="replace").splitlines()
            if line.startswith("rblsmtpd: ")]
    return out.stdout, said


def real_rblsmtpd(opts: str, env: dict, session: bytes = SESSION) -> tuple[bytes, list[str]]:
    """rblsmtpd OPTS in front of qmail-esmtpd, which then asks no list itself."""
    return on_pipes(["rblsmtpd", *opts.split(), SERVER], env, session)


def ours(opts: str, env: dict, session: bytes = SESSION) -> tuple[bytes, list[str]]:
    return on_pipes([SERVER], {**env, "RBLLISTS": opts}, session)


# rblsmtpd's options, a client, and the refusal both give (None: the host's session)
LISTED_TEXT = b"listed: see https://bl.test/127.0.0.2"
CASES = [
    ("-r bl.test", LISTED, b"451 " + LISTED_TEXT),  # listed: 451 and the TXT text
    ("-r bl.test", CLEAN, None),  # not listed
    ("-b -r bl.test", LISTED, b"553 " + LISTED_TEXT),
    ("-r bl.test -b", LISTED, b"451 " + LISTED_TEXT),  # -b after the list comes too late
    ("-bc -rbl.test", LISTED, b"553 " + LISTED_TEXT),  # options joined, as getopt takes them
    ("-a allow.test -r bl.test", ALLOWED, None),  # the allow-list first
    ("-r bl.test -a allow.test", ALLOWED, b"451 listed but allow-listed"),  # the list first
    ("-r other.test -r bl.test", LISTED, b"451 in the other list"),  # the first list's text
    ("-r bl.test", TWO_RECORDS, b"451 secondfirst"),  # TXT records joined as djbdns joins them
    ("-r bl.test", EMPTY, None),  # a TXT record of no text lists nobody
    ("-r bl.test", LONG, b"451 " + LONG_TEXT[:200].encode()),  # cut at 200 bytes
    # lookups that fail: a name DNS cannot hold (at once), a server's REFUSED (rblsmtpd
    # asks again for 11 s, we take the answer)
    (f"-b -r {BROKEN} -r bl.test", LISTED, b"451 " + LISTED_TEXT),  # after a failure: no 553
    (f"-r {BROKEN}", CLEAN, None),  # fail open (-C)
    (f"-c -r {BROKEN}", CLEAN, b"451 temporary RBL lookup error"),  # fail closed
    ("-c -r refused.test", CLEAN, b"451 temporary RBL lookup error"),
    (f"-a {BROKEN} -r bl.test", LISTED, None),  # a failed allow-list, open: let through
    (f"-c -a {BROKEN} -b -r bl.test", LISTED, b"451 " + LISTED_TEXT),  # closed: 451
    ("-t0 -r bl.test", LISTED, b"451 " + LISTED_TEXT),  # the refusal instead of the greeting
    ("-t 0x -r bl.test", LISTED, b"451 " + LISTED_TEXT),  # -t reads leading digits: 0
]


@pytest.mark.parametrize("opts, client, refusal", CASES)
def test_the_same_decision_replies_and_log_line_as_real_rblsmtpd(dns, control, opts, client,
                                                                  refusal):
    env = session_env(control, TCPREMOTEIP=client, DNSCACHEIP=dns.ip)
    expected = real_rblsmtpd(opts, env)
    assert ours(opts, env) == expected
    said, logged = expected
    if refusal is None:
        assert said.startswith(b"220 mx.example.com ESMTP\r\n") and not logged, expected
    else:
        assert refusal + b"\r\n" in said and logged == [
            f"rblsmtpd: {client} pid N: {refusal.decode()}"], expected


def test_an_ipv6_client_is_looked_up_by_its_nibbles(dns, control):
    """RFC 5782's form, which rblsmtpd (ucspi-tcp, and ucspi-tcp-ipv6's too)
    never asks: it reverses the text between dots, and lets the client through.
    An IPv4-mapped address is looked up as the IPv4 address."""
    env = session_env(control, TCPREMOTEIP=V6, DNSCACHEIP=dns.ip)
    said, logged = ours("-r bl.test", env)
    assert b"\r\n451 listed by nibbles\r\n" in said and said.startswith(b"220 rblsmtpd.local")
    assert logged == ["rblsmtpd: 2001:db8::1 pid N: 451 listed by nibbles"]
    assert reversed_name(V6, "bl.test") in dns.queries()
    passed, _ = real_rblsmtpd("-r bl.test", env)
    assert passed.startswith(b"220 mx.example.com ESMTP\r\n")
    assert "2001:db8::1.bl.test" in dns.queries()  # what rblsmtpd asked instead
    mapped = session_env(control, TCPREMOTEIP="::ffff:" + LISTED, DNSCACHEIP=dns.ip)
    said, logged = ours("-r bl.test", mapped)
    assert b"\r\n451 listed: see https://bl.test/127.0.0.2\r\n" in said
    assert logged == ["rblsmtpd: ::ffff:127.0.0.2 pid N: 451 listed: see "
                      "https://bl.test/127.0.0.2"]


def test_rblsmtpd_from_the_rules_decides_without_dns_or_its_library(dns, control):
    """$RBLSMTPD set: no list is asked, dnspython is not even imported; empty:
    the check is off (not imported), lists or not."""
    before = len(dns.queries())
    env = session_env(control, TCPREMOTEIP=LISTED, DNSCACHEIP=dns.ip, RBLLISTS="-r bl.test")
    loaded = imported_modules({**env, "RBLSMTPD": "-go away"}, SESSION)
    assert "qmail_esmtpd.check_rbl" in loaded and "dns.resolver" not in loaded
    loaded = imported_modules({**env, "RBLSMTPD": ""}, SESSION)
    assert "qmail_esmtpd.check_rbl" not in loaded
    assert len(dns.queries()) == before
    assert "dns.resolver" in imported_modules(env, SESSION)  # a lookup: the library loads


def test_control_file_and_resolv_conf(dns, control, tmp_path):
    """control/rbllists holds the options (any layout, # lines skipped);
    without $DNSCACHEIP the servers are /etc/resolv.conf's, as djbdns reads
    it: here a file bound over it in a mount namespace of the session's own,
    for real rblsmtpd and for us alike."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux)")
    (control / "rbllists").write_text("# as in the run script\n-b\n-r   bl.test\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"search example.com\nnameserver ::1\nnameserver {dns.ip}\n")
    env = session_env(control, TCPREMOTEIP=LISTED)
    bind = ["unshare", "--mount", "sh", "-c",
            f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"]
    said, logged = on_pipes([*bind, SERVER], env)
    assert said.startswith(b"220 rblsmtpd.local\r\n") and \
        b"\r\n553 listed: see https://bl.test/127.0.0.2\r\n" in said
    assert (said, logged) == on_pipes([*bind, "rblsmtpd", "-b", "-r", "bl.test", SERVER], env)


def test_the_bound_covers_every_lookup_of_a_session(silent, control):
    """A DNS server that never answers: the session waits `rbltimeout` in all
    (three lists), lets the client through (-C) and says so once."""
    env = session_env(control, TCPREMOTEIP=LISTED, DNSCACHEIP=silent, RBLTIMEOUT="2")
    start = time.monotonic()
    proc = subprocess.run([SERVER], input=SESSION, env={
        **env, "RBLLISTS": "-r bl.test -r other.test -a allow.test"}, capture_output=True,
        timeout=60)
    waited = time.monotonic() - start
    assert proc.stdout.startswith(b"220 mx.example.com ESMTP\r\n"), proc
    assert 1.9 < waited < 3.5, waited
    log = proc.stderr.decode()
    assert log.count("\n") == 1 and log.startswith(
        "qmail-esmtpd: rbl lookup failed ip=127.0.0.2: bl.test: no answer within rbltimeout 2 s;"
        " other.test: no time left of rbltimeout 2 s; allow.test: no time left of rbltimeout 2 s;"
        " let through"), log


def test_options_are_read_as_rblsmtpd_reads_them():
    found, wrong = options([b"-bc", b"-rbl.test", b"-a", b"allow.test", b"-t", b"5", b"-x",
                            b"word", b"-Cr"])
    assert found == [("b", b""), ("c", b""), ("r", b"bl.test"), ("a", b"allow.test"),
                     ("t", b"5"), ("C", b"")]
    assert wrong == ["-x", "word", "-Cr"]  # an unknown letter, no dash, no argument left


def test_unknown_options_are_logged_and_skipped(dns, control):
    env = session_env(control, TCPREMOTEIP=LISTED, DNSCACHEIP=dns.ip)
    out = subprocess.run([SERVER], input=SESSION, env={**env, "RBLLISTS": "-q -r bl.test"},
                         capture_output=True, timeout=60)
    assert b"\r\n451 listed: see" in out.stdout
    assert "qmail-esmtpd: rbl: rbllists: not rblsmtpd options, skipped: -q\n" in \
        out.stderr.decode()


@pytest.mark.parametrize("given, resolv, servers", [
    ("127.0.0.53", "nameserver 10.9.9.9\n", ["127.0.0.53"]),
    ("10.0.0.1.10.0.0.2", "", ["10.0.0.1", "10.0.0.2"]),  # dots between them, as djbdns
    ("10.0.0.1 10.0.0.2", "", ["10.0.0.1"]),  # anything else ends the list
    ("300.0.0.1", "", ["44.0.0.1"]),  # each number's low byte, as ip4_scan stores it
    ("", "nameserver 10.1.1.1\n nameserver 10.2.2.2\nnameserver\t0.0.0.0\n"
         "nameserver ::1\n#nameserver 10.3.3.3\nnameserver   10.4.4.4 # x\n",
     ["10.1.1.1", "127.0.0.1", "10.4.4.4"]),  # from column 0; 0.0.0.0 is us; IPv4 only
    (None, "", ["127.0.0.1"]),
    (None, None, ["127.0.0.1"]),  # no resolv.conf
    (".".join(f"10.0.0.{n}" for n in range(20)), "", [f"10.0.0.{n}" for n in range(16)]),
])
def test_dns_servers_as_djbdns_finds_them(tmp_path, given, resolv, servers):
    path = tmp_path / "resolv.conf"
    if resolv is not None:
        path.write_text(resolv)
    env = {} if given is None else {b"DNSCACHEIP": given.encode()}
    assert dns_servers(env, bytes(path)) == servers


def test_the_warm_server_preloads_what_a_lookup_imports(dns):
    """After preload.py's lists, lookups that list, allow, miss and fail import nothing."""
    code = f"""
import sys
from qmail_esmtpd.preload import SESSION_MODULES, import_modules
assert not import_modules(SESSION_MODULES)
before = set(sys.modules)
from qmail_esmtpd.check_rbl import Lookups, TemporaryFailure
env = {{b"DNSCACHEIP": b"{dns.ip}"}}
for ip, base, listed in ((b"{LISTED}", b"bl.test", True), (b"{CLEAN}", b"bl.test", True),
                         (b"{ALLOWED}", b"allow.test", False), (b"{V6}", b"bl.test", True),
                         (b"{LISTED}", b"refused.test", True)):
    try:
        Lookups(ip, env, 5).listed(base) if listed else Lookups(ip, env, 5).allowed(base)
    except TemporaryFailure:
        pass
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout == "[]\n", out


def test_the_recorded_rblsmtpd_transcripts_through_the_server():
    """`make conformance`'s rblsmtpd transcripts, through qmail-esmtpd-server
    (tests/conformance/through-server in the launcher's place)."""
    conformance = ROOT / "tests" / "conformance"
    out = subprocess.run([sys.executable, str(conformance / "dialog.py"), "--check",
                          str(conformance / "golden-rbl"), str(conformance / "scenarios-rbl"),
                          "--", str(conformance / "through-server"), str(FORKSERVER)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "10 scenario(s), 0 failed" in out.stdout, \
        out.stdout[-3000:] + out.stderr[-2000:]


# -- through tcpserver and the warm server ------------------------------------------------
@pytest.fixture(params=["tcpserver", "forkserver"])
def frontend(request, tcpserver, forkserver):
    if request.param == "forkserver" and os.geteuid() != 0:
        pytest.skip("the warm server's sessions run as nobody: needs root")
    return tcpserver if request.param == "tcpserver" else forkserver


def client(server, source: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30,
                        source_address=(source, 0))


def test_listed_unlisted_and_allow_listed_clients(frontend, dns, queue):
    server = frontend(":allow\n", env={"DNSCACHEIP": dns.ip,
                                       "RBLLISTS": "-a allow.test -r bl.test"})
    with client(server, LISTED) as c:
        assert c.ehlo() == (250, b"rblsmtpd.local")
        assert c.mail("a@client.test") == (250, b"rblsmtpd.local")
        assert c.rcpt("b@example.com") == (451, b"listed: see https://bl.test/127.0.0.2")
        assert c.docmd("DATA") == (451, b"listed: see https://bl.test/127.0.0.2")
    for source in (CLEAN, ALLOWED):
        with client(server, source) as c:
            c.sendmail("a@client.test", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    assert len(queue.queued()) == 2
    log = server.wait_log("rblsmtpd: 127.0.0.2 pid ")
    assert len(re.findall(r"^rblsmtpd: 127\.0\.0\.2 pid \d+: 451 listed: see "
                          r"https://bl\.test/127\.0\.0\.2$", log, re.M)) == 1, log
    assert "rblsmtpd: 127.0.0.1" not in log and "rblsmtpd: 127.0.0.3" not in log


def test_a_dns_server_that_never_answers_delays_the_greeting_by_the_bound(frontend, silent,
                                                                           queue):
    server = frontend(":allow\n", env={"DNSCACHEIP": silent, "RBLLISTS": "-r bl.test",
                                       "RBLTIMEOUT": "2"})
    start = time.monotonic()
    with client(server, LISTED) as c:
        greeted = time.monotonic() - start
        c.sendmail("a@client.test", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    assert 1.9 < greeted < 3.5, greeted
    assert len(queue.queued()) == 1
    assert "rbl lookup failed ip=127.0.0.2: bl.test: no answer within rbltimeout 2 s; " \
           "let through" in server.wait_log("rbl lookup failed")


def test_a_listed_client_that_logs_in_may_send(frontend, dns, db, queue):
    """Ours, beside rblsmtpd: where AUTH is offered the greeting, EHLO and AUTH
    are the host's, so a roaming user on a listed address can log in and send;
    until then rblsmtpd's replies.  `rblauth` 0 gives rblsmtpd's conversation."""
    db.add(ALICE, ALICE_PW)
    env = db.env(DNSCACHEIP=dns.ip, RBLLISTS="-r bl.test")
    server = frontend(":allow\n", env=env)
    with client(server, LISTED) as c:
        c.ehlo()
        assert "auth" in c.esmtp_features
        assert c.mail("alice@client.test") == (250, b"rblsmtpd.local")
        assert c.rcpt("b@example.com")[0] == 451
        assert c.rset() == (250, b"rblsmtpd.local")
        login(c, ALICE, ALICE_PW)
        c.sendmail("alice@client.test", ["someone@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n")
    (run,) = queue.queued()
    assert run["recipients"] == ["someone@elsewhere.example"]
    assert "rbl listed client logged in, may send ip=127.0.0.2 user=alice" in \
        server.wait_log("may send")
    strict = frontend(":allow\n", env={**env, "RBLAUTH": "0"})
    with client(strict, LISTED) as c:
        assert c.ehlo() == (250, b"rblsmtpd.local")
        assert c.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 451
