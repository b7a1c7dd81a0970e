"""Files a warm worker keeps between its sessions (config.KEPT), each used
only while one stat() shows it unchanged: recipient checking's control
files and users/cdb, AUTH's settings.  Also the stamp by which the server
tells a changed rules file or certificate.  Loaded by workers and the
server only: a session under tcpserver reads every file itself.
"""

import posix
import time

from .config import Controls, read_whole, unreadable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    Made = TypeVar("Made")

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): a file replaced,
# rewritten, truncated, touched or given other permissions or an owner
# (chmod, chown, setfacl and every write set st_ctime) has another stamp
Stamp = tuple[int, int, int, int, int]
# A change within the same timestamp tick as the one before it keeps the
# stamp (the kernel's clock for them is coarse, a second on some
# filesystems): a file changed more recently than this is not kept.
SETTLED_NS = 2_000_000_000
USERS_KEPT_MOST = 1 << 22  # a bigger users/cdb is read by each session, in pieces


def stamp_of(st: "posix.stat_result") -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def settled_stamp(st: "posix.stat_result") -> Stamp | None:
    """The stamp of a file (or folder) whose next change will show in it;
    None for one changed within SETTLED_NS, whose next change may not."""
    if st.st_ctime_ns > time.time_ns() - SETTLED_NS:
        return None
    return stamp_of(st)


class TooLarge(Exception):
    """A file over the size its reader keeps (it reads it in pieces instead)."""


class KeptFiles:
    """The contents of files, kept by a warm worker between its sessions and
    used only while they are unchanged, so that a session reads what it
    would read itself: the control files of the recipient check, users/cdb.

    A kept file is checked by one stat() against its stamp when read: a
    change, a file that cannot be looked at (stat fails) or one unsettled
    when read (SETTLED_NS) means reading it again, which fails as a
    session's own read fails (a file made unreadable has a new stamp).  A
    file found missing is known missing while its folder keeps the stamp
    it had (no name appears in a folder without changing it), the one stat
    of the folder shared by the session's reads (KeptControls); a dangling
    symbolic link is looked for each time, as its target may appear.
    Errors are not kept: each session meets them again."""

    def __init__(self) -> None:
        self.files: dict[bytes, tuple[Stamp, bytes]] = {}
        self.absent: dict[bytes, Stamp] = {}  # a missing file: its folder's stamp then
        self.made: dict[bytes, tuple[bytes, object]] = {}  # parsed(): contents, what was made

    def parsed(self, path: bytes, parse: "Callable[[bytes], Made]",
               most: int | None = None) -> "Made | None":
        """parse(contents), made once for each version of the file kept; None
        when it is missing.  Raises as contents() does, and what parse raises."""
        data = self.contents(path, most=most)
        if data is None:
            return None
        made = self.made.get(path)
        if made is not None and made[0] is data:
            return made[1]  # type: ignore[return-value]  # this parse made it, for this path
        value = parse(data)
        kept = self.files.get(path)
        if kept is not None and kept[1] is data:
            self.made[path] = (data, value)
        return value

    def contents(self, path: bytes, folder: Stamp | None = None,
                 most: int | None = None) -> bytes | None:
        """The file's contents; None when it is missing.  `folder`: the
        settled stamp of its folder now, if the caller has it; `most`: the
        size past which TooLarge is raised.  Raises OSError as reading does."""
        if folder is not None and self.absent.get(path) == folder:
            return None
        kept = self.files.get(path)
        if kept is not None:
            try:
                st = posix.stat(path)
            except OSError:  # gone, or no longer reachable: reading says which
                pass
            else:
                if stamp_of(st) == kept[0]:
                    return kept[1]
        return self._read(path, folder, most)

    def _read(self, path: bytes, folder: Stamp | None, most: int | None) -> bytes | None:
        self.files.pop(path, None)
        self.absent.pop(path, None)
        try:
            fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
        except FileNotFoundError:
            if folder is not None and not self._dangling(path):
                self.absent[path] = folder
            return None
        try:
            st = posix.fstat(fd)
            if most is not None and st.st_size > most:
                raise TooLarge(f"{st.st_size} bytes")
            data = read_whole(fd)
        finally:
            posix.close(fd)
        stamp = settled_stamp(st)
        if stamp is not None and len(data) == st.st_size:
            self.files[path] = (stamp, data)
        return data

    @staticmethod
    def _dangling(path: bytes) -> bool:
        """Whether the missing file is a link to something missing (that may appear)."""
        try:
            posix.lstat(path)
        except OSError:
            return False
        return True


class KeptControls(Controls):
    """A control folder read through KeptFiles (Controls.kept()): one per
    session, which stats the folder once for the files it finds missing."""

    def __init__(self, directory: bytes, kept: KeptFiles) -> None:
        super().__init__(directory)
        self.keeper = kept
        self._folder: Stamp | None = None
        self._looked = False  # at the folder, this session

    def kept(self) -> "Controls":
        return self

    def _read(self, name: bytes) -> bytes | None:
        if not self._looked:
            self._looked = True
            try:
                self._folder = settled_stamp(posix.stat(self.directory))
            except OSError:
                pass
        try:
            return self.keeper.contents(self.path(name), self._folder)
        except OSError as e:
            raise unreadable(name, e) from None
