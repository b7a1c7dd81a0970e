"""The installed qmail-esmtpd under softlimit, as service/run starts it: how
little memory each kind of session needs (test_softlimit, tools/softlimit.py)."""

import os
from pathlib import Path

from .files import self_signed_pem, write_program
from .postgres import Cluster
from .tcpserver import TcpServer

# The kinds of session the README's softlimit table has a row for.
SESSION_KINDS = ("plain", "starttls", "auth", "auth-starttls", "auth-argon2-cffi-default",
                 "smtputf8-idna")
SOFTLIMIT_STACK = 2097152  # -s of service/run: thread stacks are as large as this limit


class LimitedService:
    """The installed qmail-esmtpd as the service user under `softlimit -m`, via tcpserver.

    `workdir` must be reachable by that user (see world_readable_dir()).

    As service/run starts it, except that setuidgid does what tcpserver's -u/-g
    do there.  Everything it reads is readable by that user: the control files
    (with servercert.pem), a qmail-queue stand-in in sh, and (for AUTH) a
    database of `cluster` with user alice, password PASSWORD, in our hash and
    in argon2-cffi's defaults (64 MiB, 4 threads), as imported tables have.
    """

    PASSWORD = "softlimit-Pa55"

    def __init__(self, workdir: Path, prefix: Path, cluster: "Cluster | None",
                 user: str = "nobody", env: dict | None = None) -> None:
        self.workdir, self.prefix, self.user = workdir, prefix, user
        self.env = env or {}  # what the run script exports besides (MALLOC_ARENA_MAX)
        os.chmod(workdir, 0o755)
        self.control = workdir / "control"
        self.control.mkdir()
        (self.control / "me").write_text("mx.example.com\n")
        # SMTPUTF8 on, and a domain listed as its A-label: a U-label recipient loads idna
        self.utf8_control = workdir / "control-smtputf8"
        self.utf8_control.mkdir()
        for name, text in (("me", "mx.example.com"), ("smtputf8", "1"),
                           ("rcpthosts", "xn--mller-kva.example")):
            (self.utf8_control / name).write_text(text + "\n")
        self_signed_pem(self.control / "servercert.pem").chmod(0o644)
        self.queue = write_program(workdir / "qmail-queue",
                                   "#!/bin/sh\ncat >/dev/null && cat <&1 >/dev/null\n")
        self.authdb = None
        if cluster is not None:
            from qmail_esmtpd.auth.passwords import context

            os.chmod(cluster.base, 0o711)  # let the service user reach the socket
            self.db = cluster.new_database()
            self.authdb = self.db.dsn("qmaild")
            import argon2

            for name, hashed in (("alice", context().hash(self.PASSWORD)),
                                 ("bob", argon2.PasswordHasher().hash(self.PASSWORD))):
                self.db.sql("INSERT INTO poppass (name, pw) VALUES (%s, %s)", (name, hashed))

    def session(self, kind: str, memory: int, stack: int = SOFTLIMIT_STACK) -> str:
        """One session of `kind` under `softlimit -m memory -s stack`: "ok" or what failed."""
        import smtplib
        import ssl

        control = self.utf8_control if kind.startswith("smtputf8") else self.control
        env = {"QMAIL_CONTROL": str(control), "QMAILQUEUE": str(self.queue), **self.env}
        if kind.startswith("auth"):
            env["AUTHDB"] = str(self.authdb)
            if kind != "auth-starttls":
                env["AUTHCLEARTEXT"] = "1"
        argv = ["softlimit", "-m", str(memory), "-s", str(stack), "setuidgid", self.user,
                self.prefix / "bin" / "qmail-esmtpd"]
        server = TcpServer(self.workdir, ":allow\n", env, argv)
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                client.ehlo("client.test")
                if "starttls" in kind:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    client.starttls(context=context)
                    client.ehlo("client.test")
                if kind.startswith("auth"):
                    client.login("bob" if "argon2-cffi" in kind else "alice", self.PASSWORD)
                recipient, options = "b@example.org", []
                if kind.startswith("smtputf8"):
                    recipient, options = "jörg@müller.example", ["SMTPUTF8"]
                client.sendmail("a@example.com", [recipient], b"Subject: x\r\n\r\n" +
                                b"0123456789abcde\r\n" * 256, mail_options=options)
            return "ok"
        except (OSError, smtplib.SMTPException) as e:
            log = server.log().strip().splitlines()
            return f"{type(e).__name__}: {e}; log: {' | '.join(log[-3:])}"
        finally:
            server.stop()
