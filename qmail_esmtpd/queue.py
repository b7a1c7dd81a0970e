"""The qmail-queue pipe: message on its fd 0, envelope on its fd 1, text on fd 6.

Started by spawn() below (default signal dispositions, no subprocess).  The
envelope is written only when the message is complete and acceptable, so a
client that vanishes, an oversized or a looping message leaves qmail-queue
with an empty envelope, and it queues nothing.
"""

import _signal  # the C module behind `signal`, already loaded; `signal` costs enum
import posix

from . import replies
from .config import exportable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ERRTEXT_MAX = 1023

# Python ignores SIGPIPE and SIGXFSZ for itself, and an ignored signal stays
# ignored across exec: a shell QMAILQUEUE filter (or a checkpassword) would
# then see write errors instead of dying quietly, unlike under qmail-smtpd.
RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def spawn(program: bytes, argv: list[bytes], env: "Mapping[bytes, bytes]",
          file_actions: "Sequence[tuple]", search_path: bool = False,
          own_group: bool = False) -> int:
    """Start a child as qmail-smtpd would, with default signal dispositions;
    its pid, or OSError.  posix_spawn keeps `subprocess` off the start-up path.
    `own_group`: the child leads a new process group (its pid), so that what
    it starts can be ended with it (killpg)."""
    start = posix.posix_spawnp if search_path else posix.posix_spawn
    if own_group:  # named only when wanted: 3.11 refuses setpgroup=None
        return start(program, argv, exportable(env), file_actions=file_actions,
                     setsigdef=RESET_SIGNALS, setpgroup=0)
    return start(program, argv, exportable(env), file_actions=file_actions,
                 setsigdef=RESET_SIGNALS)


def status_text(wait_status: int, write_failed: bool, errtext: bytes) -> bytes:
    """qmail's qmail_close(): empty when queued, else a D/Z-prefixed text."""
    if posix.WIFSIGNALED(wait_status):
        return replies.QQ_CRASHED
    code = posix.WEXITSTATUS(wait_status)
    if code == 0:
        return replies.QQ_READ_ERROR if write_failed else b""
    if code == 82 and len(errtext) > 2:  # notqmail: qmail-queue's own words on fd 6
        return errtext.split(b"\0", 1)[0]
    text = replies.QQ_EXIT_TEXT.get(code)
    if text is not None:
        return text
    return replies.QQ_PERMANENT if 11 <= code <= 40 else replies.QQ_TEMPORARY


class QueueJob:
    """One qmail-queue run.  Raises OSError from __init__ if no pipe can be made."""

    def __init__(self, program: bytes, env: "Mapping[bytes, bytes]") -> None:
        self.failed = False
        self.pid = 0
        pipes = [posix.pipe() for _ in range(3)]
        (msg_r, self.msg_w), (env_r, self.env_w), (self.err_r, err_w) = pipes
        try:
            self.pid = spawn(program, [program], env, file_actions=[
                (posix.POSIX_SPAWN_DUP2, msg_r, 0),
                (posix.POSIX_SPAWN_DUP2, env_r, 1),
                (posix.POSIX_SPAWN_DUP2, err_w, 6),
            ])
        except OSError:
            self.pid = 0  # like qmail's child exiting 120: noticed at the end
            self.failed = True
        finally:
            for fd in (msg_r, env_r, err_w):
                posix.close(fd)

    def write(self, data: bytes) -> None:
        """Feed message bytes; a dead qmail-queue is remembered, not raised."""
        if self.failed or not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[posix.write(self.msg_w, view):]
        except OSError:
            self.failed = True

    def finish(self, envelope: bytes | None) -> bytes:
        """Send the envelope (None: abandon the message), wait, return the verdict."""
        write_failed = self.failed or envelope is None
        posix.close(self.msg_w)
        if envelope is not None and not write_failed:
            try:
                view = memoryview(envelope)
                while view:
                    view = view[posix.write(self.env_w, view):]
            except OSError:
                write_failed = True
        posix.close(self.env_w)
        try:
            if not self.pid:
                return replies.QQ_EXIT_TEXT[replies.QQ_EXEC_FAILED]
            _, status = posix.waitpid(self.pid, 0)
            errtext = b""
            if posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 82:
                posix.set_blocking(self.err_r, False)  # a grandchild may still hold fd 6
                try:
                    errtext = posix.read(self.err_r, ERRTEXT_MAX)
                except BlockingIOError:
                    pass
            return status_text(status, write_failed, errtext)
        finally:
            posix.close(self.err_r)
