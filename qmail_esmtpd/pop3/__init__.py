"""`qmail-esmtpd-checkpassword`: POP3 (and IMAP) logins from the `poppass` table.

checkpassword.py speaks the checkpassword interface (fd 3, the password
check, the exit statuses); handover.py makes the process the mail user's and
execs the subprogram.  Here: what both say when a login cannot go on.
README.md, "POP3 (and IMAP) logins from the same table", has the set-up.
"""

# Exit statuses, as the checkpassword interface defines them
BAD_LOGIN = 1
MISUSE = 2
UNKNOWN = 3  # Dovecot: "user does not exist", in a lookup
TEMPORARY = 111


class Refused(Exception):
    """The login cannot go on: the exit status, and why (for the log).

    A bad login (status 1) waits `authfaildelay` before the exit, whatever
    the reason, unless `at_once` (a lookup without a password, an APOP
    digest that cannot be checked)."""

    def __init__(self, status: int, why: str, at_once: bool = False) -> None:
        super().__init__(why)
        self.status = status
        self.at_once = at_once
