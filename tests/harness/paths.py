"""Where this checkout's programs are: what `make venv` built, the conformance
kit's stand-ins for qmail-queue and checkpassword."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = ROOT / ".venv" / "bin" / "qmail-esmtpd"
FORKSERVER = ROOT / ".venv" / "bin" / "qmail-esmtpd-server"
FAKE_QUEUE = ROOT / "tests" / "conformance" / "fake-qmail-queue"
FAKE_CHECKPASSWORD = ROOT / "tests" / "conformance" / "fake-checkpassword"
