"""Files a test writes for the programs it starts: stand-in programs,
launchers, a certificate, users/cdb."""

import subprocess
import tempfile
from pathlib import Path

from .paths import ROOT


def write_program(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_launcher(output: Path, entry: str, interpreter: str | None = None,
                   library: Path = ROOT) -> Path:
    """A launcher for another console script of setup.cfg (MODULE:FUNCTION),
    made as `make venv` makes .venv/bin/qmail-esmtpd: tools/mklauncher.py,
    the venv's real interpreter with -IS, this checkout and the venv's
    packages on sys.path.  For programs started once per login, where pip's
    wrapper would cost more than the work.  `interpreter`: another Python of
    the same version to run it (e.g. /usr/bin/python3, which a user other
    than root can run when the venv's lives in root's home); `library`: the
    folder that holds the qmail_esmtpd package instead of this checkout."""
    python = str(ROOT / ".venv" / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    subprocess.run([python, str(ROOT / "tools" / "mklauncher.py"), str(output),
                    interpreter or python, entry, str(library), purelib], check=True, timeout=60)
    return output


def closed_library_server(directory: Path) -> Path:
    """A qmail-esmtpd-server launcher whose library is a copy of this checkout's
    package in a folder only root may enter (0700): its sessions, run as
    nobody, can use only what the server imported before it dropped privileges."""
    import shutil

    library = directory / "library"
    library.mkdir(mode=0o700)
    shutil.copytree(ROOT / "qmail_esmtpd", library / "qmail_esmtpd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return write_launcher(directory / "qmail-esmtpd-server", "qmail_esmtpd.forkserver:main",
                          library=library)


def self_signed_pem(path: Path, host: str = "localhost") -> Path:
    """A self-signed certificate and its key in one PEM file, as servercert.pem wants."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={host}", "-keyout", f"{tmp}/key.pem",
                        "-out", f"{tmp}/cert.pem"], check=True, capture_output=True, timeout=60)
        path.write_bytes(Path(f"{tmp}/cert.pem").read_bytes() + Path(f"{tmp}/key.pem").read_bytes())
    return path


def compile_users(assign: Path, cdb: Path) -> None:
    """users/assign -> users/cdb by qmail-newu's rules: `!local\\0` for `=`,
    `!prefix` for `+`, and under the empty key the wildcard characters."""
    import cdblib  # pure-cdb: the one the server reads users/cdb with

    wildchars = b""
    with cdb.open("wb") as f, cdblib.Writer(f) as writer:
        for line in assign.read_bytes().split(b"\n"):
            if line.startswith(b"."):
                break
            colon = line.index(b":")
            fields = line[colon + 1:].split(b":")[:6]
            key = b"!" + line[1:colon].lower()
            if line.startswith(b"+"):
                if colon >= 2 and line[colon - 1:colon] not in wildchars:
                    wildchars += line[colon - 1:colon]
            else:
                key += b"\0"
            writer.put(key, b"\0".join(fields))
        writer.put(b"", wildchars)
