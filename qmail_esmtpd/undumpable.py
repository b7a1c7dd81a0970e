"""No other process of our user may read this one: prctl(PR_SET_DUMPABLE, 0).

Every session runs as the same user (qmaild), and so do their qmail-spp
plugins; Linux lets a process open another's /proc/PID/mem and environ when
both have the same user and the other is "dumpable".  Once it is not, those
files belong to root and opening them is refused, whatever the Yama setting
(core dumps are off too).  A process that changed its uid is not dumpable
(qmail-esmtpd-server after -u, and the sessions it forks); an exec makes one
dumpable again (a session tcpserver starts, the POP3 program).

An fd opened while the process was still dumpable keeps reading it: the
earlier this runs, the smaller that window.  Python has no prctl, and
`ctypes` costs ~8 ms to import; its C module `_ctypes` alone (dlopen,
dlsym, call_function) ~1 ms, so only processes about to read a password pay.
"""

import posix

PR_SET_DUMPABLE = 4  # <linux/prctl.h>

_tried = False


def make_undumpable() -> str | None:
    """Not dumpable from now on.  Why not, the first time it fails (for the
    caller's one log line); None when done, already so, or tried before."""
    global _tried
    if _tried or already_undumpable():
        return None
    _tried = True
    try:
        import _ctypes

        prctl = _ctypes.dlsym(_ctypes.dlopen(None, 0), "prctl")  # type: ignore[arg-type]
        status = _ctypes.call_function(prctl, (PR_SET_DUMPABLE, 0))
    except (ImportError, OSError, AttributeError) as e:
        return f"no prctl: {type(e).__name__}: {e}"
    return None if status == 0 else f"prctl(PR_SET_DUMPABLE, 0) returned {status}"


def already_undumpable() -> bool:
    """Whether /proc says so: our /proc/self/mem belongs to root while we are not
    root (a warm-server session): then nothing needs loading."""
    try:
        return posix.geteuid() != 0 and posix.stat("/proc/self/mem").st_uid == 0
    except OSError:
        return False
