"""The end-to-end suites again, with qmail-esmtpd-server in tcpserver's place.

Each module's tests run unchanged: this module's `tcpserver` fixture hands
them a ForkServer (same rules through real tcprules, same control and
queue).  Tests that wrap the launcher in another program (a tcpserver-only
arrangement) are not taken over; the recipient checks' namespace with its
own /etc/passwd wraps the whole server instead.
"""

import pytest
from test_auth import *  # noqa: F403
from test_rcptcheck import *  # noqa: F403
from test_spp import *  # noqa: F403
from test_tcpserver import *  # noqa: F403


@pytest.fixture
def tcpserver(forkserver):
    return forkserver


@pytest.fixture
def layout_server(forkserver, qmail_layout):
    """The layout's passwd bound over /etc/passwd for the server and its
    sessions, which run as nobody (a user the layout's passwd has too)."""
    _, passwd = qmail_layout
    wrapper = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', passwd]

    def start(env: dict[str, str], rules: str = ":allow\n"):
        return forkserver(rules, env=env, wrapper=wrapper)
    return start


# These start a stand-in of their own with the test's interpreter, which the
# sessions' user (nobody, when the tests run as root) may not be able to run;
# test_forkserver.py covers the checkpassword command line and qmail-queue's
# environment with stand-ins in sh.
del test_checkpassword_command_line  # noqa: F821
del test_qmail_queue_learns_the_user  # noqa: F821
del test_50_mb_message_streams_with_bounded_memory  # noqa: F821
