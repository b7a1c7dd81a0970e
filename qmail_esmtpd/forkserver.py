"""`qmail-esmtpd-server`: tcpserver and qmail-esmtpd in one warm process.

usage: qmail-esmtpd-server [options] HOST PORT [ARG...]
       qmail-esmtpd-server [options] -S [ARG...]

It listens (on HOST:PORT, IPv6 and IPv4 alike, or on the sockets systemd
passes with -S), loads
once what sessions need (preload.py), drops privileges, and forks one
child per connection that runs the session exactly as qmail-esmtpd under
tcpserver does (child.py); ARGs are qmail-esmtpd's arguments (the
checkpassword command line).  The server itself never reads or writes a
byte of SMTP.  Its options are tcpserver's where they exist (serveroptions.py).
"""

import gc
import json
import os
import posix
import signal
import socket
import subprocess  # noqa: F401  (upgrade.Trial: loaded while the interpreter's library is readable)
import sys
import time

from . import upgrade  # isort: skip  (first: it notes the installation the server starts from)
from . import log as logmodule
from . import preload, replies
from .child import TROUBLE, ChildSettings, Remote, refuse, reset_signals, run
from .log import log
from .serveroptions import USAGE, Options, UsageError, parse
from .sources import source_of
from .tcpaddress import MAPPED, tcp_ips
from .tcprules import ALLOW_ALL, Rule, RulesFile, RulesUnreadable
from .undumpable import make_undumpable
from .workers import RETIRING, Worker, encode, serve_connections

MAX_PORT = 65535
SYSTEMD_FIRST_FD = 3


class Fatal(Exception):
    """Start-up cannot go on (tcpserver's exit 111)."""


def listening_sockets(opts: Options) -> list[socket.socket]:
    """Bound and listening: our own, or systemd's (LISTEN_PID must be ours)."""
    return systemd_sockets() if opts.systemd else [own_socket(opts)]


def systemd_sockets() -> list[socket.socket]:
    """Every socket systemd passes (LISTEN_FDS of them from fd 3 on: one per
    ListenStream=, an IPv6 and an IPv4 one, say), each a TCP one."""
    fds = os.environ.get("LISTEN_FDS", "")
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not fds.isdigit() or int(fds) < 1:
        raise Fatal("-S: no socket from systemd (LISTEN_FDS, LISTEN_PID)")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the sessions
        posix.environ.pop(name.encode(), None)
    socks = []
    for fd in range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + int(fds)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise Fatal(f"-S: fd {fd} is not a socket: {e}") from None
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                sock.type != socket.SOCK_STREAM:
            raise Fatal(f"-S: fd {fd} is not a TCP socket (ListenStream=ADDRESS:PORT)")
        socks.append(sock)
    return socks


def bind_address(opts: Options) -> tuple[int, tuple]:
    """The family and address HOST PORT name, as ucspi-tcp-ipv6's tcpserver reads
    them: 0 (or ::) is every address, IPv6 and IPv4 on one socket (with -4:
    IPv4 only); an IPv4 or IPv4-mapped address an IPv4 socket; a name its
    first address; -I the scope of a link-local IPv6 address."""
    try:
        port = int(opts.port) if opts.port.isdigit() else socket.getservbyname(opts.port, "tcp")
        if port > MAX_PORT:
            raise OSError(f"port {opts.port} is above {MAX_PORT}")
        scope = socket.if_nametoindex(opts.interface) if opts.interface else 0
        if opts.host in ("", "0"):
            if opts.ipv4_only or not socket.has_ipv6:
                return socket.AF_INET, ("0.0.0.0", port)
            return socket.AF_INET6, ("::", port, 0, scope)
        family = socket.AF_INET if opts.ipv4_only else socket.AF_UNSPEC
        found = socket.getaddrinfo(opts.host, port, family, socket.SOCK_STREAM)[0]
    except OSError as e:
        raise Fatal(f"unable to figure out address {opts.host}:{opts.port}: {e}") from None
    family, address = found[0], found[4]
    host = str(address[0])
    if family == socket.AF_INET6:
        if host.startswith(MAPPED) and "." in host:
            return socket.AF_INET, (host[len(MAPPED):], port)
        return family, (host, port, 0, scope or int(address[3]))  # type: ignore[misc]
    return family, address


def own_socket(opts: Options) -> socket.socket:
    """HOST PORT bound and listening; an IPv6 one takes IPv4 clients too
    (IPV6_V6ONLY off, as tcpserver sets it).  Where the kernel has no IPv6,
    0 falls back to IPv4, as tcpserver does."""
    family, address = bind_address(opts)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        if family != socket.AF_INET6 or opts.host not in ("", "0"):
            raise Fatal(f"unable to create socket: {e}") from None
        family, address = socket.AF_INET, ("0.0.0.0", address[1])
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(opts.backlog)
    except OSError as e:
        sock.close()
        raise Fatal(f"unable to bind: {e}") from None
    return sock


def drop_privileges(opts: Options) -> None:
    """As tcpserver -g/-u (prot_gid, prot_uid), right after binding: the group
    alone in the supplementary list, then the user.  Sessions never run as
    root, in group 0, or with a group of the starter's beside their own."""
    try:
        if opts.gid is not None:
            os.setgroups([opts.gid])
            os.setgid(opts.gid)
        if opts.uid is not None:
            os.setuid(opts.uid)
    except OSError as e:
        raise Fatal(f"unable to set uid/gid: {e}") from None
    if os.geteuid() == 0 or os.getuid() == 0:
        raise Fatal("refusing to run sessions as root: give -u and -g (or -U)")
    if 0 in (os.getgid(), os.getegid(), *os.getgroups()):
        raise Fatal("refusing to run sessions in group 0 (root): give -g")
    if opts.gid is not None and set(os.getgroups()) - {opts.gid}:
        raise Fatal("supplementary groups left after setgroups")


class Server:
    """The accept loop: limits, children, signals, tcpserver -v's status lines."""

    def __init__(self, socks: list[socket.socket], opts: Options, settings: ChildSettings,
                 rules: RulesFile | None) -> None:
        self.socks = socks
        self.listening = {sock.fileno(): sock for sock in socks}
        self.opts = opts
        self.settings = settings
        self.rules = rules
        self.controls = preload.controls_from_environment()
        self.children: dict[int, str] = {}  # pid -> its source (-C; "" when not counted)
        self.workers: dict[int, Worker] = {}  # pid -> worker, until reaped
        self.answering: dict[int, Worker] = {}  # channel fd -> worker, until retired
        self.idle: list[Worker] = []  # the last one to finish is the next to serve
        self.busy = 0  # workers serving a connection
        self.smtps = b"SMTPS" in posix.environ  # every session starts TLS (a rule may say so too)
        self.per_source: dict[str, int] = {}
        self.hangup = False
        self.stopping = False
        self.auth_loaded = False
        self.wake_fds: tuple[int, ...] = ()
        self.installation: upgrade.Installation | None = None  # set once the code is loaded
        self.failed_upgrade: tuple[int, int] | None = None  # a new install that did not start
        self.trial: upgrade.Trial | None = None  # a new install starting on the side

    def running(self) -> int:
        """Sessions in progress: what -c counts."""
        return len(self.children) + self.busy

    def log_status(self) -> None:
        """tcpserver -v's `status: running/limit` line."""
        if self.opts.verbosity >= 2:
            log(f"status: {self.running()}/{self.opts.limit}")

    # -- configuration ---------------------------------------------------------
    def load(self) -> None:
        """Everything sessions share: the rules, the certificate, the libraries.

        Run with the sessions' privileges, so it reads what they could read."""
        self.controls = preload.controls_from_environment()
        if self.rules is not None:
            self.rules.forget()
            try:
                self.rules.lookup_function()
            except Exception as e:  # the children say so, connection by connection
                log(f"warning: unable to read rules: {e}")
        self.settings.tls.load(self.controls, self.cipher_lists_named())
        self.import_auth()
        gc.collect()
        gc.freeze()  # what is loaded stays shared with the children (no GC writes)

    def cipher_lists_named(self) -> tuple[bytes, ...]:
        """The values sessions' $TLSSERVERCIPHERS may take: the server's own, the rules'."""
        from .tls import CIPHERS_VARIABLE

        named = [posix.environ.get(CIPHERS_VARIABLE, b"")]
        if self.rules is not None:
            named += self.rules.values(CIPHERS_VARIABLE)
        return tuple(named)

    def import_auth(self) -> None:
        """The AUTH libraries, once some session may use AUTH."""
        if self.auth_loaded:
            return
        argv = [a.encode("utf-8", "surrogateescape") for a in self.settings.session_argv]
        rules_set_authdb = self.rules is not None and self.rules.sets(b"AUTHDB")
        if preload.auth_configured(argv, self.controls, rules_set_authdb):
            missing = preload.import_modules(preload.AUTH_MODULES)
            if [m for m in missing if "passlib" not in m and m != "bcrypt"]:
                log(f"warning: AUTH libraries not preloaded: {' '.join(missing)}")
            self.auth_loaded = True

    # -- signals ---------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.hangup = True
        elif signum == signal.SIGTERM:
            self.stopping = True

    def install_signals(self) -> int:
        """Handlers that only set flags; the loop wakes on the returned pipe."""
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self.wake_fds = (wake_read, wake_write)
        signal.set_wakeup_fd(wake_write)
        for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        return wake_read

    # -- children --------------------------------------------------------------
    def reap(self) -> None:
        while self.children or self.workers or self.trial_running():
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.workers.clear()
                self.answering.clear()
                self.idle.clear()
                self.busy = 0
                self.per_source.clear()
                return
            if pid == 0:
                return
            if self.trial is not None and pid == self.trial.pid:
                self.trial.exited(wstat)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None:
                if worker.busy:  # it died serving: its connection ends with it
                    self.session_ended(worker, wstat)
                self.retire(worker)
                continue
            source = self.children.pop(pid, None)
            if source is None:  # an idle worker of the code before an upgrade
                continue
            self.release(source)
            if self.opts.verbosity >= 2:
                log(f"end {pid} status {wstat}")
            self.log_status()

    def release(self, source: str) -> None:
        """A session counted against -C as `source` ended."""
        if source:
            left = self.per_source.get(source, 1) - 1
            if left > 0:
                self.per_source[source] = left
            else:
                self.per_source.pop(source, None)

    def count(self, source: str) -> None:
        if source:
            self.per_source[source] = self.per_source.get(source, 0) + 1

    def accept(self, sock: socket.socket) -> None:
        try:
            # _accept(): socket.accept() turns family and type into enums for
            # the new socket object, pages every child would then copy
            fd, address = sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:  # out of descriptors, for instance: try again shortly
            log(f"warning: unable to accept: {e}")
            time.sleep(0.1)
            return
        conn = socket.socket(fileno=fd)
        try:
            remote = Remote(*tcp_ips(address[0], self.opts.force6), address[1])
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rule = self.rule(remote.ip)
            # a denied connection is closed without a byte, however many its
            # source has: it is neither counted nor refused with a 421
            counted = isinstance(rule, Rule) and not rule.deny
            source = self.source(remote.ip)
            over = counted and 0 < self.opts.per_source <= self.per_source.get(source, 0)
            counted_as = source if counted and not over else ""
            if self.opts.max_use:
                self.hand_over(conn, remote, rule, counted_as, over)
                return
            if counted_as:
                self.settings.tls.refresh(self.controls)
            self.fork(conn, remote, rule, counted_as, over)
        finally:
            conn.close()

    def source(self, ip: str) -> str:
        """What -C counts `ip` as: its IPv4 address or IPv6 /64 (sources.py);
        without -C the address itself, which costs nothing to work out."""
        if not self.opts.per_source:
            return ip
        return source_of(ip) or ip

    def rule(self, source: str) -> "Rule | RulesUnreadable":
        """The rules' answer for `source`, looked up here, where the table stays
        read and cached; RulesUnreadable: the child drops the connection, says why."""
        if self.rules is None:
            return ALLOW_ALL
        try:
            return self.rules.rule(source.encode())
        except RulesUnreadable as e:
            return e

    def refusal(self, rule: "Rule | RulesUnreadable") -> bytes | None:
        """The 421 for a source over -C; None on an SMTPS port, where a client
        waits for a TLS handshake and cleartext would only be a protocol error."""
        smtps = self.smtps or isinstance(rule, Rule) and \
            any(name == b"SMTPS" for name, _ in rule.variables)
        return None if smtps else replies.TOO_MANY_FROM_SOURCE

    def fork(self, conn: socket.socket, remote: Remote, rule: "Rule | RulesUnreadable",
             counted: str, over: bool) -> None:
        """One child for the connection: the session (counted against -C as the
        source `counted`, unless that is empty), the rules' refusal, or the
        refusal of a source over -C."""
        try:
            pid = os.fork()
        except OSError as e:
            log(f"warning: dropping connection, unable to fork: {e}")
            return
        if pid == 0:
            status = TROUBLE
            try:
                self.leave_loop()
                status = refuse(conn, remote, self.refusal(rule), self.settings) if over \
                    else run(conn, remote, self.settings, rule)
            except BaseException as e:  # a bug: never back into the server's loop
                log(f"session failed: {type(e).__name__}: {e}")
            finally:
                os._exit(status if isinstance(status, int) else TROUBLE)
        self.children[pid] = counted
        self.count(counted)
        self.log_status()

    def leave_loop(self, *server_sockets: socket.socket) -> None:
        """In a new child: none of the server's handlers, listeners or pipes
        (nor `server_sockets`, the server's ends of what the child was given)."""
        reset_signals()  # no handler may write to the pipe closed next
        for sock in (*self.socks, *server_sockets):
            sock.close()
        for fd in self.wake_fds:
            os.close(fd)
        if self.trial is not None:
            self.trial.forget()

    # -- workers (-m N) --------------------------------------------------------
    def hand_over(self, conn: socket.socket, remote: Remote, rule: "Rule | RulesUnreadable",
                  counted: str, over: bool) -> None:
        """The connection to an idle worker (a new one when none is idle), with
        what fork() would have given a child; a worker that cannot take it is
        retired and a new one tried, once."""
        message = encode(remote, rule, self.refusal(rule) if over else None, over)
        for _ in range(2):
            worker = self.idle.pop() if self.idle else self.start_worker(conn)
            if worker is None:
                return  # logged: the connection is dropped, as when fork fails
            try:
                socket.send_fds(worker.channel, [message], [conn.fileno()])
            except OSError as e:
                log(f"warning: worker {worker.pid} did not take a connection: {e}")
                self.retire(worker)
                continue
            worker.busy, worker.source = True, counted
            self.busy += 1
            self.count(counted)
            self.log_status()
            return
        log("warning: dropping connection, no worker took it")

    def start_worker(self, accepted: socket.socket) -> Worker | None:
        """A new worker, forked from the server as it is now (code, rules,
        certificate); it does not keep the server's copy of the connection
        just `accepted` (which it gets handed like any other)."""
        self.settings.tls.refresh(self.controls)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as e:
            log(f"warning: dropping connection, unable to fork: {e}")
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            status = TROUBLE
            try:
                self.leave_loop(ours, accepted)
                for other in self.answering.values():  # another worker's EOF is its own
                    other.channel.close()
                status = serve_connections(theirs, self.settings, self.opts.growth << 20)
            except BaseException as e:  # a bug: never back into the server's loop
                log(f"worker failed: {type(e).__name__}: {e}")
            finally:
                os._exit(status)
        theirs.close()
        ours.setblocking(False)
        worker = Worker(pid, ours)
        self.workers[pid] = worker
        self.answering[ours.fileno()] = worker
        return worker

    def answer(self, worker: Worker) -> None:
        """A worker's word: its session's status; nothing: it is gone (reaped later)."""
        try:
            said = worker.channel.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            said = b""
        if len(said) != 2 or not worker.busy:
            self.close_channel(worker)  # the end line, if it was busy, comes at reap
            self.retire(worker)
            return
        status, retiring = said
        self.session_ended(worker, status << 8)
        worker.served += 1
        if retiring == RETIRING or worker.retiring or worker.served >= self.opts.max_use:
            self.retire(worker)
        else:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)

    def session_ended(self, worker: Worker, wstat: int) -> None:
        """tcpserver's `end` line for the worker's connection, and its slot freed."""
        worker.busy = False
        self.busy -= 1
        self.release(worker.source)
        worker.source = ""
        if self.opts.verbosity >= 2:
            log(f"end {worker.pid} status {wstat}")
        self.log_status()

    def retire(self, worker: Worker) -> None:
        """No more connections for `worker`; its channel closes (it then exits)
        now when idle, after its answer when busy."""
        worker.retiring = True
        if worker in self.idle:
            self.idle.remove(worker)
        if not worker.busy:
            self.close_channel(worker)

    def close_channel(self, worker: Worker) -> None:
        if worker.channel.fileno() >= 0:
            self.answering.pop(worker.channel.fileno(), None)
            worker.channel.close()

    def retire_all(self) -> None:
        """SIGHUP, SIGTERM: idle workers now, busy ones after their session."""
        for worker in list(self.answering.values()):
            if worker.busy:
                worker.retiring = True
            else:
                self.retire(worker)

    def retire_idle(self) -> float | None:
        """Workers idle for -W seconds retired; seconds until the next one is due."""
        now = time.monotonic()
        while self.idle and now - self.idle[0].idle_since >= self.opts.max_idle:
            self.retire(self.idle[0])
        if not self.idle:
            return None
        return self.idle[0].idle_since + self.opts.max_idle - now

    # -- make install over the running server ----------------------------------
    def upgrade_due(self) -> bool:
        """Whether install put a new tree in place since the start (one stat),
        other than one that was tried and did not start, or is being tried."""
        if self.installation is None or self.trial is not None:
            return False
        now = self.installation.identity_now()
        return now != self.installation.identity and now != self.failed_upgrade

    def try_upgrade(self) -> None:
        """Start the new code on the side; the old code serves meanwhile, and
        the new takes over once it has shown it starts (upgrade())."""
        assert self.installation is not None
        identity = self.installation.identity_now()
        env = huge_pages_environment(dict(os.environ))
        log("upgrade: installed anew: starting the new code on the side")
        try:
            self.trial = upgrade.Trial(identity, env)
        except (OSError, ValueError) as e:
            self.upgrade_failed(identity, str(e))

    def upgrade(self, trial: upgrade.Trial) -> None:
        """Once the `trial` is over: the new code takes over this process: same
        pid, same listening sockets; sessions in progress finish on the old
        code, and their end lines and -c/-C slots pass to the new.  Returns
        only when the new code does not start, and the old one goes on serving."""
        assert self.installation is not None
        why = trial.why_not()
        if why is None and self.installation.identity_now() != trial.identity:
            log("upgrade: installed anew again meanwhile: the newest is tried next")
            return
        if why is None:
            self.retire_all()  # idle workers exit now, busy ones after their session
            state, passed = self.state()
            for fd in passed:
                os.set_inheritable(fd, True)
            why = upgrade.become_new_code(state, trial.env, lambda: self.stopping)
            for fd in passed:  # still here: nothing a session runs may inherit them
                os.set_inheritable(fd, False)
        self.upgrade_failed(trial.identity, why)

    def trial_running(self) -> bool:
        return self.trial is not None and self.trial.status is None

    def trial_over(self) -> None:
        """The trial reaped: the new code takes over, or the old goes on."""
        if self.trial is not None and self.trial.status is not None:
            trial, self.trial = self.trial, None
            self.upgrade(trial)

    def upgrade_failed(self, identity: tuple[int, int] | None, why: str) -> None:
        self.failed_upgrade = identity
        log(f"warning: {upgrade.RESTART} (the new code did not start: {why})")

    def state(self) -> tuple[str, list[int]]:
        """What the new code needs of this server, and the descriptors it names."""
        busy = [(w.pid, w.channel.fileno(), w.source) for w in self.workers.values() if w.busy]
        text = json.dumps({"listening": list(self.listening), "workers": busy,
                           "children": list(self.children.items())})
        return text, [*self.listening, *(fd for _, fd, _ in busy)]

    def adopt(self, state: str) -> None:
        """The sessions the code before the upgrade left running: -c and -C
        count them, their end lines come from here; their workers retire."""
        saved = json.loads(state)
        for pid, fd, source in saved["workers"]:
            channel = socket.socket(fileno=fd)
            os.set_inheritable(fd, False)
            channel.setblocking(False)
            worker = Worker(pid, channel)
            worker.busy, worker.retiring, worker.source = True, True, source
            self.workers[pid] = worker
            self.answering[fd] = worker
            self.busy += 1
            self.count(source)
        for pid, source in saved["children"]:
            self.children[pid] = source
            self.count(source)
        log(f"upgrade: serving with the new code; {self.running()} sessions "
            f"finish on the old")

    # -- the loop --------------------------------------------------------------
    def serve(self) -> int:
        wake = self.install_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, upgrade.HELD_SIGNALS)  # held over an upgrade
        for sock in self.socks:
            sock.setblocking(False)
        self.log_status()
        import select

        while not self.stopping:
            self.reap()
            self.trial_over()
            if self.hangup:
                self.hangup = False
                if self.upgrade_due():
                    self.try_upgrade()
                log("SIGHUP: reading the configuration again")
                self.load()
                self.retire_all()  # new workers come from the configuration just read
            due = self.retire_idle()
            waiting = [wake, *self.answering]
            if self.trial is not None:
                left = self.trial.seconds_left()
                due = left if due is None else min(due, left)
                if self.trial.fd is not None:
                    waiting.append(self.trial.fd)
            if self.running() < self.opts.limit:
                waiting += self.listening
            ready = select.select(waiting, [], [], due)[0]
            if wake in ready:
                ready.remove(wake)
                drain(wake)
            if self.trial is not None and self.trial.fd in ready:
                ready.remove(self.trial.fd)
                self.trial.read()
            for fd in ready:  # the workers' answers first: they free slots
                worker = self.answering.get(fd)
                if worker is not None:
                    self.answer(worker)
            for fd in ready:
                if self.stopping or self.running() >= self.opts.limit:
                    break
                if fd in self.listening:
                    if self.upgrade_due():  # the old code serves until the new has started
                        self.try_upgrade()
                    self.accept(self.listening[fd])
        return self.shutdown(wake)

    def shutdown(self, wake: int) -> int:
        """SIGTERM: no new connections; running sessions get `grace` seconds, then SIGTERM."""
        for sock in self.socks:
            sock.close()
        if self.trial is not None:
            self.trial.stop()
            self.trial = None
        self.retire_all()
        self.reap()  # sessions that ended while the signal came: no wake-up will say so
        if self.running():
            log(f"SIGTERM: waiting up to {self.opts.grace} s for "
                f"{self.running()} sessions")
        deadline = time.monotonic() + self.opts.grace
        import select

        while self.running() and time.monotonic() < deadline:
            ready = select.select([wake, *self.answering], [], [],
                                  max(0.0, deadline - time.monotonic()))[0]
            for fd in ready:
                worker = self.answering.get(fd)
                if worker is not None:
                    self.answer(worker)
            drain(wake)
            self.reap()
        if self.running():
            log(f"SIGTERM: ending {self.running()} sessions still running")
        for pid in [*self.children, *self.workers]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while (self.children or self.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
            self.reap()
        return 0


def drain(fd: int) -> None:
    """Empty the signals' wake-up pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


HUGE_PAGES = "glibc.malloc.hugetlb=1"
TUNABLES = "GLIBC_TUNABLES"


def with_huge_pages() -> None:
    """Start again, once, with glibc's malloc asking for transparent huge pages.

    argon2's memory is fresh in every child's AUTH: in 2 MB pages it takes
    far fewer page faults than in 4 KB ones.  glibc reads the tunable only
    at start-up, hence the exec; afterwards the variable is taken out again,
    so sessions see the environment tcpserver mode gives them.  Where glibc
    or the kernel does not know the tunable (or THP is off) nothing changes.
    """
    current = os.environ.get(TUNABLES)
    if current is not None and "glibc.malloc.hugetlb" in current:
        return  # the admin's choice, or our own exec
    script = sys.argv[0]
    if not os.path.isfile(script):
        return
    flags = [flag for flag, on in (("-I", sys.flags.isolated), ("-S", sys.flags.no_site)) if on]
    env = huge_pages_environment(dict(os.environ))
    try:
        os.execve(sys.executable, [sys.executable, *flags, script, *sys.argv[1:]], env)
    except (OSError, ValueError):  # ValueError: a variable execve cannot pass
        pass  # go on with 4 KB pages


def huge_pages_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with our tunable added (as forget_huge_pages() finds it)."""
    current = env.get(TUNABLES)
    if current is None or "glibc.malloc.hugetlb" not in current:
        env[TUNABLES] = f"{current}:{HUGE_PAGES}" if current else HUGE_PAGES
    return env


def forget_huge_pages() -> None:
    """Our own tunable out of the environment the sessions inherit."""
    current = os.environ.get(TUNABLES, "")
    if current == HUGE_PAGES:
        restored = None
    elif current.endswith(":" + HUGE_PAGES):
        restored = current[:-len(HUGE_PAGES) - 1]
    else:
        return
    if restored is None:
        os.environ.pop(TUNABLES, None)
        posix.environ.pop(TUNABLES.encode(), None)
    else:
        os.environ[TUNABLES] = restored
        posix.environ[TUNABLES.encode()] = restored.encode()


def main() -> int:
    logmodule.PROGRAM = "qmail-esmtpd-server"
    with_huge_pages()
    forget_huge_pages()
    state = upgrade.take_state()  # set when this is the new code of an upgrade
    try:
        opts = parse(sys.argv[1:])
    except UsageError as e:
        log(f"{e}\n{USAGE}")
        return 100
    try:
        socks = listening_sockets(opts) if state is None else inherited_sockets(state)
    except Fatal as e:
        log(f"fatal: {e}")
        return 111
    if opts.print_port and state is None:
        print(socks[0].getsockname()[1], flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the server never talks on its own stdin and stdout
    os.dup2(null, 1)
    os.close(null)
    rules = RulesFile(opts.rules.encode(), opts.allow_missing_rules) if opts.rules else None
    localhost = opts.localhost.encode() if opts.localhost is not None else None
    settings = ChildSettings(localhost, opts.verbosity >= 2, opts.session_argv,
                             preload.PreloadedTLS(), opts.force6)
    server = Server(socks, opts, settings, rules)
    # Code is loaded with the privileges the server started with (the
    # interpreter's library may be closed to the service user), configuration
    # is read after dropping them, as every session reads it.
    missing = preload.import_modules(preload.SESSION_MODULES)
    preload.load_user_database()
    if opts.per_source:
        source_of("::")  # -C counts IPv6 clients with ipaddress: loaded now, not as the user
    if missing:
        log(f"fatal: unable to load {' '.join(missing)}")
        return 111
    if rules is not None:
        try:
            rules.lookup_function()
        except Exception:
            pass
    server.import_auth()
    # from here on, a module of a newer installation is refused, never mixed in
    server.installation = upgrade.guard()
    try:
        if state is None:  # after an upgrade they were dropped before the exec
            drop_privileges(opts)
    except Fatal as e:
        log(f"fatal: {e}")
        return 111
    why = make_undumpable()  # the server holds the certificate's key; what it forks inherits
    if why:
        log(f"warning: the server stays dumpable: {why}")
    server.load()
    if state == upgrade.TRIAL:
        return 0
    if state is not None:
        server.adopt(state)
    return server.serve()


def inherited_sockets(state: str) -> list[socket.socket]:
    """The listening sockets the code before an upgrade passed on; none for a trial."""
    if state == upgrade.TRIAL:
        return []
    socks = []
    for fd in json.loads(state)["listening"]:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        socks.append(sock)
    return socks
