"""Unit tests of qmail's delivery rules (mailboxes.py) on a folder of fake homes,
with a passwd lookup of our own: the cases the recorded layout does not reach
(test_rcptcheck.py checks them all against real qmail's verdicts)."""

import os

import pytest

from qmail_esmtpd import mailboxes as mailboxes_module
from qmail_esmtpd.mailboxes import DELIVERED, REMOTE, UNKNOWN, UNSURE, Mailboxes


@pytest.fixture
def homes(tmp_path):
    users = {}
    for name in ("joe", "alias"):
        home = tmp_path / name
        home.mkdir()
        users[name.encode()] = (os.getuid() or 1000, str(home).encode())
    if os.getuid() == 0:
        for name in ("joe", "alias"):
            os.chown(tmp_path / name, 1000, 1000)
    (tmp_path / "alias" / ".qmail-postmaster").write_text("&joe\n")
    (tmp_path / "joe" / ".qmail-list-default").write_text("./Maildir/\n")
    return tmp_path, users


def mailboxes(tmp_path, users, **kw):
    kw.setdefault("virtualdomains", [b"virt.example:joe", b"Virt.example:other", b"x.example:"])
    return Mailboxes([b"example.com"], kw["virtualdomains"], b"example.com",
                     str(tmp_path / "users" / "cdb").encode(), users.get)


def test_qmails_rules_on_fake_homes(homes):
    tmp_path, users = homes
    m = mailboxes(tmp_path, users)
    assert m.verdict(b"joe@example.com")[0] == DELIVERED
    assert m.verdict(b"JOE-list-x@EXAMPLE.com")[0] == DELIVERED
    assert m.verdict(b"joe-other@example.com")[0] == UNKNOWN
    assert m.verdict(b"postmaster@example.com")[0] == DELIVERED
    assert m.verdict(b"list-x@virt.example")[0] == DELIVERED  # the first entry wins
    assert m.verdict(b"a@x.example") == (REMOTE, "")  # empty prefix: not virtual
    assert m.verdict(b"a@elsewhere.example") == (REMOTE, "")


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
