"""Starting qmail-queue and checkpassword as qmail-smtpd would.

Python ignores SIGPIPE and SIGXFSZ for itself, and an ignored signal stays
ignored across exec: a shell QMAILQUEUE filter would then see write errors
instead of dying quietly, unlike under qmail-smtpd.  Children therefore
start with those signals at their default disposition.  posix_spawn keeps
`subprocess` (and its imports) off the start-up path.
"""

import _signal  # the C module behind `signal`, already loaded; `signal` costs enum
import posix

RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def spawn(program: bytes, argv: "list[bytes]", env: "Mapping[bytes, bytes]",
          file_actions: "Sequence[tuple]", search_path: bool = False) -> int:
    """Start `program` (looked up in $PATH when asked); its pid, or OSError."""
    start = posix.posix_spawnp if search_path else posix.posix_spawn
    return start(program, argv, env, file_actions=file_actions, setsigdef=RESET_SIGNALS)
