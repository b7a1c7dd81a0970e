"""The registry of checks: every policy a session asks, in the order it asks.

As Postfix's restriction lists: at each stage (protocol.STAGES) the checks
below are asked in table order, and the first refusal wins.  A check is one
module in this folder and one line in CHECKS.  The module has

    build(settings) -> check or None    its own reading of the configuration

and the check answers the stages it cares about with methods

    on_<stage>(session, value) -> None | (reply, action) | ACCEPT_NOW

(on_connect, on_command, on_helo, on_mail, on_rcpt, on_data, on_auth;
on_end is told the session is over).  It may also

    ehlo_keyword(session) -> bytes | None      offer an EHLO keyword
    self.mail_parameters = {b"NAME=": handler}  take a MAIL parameter (`NAME`
        without a value); handler(session, value) answers as on_mail does
    queue_environment() -> {name: value, or None to unset}
                                                change qmail-queue's environment

A check that is switched off costs nothing: its Settings value decides
without importing the module.  The warm server preloads every module named
here (MODULES), so its children never import one.
"""

from ..protocol import STAGES, Checks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..config import Settings
    from ..protocol import Check, Keyword, Parameter

# module in this folder, the Settings value that switches it on (when it is
# neither None nor False); the order
# is the order of asking: who may send, the admin's plugins, where mail may
# go, which recipients exist
CHECKS = (
    ("badmailfrom", "badmailfrom"),     # control/badmailfrom
    ("authsender", "auth_backend"),     # AUTH: SIZE within databytes, senderbinding, daily limit
    ("spp", "smtpplugins"),             # qmail-spp plugins
    ("rcpthosts", "rcpthosts"),         # control/rcpthosts, morercpthosts.cdb
    ("badrcptto", "badrcptto"),         # control/badrcptto
    ("recipients", "checkrecipients"),  # control/checkrecipients: qmail's own mailbox rules
)
MODULES = tuple(f"{__name__}.{module}" for module, _ in CHECKS)


def build(settings: "Settings") -> Checks:
    """The checks the configuration switches on, as the session asks them."""
    built = []
    for module, switch in CHECKS:
        if getattr(settings, switch) in (None, False):
            continue
        check = __import__(f"{__name__}.{module}", fromlist=("build",)).build(settings)
        if check is not None:
            built.append(check)
    return assemble(built)


def assemble(checks: "Iterable[object]") -> Checks:
    """Checks in the order given, as the core asks them: by their methods."""
    stages: dict[str, list[Check]] = {}
    keywords: list[Keyword] = []
    parameters: dict[bytes, Parameter] = {}
    environment: list[Callable[[], dict[bytes, bytes | None]]] = []
    for check in checks:
        for stage in STAGES:
            hook = getattr(check, "on_" + stage, None)
            if hook is not None:
                stages.setdefault(stage, []).append(hook)
        offer = getattr(check, "ehlo_keyword", None)
        if offer is not None:
            keywords.append(offer)
        parameters.update(getattr(check, "mail_parameters", {}))
        changes = getattr(check, "queue_environment", None)
        if changes is not None:
            environment.append(changes)
    return Checks({stage: tuple(hooks) for stage, hooks in stages.items()},
                  tuple(keywords), parameters, tuple(environment))
