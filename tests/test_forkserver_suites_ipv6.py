"""The end-to-end suites of test_forkserver_suites.py once more, over IPv6:
qmail-esmtpd-server listening on ::1, every client connecting from ::1.

The suites name their loopback address once, `LOOPBACK` (harness.frontend),
in what they connect to and what they expect to see (TCPREMOTEIP in a log
line, a Received line, a plugin's test).  Here each of their functions is
taken again with ::1 in that name, and in talk()'s host; nothing else
changes.  Their rules' `127.0.0.1:` lines become `::1:` lines, compiled by
ucspi-tcp-ipv6's tcprules.
"""

import functools
import types

import pytest
import test_auth
import test_forkserver_suites
import test_rcptcheck
import test_spp
import test_tcpserver

from harness import processes

IPV6_LOOPBACK = "::1"


def over_ipv6(module: types.ModuleType) -> dict:
    """`module`'s names, its own functions copied to see ::1 as LOOPBACK."""
    namespace = dict(vars(module))
    namespace["LOOPBACK"] = IPV6_LOOPBACK
    namespace["talk"] = functools.partial(processes.talk, host=IPV6_LOOPBACK)
    for name, obj in vars(module).items():
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            copy = types.FunctionType(obj.__code__, namespace, name, obj.__defaults__,
                                      obj.__closure__)
            copy.__kwdefaults__ = obj.__kwdefaults__
            copy.__dict__.update(obj.__dict__)  # pytest's marks
            namespace[name] = copy
    return {name: value for name, value in namespace.items() if not name.startswith("__")}


for _module in (test_auth, test_tcpserver, test_rcptcheck, test_spp):
    globals().update({name: value for name, value in over_ipv6(_module).items()
                      if name.startswith("test_") or name not in globals()})
for _name in (  # the ones test_forkserver_suites leaves out, for the same reasons
    "test_checkpassword_command_line", "test_qmail_queue_learns_the_user",
    "test_50_mb_message_streams_with_bounded_memory"):
    del globals()[_name]
    assert not hasattr(test_forkserver_suites, _name)


def ipv6_rules(rules: str) -> str:
    """The suites' rules for the IPv6 loopback: `127.0.0.1:` lines as `::1:` ones."""
    return "".join(f"{IPV6_LOOPBACK}:{line[len('127.0.0.1:'):]}"
                   if line.startswith("127.0.0.1:") else line
                   for line in rules.splitlines(keepends=True))


@pytest.fixture
def tcpserver(forkserver):
    def start(rules: str = ":allow\n", env: dict | None = None, argv: list | None = None):
        return forkserver(ipv6_rules(rules), env=env, argv=argv, host=IPV6_LOOPBACK,
                          rules6=True)
    return start


@pytest.fixture
def layout_server(forkserver, qmail_layout):
    """As test_forkserver_suites' layout_server, on ::1."""
    _, passwd = qmail_layout
    wrapper = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', passwd]

    def start(env: dict[str, str], rules: str = ":allow\n"):
        return forkserver(ipv6_rules(rules), env=env, wrapper=wrapper, host=IPV6_LOOPBACK,
                          rules6=True)
    return start
