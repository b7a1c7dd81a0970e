"""The registry of checks: each line's switch turns its module on, the order
of the table is the order of asking, and a check that is off costs nothing."""

import pytest

from qmail_esmtpd.config import CHECK_MODULES, CHECKS, Settings, configured_checks
from qmail_esmtpd.protocol import AT_MAIL, AT_RCPT, Checks

from harness.processes import imported_modules

SESSION = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nQUIT\r\n"


@pytest.fixture
def everything_on(tmp_path):
    """A qmail home whose control files switch every registered check on."""
    control = tmp_path / "control"
    control.mkdir()
    files = {"me": "mx.example.com", "rcpthosts": "example.com", "badmailfrom": "spam@x.org",
             "badrcptto": "trap@example.com", "checkrecipients": "1",
             "smtpplugins": "[rcpt]\n:true", "authdb": "dbname=nowhere", "smtputf8": "1"}
    for name, text in files.items():
        (control / name).write_text(text + "\n")
    return {b"QMAIL_HOME": str(tmp_path).encode(), b"QMAIL_CONTROL": str(control).encode(),
            b"RBLSMTPD": b"listed"}  # rblsmtpd's text from the rules: refused, no DNS


def modules_asked(built, stage):
    return [type(hook.__self__).__module__ for hook in built.stages.get(stage, ())]


def test_each_switch_turns_its_module_on_in_table_order(everything_on):
    settings = Settings(everything_on)
    built = Checks.assemble(configured_checks(settings))
    asked = {module for hooks in built.stages.values()
             for module in (type(hook.__self__).__module__ for hook in hooks)}
    offering = {type(offer.__self__).__module__ for offer, _ in built.keywords}
    assert asked | offering == set(CHECK_MODULES)
    assert offering == {"qmail_esmtpd.check_smtputf8"}  # no stage: a keyword and a parameter
    assert set(built.parameters) == {b"SMTPUTF8"}
    order = [f"qmail_esmtpd.check_{name}" for name, _ in CHECKS]
    for stage in (AT_MAIL, AT_RCPT):
        modules = modules_asked(built, stage)
        assert modules == sorted(modules, key=order.index)
    assert modules_asked(built, AT_RCPT) == [
        "qmail_esmtpd.check_badmailfrom", "qmail_esmtpd.check_authsender",
        "qmail_esmtpd.check_spp", "qmail_esmtpd.check_rcpthosts",
        "qmail_esmtpd.check_badrcptto", "qmail_esmtpd.check_recipients"]
    assert len(built.environment) == 1  # the plugins' S and U


def test_without_control_files_no_check_is_built(tmp_path):
    (tmp_path / "me").write_text("mx.example.com\n")
    built = Checks.assemble(configured_checks(Settings({b"QMAIL_CONTROL":
                                                        str(tmp_path).encode()})))
    assert (built.stages, built.keywords, built.parameters) == ({}, (), {})


def test_a_check_that_is_off_is_not_imported(tmp_path):
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "rcpthosts").write_text("example.com\n")
    loaded = imported_modules({"QMAIL_CONTROL": str(tmp_path), "QMAILQUEUE": "/bin/true"},
                              SESSION)
    assert set(CHECK_MODULES) & loaded == {"qmail_esmtpd.check_rcpthosts"}
