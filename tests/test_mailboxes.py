"""Unit tests of qmail's delivery rules (mailboxes.py) on a folder of fake homes,
with a passwd lookup of our own: the cases the recorded layout does not reach,
and each rule the second recording checks (test_rcptcheck.py checks them all
against real qmail's verdicts)."""

import os
import pwd
import time
from pathlib import Path

import pytest

from qmail_esmtpd import kept as kept_module
from qmail_esmtpd import mailboxes as mailboxes_module
from qmail_esmtpd.kept import KeptFiles
from qmail_esmtpd.mailboxes import DELIVERED, REMOTE, UNKNOWN, UNSURE, Mailboxes

from harness.files import compile_users

UID = os.getuid() or 1000  # the fake users' uid: the homes are chowned to it as root


@pytest.fixture
def homes(tmp_path):
    users = {}
    for name in ("joe", "alias"):
        home = tmp_path / name
        home.mkdir(mode=0o755)
        home.chmod(0o755)
        users[name.encode()] = (UID, UID, str(home).encode())
        if os.getuid() == 0:
            os.chown(home, UID, UID)
    (tmp_path / "alias" / ".qmail-postmaster").write_text("&joe\n")
    (tmp_path / "joe" / ".qmail-list-default").write_text("./Maildir/\n")
    return tmp_path, users


def mailboxes(tmp_path, users, **kw):
    kw.setdefault("virtualdomains", [b"virt.example:joe", b"x.example:"])
    return Mailboxes([b"example.com", b"localhost"], kw.pop("virtualdomains"), b"example.com",
                     str(tmp_path / "users" / "cdb").encode(), kw.pop("getpw", users.get),
                     **kw)


def assign(tmp_path, *lines):
    """users/assign with `lines`, compiled to users/cdb as qmail-newu does."""
    (tmp_path / "users").mkdir(exist_ok=True)
    (tmp_path / "users" / "assign").write_text("".join(line + "\n" for line in lines) + ".\n")
    compile_users(tmp_path / "users" / "assign", tmp_path / "users" / "cdb")


def test_qmails_rules_on_fake_homes(homes):
    tmp_path, users = homes
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"joe@example.com")[0] == DELIVERED
    assert m.verdict(b"JOE-list-x@EXAMPLE.com")[0] == DELIVERED
    assert m.verdict(b"joe-other@example.com")[0] == UNKNOWN
    assert m.verdict(b"postmaster@example.com")[0] == DELIVERED
    assert m.verdict(b"list-x@virt.example")[0] == DELIVERED
    assert m.verdict(b"a@x.example") == (REMOTE, "")  # empty prefix: not virtual
    assert m.verdict(b"a@elsewhere.example") == (REMOTE, "")


def test_an_empty_local_part_is_delivered_to_no_one(homes):
    """qmail-lspawn exits 0 for `@domain` (and RCPT TO:<>, which qmail-send
    makes `@envnoathost`): qmail's success, not a bounce."""
    tmp_path, users = homes
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"@example.com")[0] == DELIVERED
    assert m.verdict(b"")[0] == DELIVERED


def test_what_we_cannot_see_is_unsure_never_unknown(homes, monkeypatch):
    tmp_path, users = homes
    loop = tmp_path / "joe" / ".qmail-loop"
    loop.symlink_to(loop)  # ELOOP: qmail-local takes it for "no such file"
    assert mailboxes(tmp_path, users).verdict(b"joe-loop@example.com")[0] == UNKNOWN
    real_stat = mailboxes_module.posix.stat

    def no_entry(path):  # what qmaild meets in a 0700 home (root never does)
        if b"/joe/" in path:
            raise PermissionError(13, "Permission denied")
        return real_stat(path)

    monkeypatch.setattr(mailboxes_module.posix, "stat", no_entry)
    assert mailboxes(tmp_path, users).verdict(b"joe-loop@example.com") == (
        UNSURE, f"{tmp_path}/joe/.qmail-loop: Permission denied")
    no_alias = {b"joe": users[b"joe"]}
    assert mailboxes(tmp_path, no_alias).verdict(b"nobody@example.com")[0] == UNSURE


@pytest.mark.parametrize("content", [b"", b"garbage, not a cdb", b"\0" * 2048])
def test_a_damaged_users_cdb_is_unsure(homes, content):
    tmp_path, users = homes
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "cdb").write_bytes(content)
    assert mailboxes(tmp_path, users).verdict(b"joe-x@example.com")[0] == UNSURE


@pytest.mark.parametrize("content", [None, b"", b"garbage, not a cdb", b"\0" * 2048])
def test_a_workers_copy_of_users_cdb_answers_as_the_file_does(homes, content, monkeypatch):
    """The same verdicts and reasons from a worker's copy (kept.KeptFiles,
    kept at once here) and the answers it keeps as from the file, damaged
    files too, session after session: closing one leaves the copy to the next."""
    tmp_path, users = homes
    joe = users[b"joe"][2].decode()
    if content is None:
        assign(tmp_path, f"=joe:joe:{UID}:{UID}:{joe}:-::", f"+root-:root:0:0:{joe}:-::",
               f"+fine-:joe:{UID}:{UID}:{joe}:-::")
    else:
        (tmp_path / "users").mkdir()
        (tmp_path / "users" / "cdb").write_bytes(content)
    addresses = [b"joe@example.com", b"root-x@example.com", b"fine-x@example.com",
                 b"fine-list-x@example.com", b"Fine-List-y@example.com", b"nobody@example.com"]
    expected = [mailboxes(tmp_path, users).verdict(a) for a in addresses]
    monkeypatch.setattr(kept_module, "SETTLED_NS", -1 << 62)  # kept however recent
    kept = KeptFiles()
    for _ in range(3):
        m = mailboxes(tmp_path, users, kept=kept)
        assert [m.verdict(a) for a in addresses] == expected
        m.close()
    assert bool(kept.made) == (content is None)  # a damaged file: no copy made, read each time
    if content is None:  # the copy keeps its answers; an Unsure one is asked again
        ((_, copy),) = kept.made.values()
        assert b"fine-x" in copy.answers and b"root-x" not in copy.answers


def test_dot_qmail_names_up_to_255_bytes_are_found(homes):
    """The .qmail search skips only names the kernel would refuse (over 255
    bytes, ENAMETOOLONG, "not there" to qmail-local): one of exactly 255 is found."""
    tmp_path, users = homes
    ext = "e" * (255 - len(".qmail-"))
    prefix = "p" * (255 - len(".qmail-") - len("-default"))
    (tmp_path / "joe" / f".qmail-{ext}").write_text("./Maildir/\n")
    (tmp_path / "joe" / f".qmail-{prefix}-default").write_text("./Maildir/\n")
    m = mailboxes(tmp_path, users)
    assert m.verdict(f"joe-{ext}@example.com".encode())[0] == DELIVERED
    assert m.verdict(f"joe-{ext}e@example.com".encode())[0] == UNKNOWN  # 256: cannot exist
    assert m.verdict(f"joe-{prefix}-{'x' * 600}@example.com".encode())[0] == DELIVERED


# -- 1. 8-bit user names: getpwnam() is given the bytes as they came ----------


@pytest.mark.parametrize("name", [b"rcjos\xc3\xa9", b"rcren\xe9", b"\xff\xfe"])
def test_getpwnam_asks_for_the_exact_bytes(monkeypatch, name):
    """pwd takes a str and encodes it with the filesystem encoding and
    surrogateescape: the name must reach the C library byte for byte, as
    qmail-getpw hands it over (latin-1 decoding turned é's two UTF-8 bytes
    into four), and the home comes back byte for byte too."""
    asked = []

    def fake(text):
        asked.append(os.fsencode(text))
        home = os.fsdecode(b"/home/" + name)
        return pwd.struct_passwd((text, "x", 4711, 4712, "", home, "/bin/sh"))

    monkeypatch.setattr(mailboxes_module.pwd, "getpwnam", fake)
    assert mailboxes_module.getpwnam(name) == (4711, 4712, b"/home/" + name)
    assert asked == [name]


def test_eight_bit_names_are_lowered_in_ascii_only(homes):
    """qmail-getpw's case_lowers() lowers A-Z and nothing else: RCJOSÉ asks
    for "rcjos" + É's bytes, not é's."""
    tmp_path, users = homes
    asked = []
    m = mailboxes(tmp_path, users, getpw=lambda name: asked.append(name) or users.get(name))
    m.verdict("RCJOSÉ-news@example.com".encode())
    assert asked == [b"alias", "rcjosÉ-news".encode(), "rcjosÉ".encode()]


# -- 2. virtualdomains: the last line for a domain wins -----------------------


def test_the_last_virtualdomains_line_for_a_domain_wins(homes):
    """constmap_init() puts each entry at the head of its hash chain, so the
    lookup meets the last line for a key first, whatever its case."""
    tmp_path, users = homes
    m = mailboxes(tmp_path, users, virtualdomains=[
        b"virt.example:other", b"Virt.Example:joe", b"two.example:joe", b"TWO.example:other"])
    assert m.local_part(b"list-x@virt.example") == b"joe-list-x"
    assert m.verdict(b"list-x@VIRT.example")[0] == DELIVERED
    assert m.local_part(b"list-x@two.example") == b"other-list-x"
    assert m.verdict(b"list-x@two.example")[0] == UNKNOWN  # the alias has no .qmail-other-...


# -- 3. percenthack: before locals and virtualdomains --------------------------


def test_percenthack_rewrites_before_locals_and_virtualdomains(homes):
    tmp_path, users = homes
    m = mailboxes(tmp_path, users, percenthack=[b"pct.example", b"Example.com"])
    assert m.local_part(b"joe%example.com@pct.example") == b"joe"
    assert m.verdict(b"joe%example.com@PCT.example")[0] == DELIVERED
    assert m.verdict(b"joe-list-x%localhost@pct.example")[0] == DELIVERED
    assert m.verdict(b"nobody%example.com@pct.example")[0] == UNKNOWN
    assert m.verdict(b"joe%far.example@pct.example") == (REMOTE, "")  # relayed
    assert m.local_part(b"list-x%virt.example@pct.example") == b"joe-list-x"
    # each rewritten domain is looked up again, until one is not in percenthack
    assert m.local_part(b"joe%localhost%example.com%pct.example@pct.example") == b"joe"
    assert m.local_part(b"joe%localhost") == b"joe"  # @envnoathost, then the hack
    assert m.local_part(b"a%b%joe@pct.example") is None  # a%b@joe: joe is not in percenthack
    assert m.local_part(b"joe%localhost@elsewhere.example") is None
    no_hack = mailboxes(tmp_path, users)
    assert no_hack.verdict(b"joe%example.com@example.com")[0] == UNKNOWN  # .qmail-... for joe%


# -- 4. what qmail defers is unsure, never unknown ------------------------------


@pytest.mark.parametrize("mode, verdict", [
    (0o1755, UNSURE),   # sticky: "user is editing his .qmail file"
    (0o757, UNSURE),    # writable by others (conf-patrn 002): "Uh-oh"
    (0o775, UNKNOWN),   # group-writable: allowed by notqmail's conf-patrn
    (0o655, UNSURE),    # the user may not enter it: chdir fails
])
def test_a_home_qmail_local_refuses_defers(homes, mode, verdict):
    tmp_path, users = homes
    (tmp_path / "joe").chmod(mode)
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"joe-nope@example.com")[0] == verdict
    assert m.verdict(b"joe@example.com")[0] == DELIVERED  # no dash: accepted either way


def test_the_alias_home_missing_or_sticky_defers(homes):
    """The reporter's case: postmaster@ on a host whose alias home is gone."""
    tmp_path, users = homes
    m = mailboxes(tmp_path, users)
    (tmp_path / "alias").chmod(0o1755)
    verdict, why = m.verdict(b"nobody@example.com")
    assert verdict == UNSURE and "sticky" in why
    (tmp_path / "alias").rename(tmp_path / "gone")
    verdict, why = m.verdict(b"postmaster@example.com")
    assert verdict == UNSURE and why.startswith(f"Unable to switch to {tmp_path}/alias:")
    root_alias = {**users, b"alias": (0, 0, users[b"alias"][2])}
    assert mailboxes(tmp_path, root_alias).verdict(b"nobody@example.com")[0] == UNSURE


def test_users_assign_home_missing_or_uid_0_defers(homes):
    tmp_path, users = homes
    joe = users[b"joe"][2].decode()
    assign(tmp_path, f"+gone-:joe:{UID}:{UID}:{tmp_path}/nowhere:-::",
           f"+root-:root:0:0:{joe}:-::",
           f"+empty-:joe::{UID}:{joe}:-::",  # no digits: scan_ulong's 0
           f"+fine-:joe:{UID}:{UID}:{joe}:-::")
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"gone-x@example.com")[0] == UNSURE
    assert m.verdict(b"root-x@example.com") == (
        UNSURE, "users/assign gives uid 0: qmail-lspawn does not deliver as root")
    assert m.verdict(b"empty-x@example.com")[0] == UNSURE
    assert m.verdict(b"fine-x@example.com")[0] == UNKNOWN
    assert m.verdict(b"fine-list-x@example.com")[0] == DELIVERED


def test_a_dot_qmail_the_user_may_not_open_defers(homes):
    """qmail-local opens .qmail-EXT as the user: EACCES defers, whether it is
    a file or a folder (a folder it may open is "not there")."""
    tmp_path, users = homes
    joe = tmp_path / "joe"
    for name, mode in ((".qmail-locked", 0o000), (".qmail-open", 0o755)):
        (joe / name).mkdir()
        (joe / name).chmod(mode)
    (joe / ".qmail-secret").write_text("./Maildir/\n")
    (joe / ".qmail-secret").chmod(0o000)
    (joe / ".qmail-shared").write_text("./Maildir/\n")
    (joe / ".qmail-shared").chmod(0o646)
    (joe / ".qmail-open" / "inside").write_text("./Maildir/\n")
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"joe-locked@example.com")[0] == UNSURE
    assert m.verdict(b"joe-locked/x@example.com")[0] == UNSURE  # through a folder it may not
    assert m.verdict(b"joe-locked-x@example.com")[0] == UNKNOWN  # not a name it opens
    assert m.verdict(b"joe-secret@example.com")[0] == UNSURE
    assert m.verdict(b"joe-shared@example.com")[0] == UNSURE  # "Uh-oh: .qmail file is writable"
    assert m.verdict(b"joe-open@example.com")[0] == UNKNOWN  # a folder: not a .qmail file
    assert m.verdict(b"joe-open/inside@example.com")[0] == DELIVERED
    assert m.verdict(b"joe-open/nothing@example.com")[0] == UNKNOWN


# -- 5. cost: only names that can be users, within a time budget ----------------


def recording_getpw(users, cpu=0.0):
    """A getpw that notes the names asked, each costing `cpu` seconds of CPU
    (as /etc/passwd's lines cost the C library) when it is not the alias."""
    asked = []

    def getpw(name):
        asked.append(name)
        if cpu and name != b"alias":
            until = time.thread_time() + cpu
            while time.thread_time() < until:
                pass
        return users.get(name)
    return getpw, asked


def test_only_names_that_can_be_users_are_asked_for(homes):
    """qmail-getpw's candidates: prefixes ending at a dash, shorter than 32
    bytes; none starting with - or + (never a user in /etc/passwd; the empty
    name is, on a line that starts with a colon); the alias once a session."""
    tmp_path, users = homes
    getpw, asked = recording_getpw(users)
    m = mailboxes(tmp_path, users, getpw=getpw)
    assert m.verdict(b"-" * 32 + b"x@example.com")[0] == UNKNOWN
    assert asked == [b"alias", b""]
    asked.clear()
    assert m.verdict(b"Ab-c-d@example.com")[0] == UNKNOWN
    assert asked == [b"ab-c-d", b"ab-c", b"ab"]
    asked.clear()
    m.verdict(b"+x-" + b"y" * 40 + b"-z@example.com")
    assert asked == []
    m.verdict(b"a" * 31 + b"@example.com")
    m.verdict(b"a" * 32 + b"@example.com")
    assert asked == [b"a" * 31]


def test_a_slow_user_database_is_asked_no_longer_than_the_budget(homes):
    """Once a recipient's lookups have taken LOOKUP_BUDGET of CPU (with the
    next as long as the slowest so far), the rest are not asked: accepted
    unchecked.  The alias, asked first once a session, is not counted."""
    tmp_path, users = homes
    getpw, asked = recording_getpw(users, cpu=mailboxes_module.LOOKUP_BUDGET * 0.6)
    m = mailboxes(tmp_path, users, getpw=getpw)
    assert m.verdict(b"nobody@example.com")[0] == UNKNOWN  # one name: always asked
    assert asked == [b"alias", b"nobody"]
    asked.clear()
    verdict, why = m.verdict(b"a-b-c-d@example.com")
    assert verdict == UNSURE and why.startswith("user database slow: 1 names took")
    assert asked == [b"a-b-c-d"]
    fast_getpw, asked = recording_getpw(users)
    fast = mailboxes(tmp_path, users, getpw=fast_getpw)
    assert fast.verdict(b"a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q@example.com")[0] == UNKNOWN
    assert len(asked) == 16 + 1  # every candidate, and the alias


def test_a_name_with_a_nul_is_no_user():
    assert mailboxes_module.getpwnam(b"ro\0ot") is None


def test_the_real_passwd_is_read(tmp_path):
    entry = pwd.getpwuid(0)
    assert mailboxes_module.getpwnam(entry.pw_name.encode()) == (0, 0, entry.pw_dir.encode())
    assert mailboxes_module.getpwnam(b"no-such-user-here") is None
    assert Path(mailboxes_module.getpwnam(b"root")[2].decode()).is_absolute()


def test_many_dot_qmail_names_are_looked_for_in_one_listing(homes, monkeypatch):
    """An extension of 200 dashes has 200 .qmail-...-default names to try:
    the home is listed once instead, and a home that cannot be listed is
    asked name by name, with the same answers."""
    tmp_path, users = homes
    (tmp_path / "joe" / (".qmail-" + "-" * 150 + "default")).write_text("./Maildir/\n")
    near, far = b"joe-" + b"-" * 200 + b"@example.com", b"joe-x-" + b"-" * 200 + b"@example.com"
    stats = []
    real_stat = mailboxes_module.posix.stat
    monkeypatch.setattr(mailboxes_module.posix, "stat", lambda p: stats.append(p) or real_stat(p))
    m = mailboxes(tmp_path, users)
    assert m.verdict(near)[0] == DELIVERED
    assert m.verdict(far)[0] == UNKNOWN
    assert len(stats) < 10
    stats.clear()

    def unlistable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mailboxes_module.posix, "listdir", unlistable)
    assert m.verdict(near)[0] == DELIVERED
    assert m.verdict(far)[0] == UNKNOWN
    assert len(stats) > 200
