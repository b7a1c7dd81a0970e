"""The AUTH patch's command line: `qmail-esmtpd CHECKPASSWORD SUBPROGRAM...`.

Each AUTH runs the checkpassword program with `user NUL password NUL NUL` on
its fd 3 (the checkpassword interface, at most 512 bytes); exit 0 means the
password is right.  Admins of the patch keep their run script unchanged.
"""

import posix

from . import replies
from .sasl import AuthOutcome

MAX_INPUT = 512


class Checkpassword:
    def __init__(self, argv: list[bytes]) -> None:
        self.argv = argv

    def verify(self, user: bytes, password: bytes) -> AuthOutcome:
        data = user + b"\0" + password + b"\0\0"
        if b"\0" in user or b"\0" in password or len(data) > MAX_INPUT:
            return AuthOutcome(False)
        try:
            read_end, write_end = posix.pipe()
        except OSError:
            return AuthOutcome(False, tempfail=replies.AUTH_TEMP_PIPE)
        try:
            pid = posix.posix_spawnp(self.argv[0], self.argv, posix.environ, file_actions=[
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
            return AuthOutcome(False, tempfail=replies.AUTH_TEMP_START)
        _, status = posix.waitpid(pid, 0)
        if not written:
            return AuthOutcome(False, tempfail=replies.AUTH_TEMP_WRITE)
        if posix.WIFSIGNALED(status):
            return AuthOutcome(False, tempfail=replies.AUTH_TEMP_CHILD)
        return AuthOutcome(posix.WEXITSTATUS(status) == 0, user=user)
