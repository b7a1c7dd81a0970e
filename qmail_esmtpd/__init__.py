"""qmail-esmtpd: a drop-in replacement for qmail's qmail-smtpd, with SMTP AUTH."""

__version__ = "0.1.0"  # the one place: setup.cfg reads it (version = attr: ...)

ABOUT_ARGUMENTS = ("--help", "--version")


def about(program: str, usage: str, argument: str, section: int = 8) -> str:
    """What `--help` or `--version` prints: the usage and the man page that
    says the rest, or the name and version; no program does anything else then."""
    if argument == "--version":
        return f"{program} {__version__}\n"
    return f"{usage}\nThe manual: man {section} {program}\n"
