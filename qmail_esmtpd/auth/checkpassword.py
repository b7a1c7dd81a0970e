"""The AUTH patch's command line: `qmail-esmtpd CHECKPASSWORD SUBPROGRAM...`.

Each AUTH runs the checkpassword program with `user NUL password NUL NUL` on
its fd 3 (the checkpassword interface, at most 512 bytes); exit 0 means the
password is right.  Admins of the patch keep their run script unchanged.
No sending limit in this mode: there is no account table.
"""

import posix

from ..queue import spawn
from . import CHILD_TROUBLE, NO_PIPE, NO_START, NO_WRITE, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config import Controls

MAX_INPUT = 512


def open_backend(argv: list[bytes], controls: "Controls",
                 env: "Mapping[bytes, bytes]") -> "Checkpassword":
    return Checkpassword(argv)


class Checkpassword:
    def __init__(self, argv: list[bytes]) -> None:
        self.argv = argv

    def verify(self, user: bytes, password: bytes) -> Verdict:
        data = user + b"\0" + password + b"\0\0"
        if b"\0" in user or b"\0" in password or len(data) > MAX_INPUT:
            return Verdict(False)
        try:
            read_end, write_end = posix.pipe()
        except OSError:
            return Verdict(False, tempfail=NO_PIPE)
        try:
            pid = spawn(self.argv[0], self.argv, posix.environ, search_path=True, file_actions=[
                (posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0),
                (posix.POSIX_SPAWN_DUP2, 2, 1),  # its chatter goes to our log, not the client
                (posix.POSIX_SPAWN_DUP2, read_end, 3),
            ])
        except OSError:
            pid = 0
        finally:
            posix.close(read_end)
        written = False
        try:
            if pid:
                posix.write(write_end, data)  # at most 512 bytes: fits the pipe buffer
                written = True
        except OSError:
            pass
        finally:
            posix.close(write_end)
        if not pid:
            return Verdict(False, tempfail=NO_START)
        _, status = posix.waitpid(pid, 0)
        if not written:
            return Verdict(False, tempfail=NO_WRITE)
        if posix.WIFSIGNALED(status):
            return Verdict(False, tempfail=CHILD_TROUBLE)
        return Verdict(posix.WEXITSTATUS(status) == 0, user=user)

    def addresses(self) -> frozenset[bytes]:
        """No account table: only the login name itself, when it is an address."""
        return frozenset()

    def close(self) -> None:
        """Nothing held between checks."""
