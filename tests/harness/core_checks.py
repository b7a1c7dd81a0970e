"""The built-in checks in the registry's order, for unit tests of the core
that hand a Session its checks directly instead of reading control files."""

from qmail_esmtpd.check_authsender import AuthenticatedSender
from qmail_esmtpd.check_badmailfrom import BadMailFrom
from qmail_esmtpd.check_rcpthosts import Relaying
from qmail_esmtpd.protocol import Checks


def ours(address: bytes) -> bool | None:
    return address.endswith(b"@example.com")


class Hooks:
    """A check made of functions: Hooks(rcpt=f) answers RCPT with f(session, value)."""

    def __init__(self, **hooks) -> None:
        for stage, hook in hooks.items():
            setattr(self, "on_" + stage, hook)


def core_checks(rcpthosts=ours, badmailfrom: frozenset | None = None, auth: bool = False,
                plugins: tuple = (), last: tuple = ()) -> Checks:
    """badmailfrom, the AUTH sender's checks, `plugins`, rcpthosts (None: no
    rcpthosts file), then `last`: the order of config.CHECKS."""
    checks: list[object] = []
    if badmailfrom:
        checks.append(BadMailFrom(badmailfrom))
    if auth:
        checks.append(AuthenticatedSender())
    checks += plugins
    if rcpthosts is not None:
        checks.append(Relaying(rcpthosts))
    checks += last
    return Checks.assemble(checks)
