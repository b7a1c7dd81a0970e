"""The processes the tests and the benchmark start, one module for each kind:

    tcpserver.py     qmail-esmtpd under ucspi-tcp's tcpserver (TcpServer)
    forkserver.py    qmail-esmtpd-server, the warm server, in its place (ForkServer)
    frontend.py      what those two share: tcprules' rules, the log, the port
    postgres.py      a throwaway PostgreSQL cluster and its databases (Cluster, Database)
    pgbouncer.py     pgbouncer in front of a cluster (Pgbouncer)
    install.py       `make install` into a temp prefix (installed_prefix, run_make)
    softlimit.py     the installed server under softlimit, as service/run starts it

and, for the unit tests of the core, no process at all:

    core_checks.py   the built-in checks in the registry's order, handed to a Session

and the small helpers they are built on, which import none of the above:

    paths.py         where this checkout's programs are (ROOT, SERVER, FORKSERVER, ...)
    processes.py     free ports, waiting for a listener, talking to it, ending a group
    files.py         programs, launchers, certificates and users/cdb written for a test
    system_users.py  who runs what when the tests run as root

The tests import these as `harness.tcpserver` (pytest puts tests/ on
sys.path), the benchmark, tools/ and demo/ as `tests.harness.tcpserver` (run
from the repository root), so the modules import each other relatively.
Standard library only at import time: psycopg2 loads at the first connection,
so the benchmark's `--no-auth` runs without it.  Nothing here imports pytest.
"""
