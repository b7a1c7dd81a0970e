"""`make demo`'s script for real: tcpserver, swaks, and the Maildir it fills."""

import os
import signal
import subprocess
from pathlib import Path

from support import ROOT, free_port, wait_listening


def test_demo_delivers_a_swaks_message_into_its_maildir(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "DEMO_PORT": str(port), "DEMO_DIR": str(tmp_path / "run")}
    env.pop("QMAILQUEUE", None)
    demo = subprocess.Popen(["sh", str(ROOT / "demo" / "demo.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_listening(port, demo, "demo", timeout=20)
        sent = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from",
                               "you@demo.localhost", "--to", "someone@example.org",
                               "--header", "Subject: demo test"], capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stdout.decode(errors="replace")
        (message,) = (tmp_path / "run" / "Maildir" / "new").iterdir()
        text = message.read_text()
        assert "Subject: demo test" in text and "X-Envelope-To: <someone@example.org>" in text
        assert "Received: from unknown (HELO " in text
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        banner = demo.communicate(timeout=10)[0].decode(errors="replace")
    assert "swaks" in banner and str(port) in banner
