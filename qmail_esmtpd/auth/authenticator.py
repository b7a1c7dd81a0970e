"""What every AUTH backend gets around it, whichever one it is.

The backend module and the AUTH control files load at the first AUTH
command, not at start-up.  Around the backend's verdict: a delay before
every failure, one log line per outcome, and any surprise (a bug, an
unreadable control file) turned into a temporary failure, never a
traceback on the wire.
"""

import time

from ..config import Controls, clamp_seconds, number_setting
from ..log import log, printable
from . import DATABASE, MECHANISMS, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..config import Setting
    from . import Backend

DEFAULT_FAIL_DELAY = 3  # seconds before each 535
DEFAULT_MAX_FAILURES = 3  # failed AUTHs in one session before 421


class Authenticator:
    mechanisms = MECHANISMS

    def __init__(self, backend: str, setting: "Setting", controls: Controls,
                 env: "Mapping[bytes, bytes]", remoteip: bytes,
                 sleep: "Callable[[float], None]" = time.sleep) -> None:
        self.backend_name = backend
        self.setting = setting
        self.controls = controls
        self.env = env
        self.remoteip = remoteip
        self.sleep = sleep
        self.backend: "Backend | None" = None
        self.fail_delay = 0
        self._max_failures = 0

    def _load(self) -> "Backend":
        if self.backend is None:
            fail_delay = number_setting(self.controls, self.env, b"authfaildelay")
            max_failures = number_setting(self.controls, self.env, b"authmaxfail")
            module = __import__(f"{__package__}.{self.backend_name}", fromlist=["open_backend"])
            self.backend = module.open_backend(self.setting, self.controls, self.env)
            self.fail_delay = clamp_seconds(
                DEFAULT_FAIL_DELAY if fail_delay is None else fail_delay)
            self._max_failures = max(
                DEFAULT_MAX_FAILURES if max_failures is None else max_failures, 1)
        return self.backend

    @property
    def max_failures(self) -> int:
        """Failed AUTHs allowed in one session (read once a check has loaded them)."""
        return self._max_failures or DEFAULT_MAX_FAILURES

    def check(self, user: bytes, password: bytes, mechanism: bytes) -> Verdict:
        try:
            verdict = self._load().verify(user, password)
        except Exception as e:  # the client gets a 454, the log gets the reason
            log(f"auth error: {type(e).__name__}: {e}")
            verdict = Verdict(False, tempfail=DATABASE)
        result = "ok" if verdict.ok else "tempfail" if verdict.tempfail else "fail"
        if result == "fail":
            self.sleep(self.fail_delay)
        log(f"auth {result} user={printable(user)} ip={printable(self.remoteip)} "
            f"mech={mechanism.decode()}")
        return verdict

    def close(self) -> None:
        """End of session: hang up on the database, if the backend has one."""
        if self.backend is not None:
            self.backend.close()
