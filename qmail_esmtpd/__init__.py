"""qmail-esmtpd: a drop-in replacement for qmail's qmail-smtpd, with SMTP AUTH."""

__version__ = "0.1.0"
