"""Control files as qmail reads them, through the real program on pipes."""

import os
import subprocess
import time
from pathlib import Path

import cdblib
import pytest

from harness.paths import ROOT, SERVER


def session(control: Path, commands: bytes) -> list[bytes]:
    out = subprocess.run([str(SERVER)], input=commands, capture_output=True, timeout=30,
                         env={"QMAIL_CONTROL": str(control), "PATH": "/usr/bin:/bin"})
    return out.stdout.split(b"\r\n")[:-1]


def write_cdb(path: Path, keys: list[bytes]) -> None:
    """As qmail-newmrh makes it: each lower-cased domain a key, empty values."""
    with open(path, "wb") as f:
        writer = cdblib.Writer(f)
        for key in keys:
            writer.put(key, b"")
        writer.finalize()


def rcpt_replies(control: Path, recipients: list[bytes]) -> list[bytes]:
    lines = b"".join(b"RCPT TO:<%s>\r\n" % r for r in recipients)
    replies = session(control, b"MAIL FROM:<a@b>\r\n" + lines + b"QUIT\r\n")
    return [r[:3] for r in replies[2:-1]]


def test_morercpthosts_cdb_extends_rcpthosts(control: Path):
    write_cdb(control / "morercpthosts.cdb", [b"more.example", b".sub.example"])
    got = rcpt_replies(control, [b"x@example.com", b"x@MORE.example", b"x@a.sub.example",
                                 b"x@sub.example", b"x@other.example", b"postmaster"])
    assert got == [b"250", b"250", b"250", b"553", b"553", b"250"]


def test_suffixes_are_asked_up_to_the_longest_that_can_be_listed(control: Path):
    """Only suffixes as long as the longest rcpthosts entry (and, for
    morercpthosts.cdb, a domain's 255 bytes) are looked up: exactly those can
    match, whatever the address is made of."""
    longest = b"a" * 200 + b".example"
    (control / "rcpthosts").write_text(f"example.com\n.{longest.decode()}\n")
    domain = b"d" * 240 + b".example"  # 248 bytes: within a domain's 255
    write_cdb(control / "morercpthosts.cdb", [domain, b".more.example"])
    dots = b"." * 880
    got = rcpt_replies(control, [b"x@example.com", b"x@a.example.com", b"x@b." + longest,
                                 b"x@" + dots[:600] + b"." + longest, b"x@" + longest,
                                 b"x@" + domain, b"x@q." + domain,
                                 b"x@" + b"x." * 430 + b"more.example",
                                 b"x@" + dots, b"x@" + dots + b"example.com"])
    assert got == [b"250", b"553", b"250", b"250", b"553", b"250", b"553", b"250", b"553", b"553"]


def test_morercpthosts_is_ignored_without_rcpthosts(control: Path):
    (control / "rcpthosts").unlink()
    write_cdb(control / "morercpthosts.cdb", [b"more.example"])
    assert rcpt_replies(control, [b"x@anything.org"]) == [b"250"]


def test_damaged_morercpthosts_is_a_control_error(control: Path):
    (control / "morercpthosts.cdb").write_bytes(b"not a cdb")
    replies = session(control, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@elsewhere.org>\r\nQUIT\r\n")
    assert replies[-1] == b"421 unable to read controls (#4.3.0)"


@pytest.mark.parametrize("name", ["rcpthosts", "badmailfrom", "databytes", "smtpgreeting"])
def test_unreadable_control_file_is_421_at_start(control: Path, name: str):
    (control / name).unlink(missing_ok=True)
    (control / name).mkdir()
    assert session(control, b"QUIT\r\n") == [b"421 unable to read controls (#4.3.0)"]


def test_a_bug_gives_421_and_a_logged_traceback_never_one_on_the_wire(control: Path):
    """Simulate a bug in the core; the adapter must still end the session cleanly."""
    import sys

    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from qmail_esmtpd import protocol, cli\n"
            "def broken(self, arg): raise RuntimeError('simulated bug')\n"
            "protocol.Session.noop = broken\n"
            "cli.run()\n")
    out = subprocess.run([sys.executable, "-c", code], input=b"HELO x\r\nNOOP\r\nQUIT\r\n",
                         capture_output=True, timeout=30,
                         env={"QMAIL_CONTROL": str(control), "PATH": "/usr/bin:/bin"})
    assert out.stdout == (b"220 mx.example.com ESMTP\r\n250 mx.example.com\r\n"
                          b"421 internal error, closing connection (#4.3.0)\r\n")
    assert out.returncode == 1
    assert b"Traceback" in out.stderr and b"simulated bug" in out.stderr


@pytest.fixture(scope="module")
def settled(tmp_path_factory) -> Path:
    """A folder with files, left alone long enough to be kept (kept.settled_stamp)."""
    from qmail_esmtpd.kept import SETTLED_NS

    folder = tmp_path_factory.mktemp("kept")
    (folder / "control").mkdir()
    (folder / "control" / "locals").write_text("example.com\n")
    (folder / "elsewhere").mkdir()
    (folder / "control" / "virtualdomains").symlink_to(folder / "elsewhere" / "virtualdomains")
    time.sleep(SETTLED_NS / 1e9 + 0.2)
    return folder


def test_a_kept_control_file_is_read_again_once_changed(settled: Path):
    """What a worker keeps is used while the stamp holds (the same bytes
    object comes back); rewritten in place with its size and modification
    time kept, the file is read again (its ctime moved)."""
    from qmail_esmtpd.kept import KeptControls, KeptFiles

    kept = KeptFiles()
    path = settled / "control" / "locals"
    first = KeptControls(bytes(path.parent), kept)._read(b"locals")
    assert KeptControls(bytes(path.parent), kept)._read(b"locals") is first
    before = path.stat()
    with path.open("r+b") as f:
        f.write(b"example.org\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert KeptControls(bytes(path.parent), kept).lines(b"locals") == [b"example.org"]


def test_a_missing_control_file_is_looked_for_again_when_it_may_have_appeared(settled: Path):
    """A missing file stays missing while its folder is unchanged; one
    created there (the folder changes) counts from the next session, and so
    does the target of a dangling link, which changes nothing in the folder."""
    from qmail_esmtpd.kept import KeptControls, KeptFiles

    kept = KeptFiles()
    control = settled / "control"
    assert KeptControls(bytes(control), kept).lines(b"percenthack") is None
    assert KeptControls(bytes(control), kept).lines(b"virtualdomains") is None
    assert bytes(control / "percenthack") in kept.absent  # known missing: no open
    assert bytes(control / "virtualdomains") not in kept.absent  # a dangling link
    (control / "percenthack").write_text("pct.example\n")
    (settled / "elsewhere" / "virtualdomains").write_text("virt.example:joe\n")
    view = KeptControls(bytes(control), kept)
    assert view.lines(b"percenthack") == [b"pct.example"]
    assert view.lines(b"virtualdomains") == [b"virt.example:joe"]


def test_a_file_changed_lately_is_not_kept(tmp_path: Path):
    """Changed within the kernel's timestamp tick, a file could change again
    with the same stamp: it is read by each session until it has settled."""
    from qmail_esmtpd.kept import KeptFiles

    kept = KeptFiles()
    (tmp_path / "locals").write_text("example.com\n")
    assert kept.contents(bytes(tmp_path / "locals")) == b"example.com\n"
    assert not kept.files
