"""`make install` beside qmail: never over qmail-smtpd, a real-interpreter launcher, .pyc ready."""

import os
import subprocess
from pathlib import Path

from support import ROOT


def test_make_install_into_a_prefix(tmp_path: Path, control: Path):
    prefix = tmp_path / "qmail"
    (prefix / "bin").mkdir(parents=True)
    original = prefix / "bin" / "qmail-smtpd"
    original.write_bytes(b"#!/bin/sh\necho the real one\n")
    subprocess.run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    assert original.read_bytes() == b"#!/bin/sh\necho the real one\n"
    launcher = prefix / "bin" / "qmail-esmtpd"
    shebang = launcher.read_text().splitlines()[0]
    interpreter = shebang[2:].split()[0]
    assert shebang.endswith(" -IS") and Path(interpreter).resolve() == Path(interpreter)
    assert "shims" not in interpreter
    package = prefix / "lib" / "qmail-esmtpd" / "qmail_esmtpd"
    assert (package / "__pycache__").is_dir() and any((package / "__pycache__").glob("cli.*.pyc"))
    out = subprocess.run([str(launcher)], input=b"HELO x\r\nQUIT\r\n", capture_output=True,
                         env={"QMAIL_CONTROL": str(control), "PATH": os.environ["PATH"]},
                         timeout=30)
    assert out.stdout == b"220 mx.example.com ESMTP\r\n250 mx.example.com\r\n221 mx.example.com\r\n"
    assert out.returncode == 0
    admin = subprocess.run([str(prefix / "bin" / "qmail-esmtpd-user"), "--help"],
                           capture_output=True, timeout=30)
    assert admin.returncode == 0 and b"poppass" in admin.stdout
