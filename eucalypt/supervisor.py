"""Running a few service processes as one: start in order, restart the ones that die,
stop them all on SIGINT/SIGTERM. What `eucalypt up` is made of.

    supervisor = Supervisor(run_dir, log_dir, say=print)
    supervisor.start(ChildSpec("control", argv, health_url))   # blocks until healthy
    ...
    return supervisor.run()        # until a signal (0) or a child gives up (1)

Each child runs in a session of its own (a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in reverse start order), with its stdout and
stderr appended to LOG_DIR/NAME.log and its PID in RUN_DIR/NAME.pid. Children are told by
the kernel (PR_SET_PDEATHSIG) to terminate when the supervisor dies, so a supervisor
killed with -9 leaves no service running behind it. Only processes started here are ever
signalled, by PID.

A child "is up" when its health URL answers 200. A child that exits on its own is
restarted after a backoff that doubles with each *fast* crash in a row (one within
`fast_crash_seconds` of its start); after `max_fast_crashes` of those the supervisor
gives up: it stops the others and `run()` returns 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)   # added to the supervisor's environment


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    first_delay: float = 0.5        # seconds before the first restart
    max_delay: float = 15.0
    fast_crash_seconds: float = 30.0
    max_fast_crashes: int = 5
    start_timeout: float = 90.0     # a (re)started child must be healthy within this
    stop_grace: float = 15.0        # SIGTERM, then SIGKILL after this

    def delay(self, fast_crashes: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** max(0, fast_crashes - 1))


class Backoff:
    """One child's crash history: each crash gives the delay before the restart, or None
    when it crashed fast `max_fast_crashes` times in a row (give up). A crash after a long
    run starts the count again."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.fast_crashes = 0

    def crashed(self, ran_for: float) -> float | None:
        if ran_for >= self.policy.fast_crash_seconds:
            self.fast_crashes = 0
            return self.policy.delay(1)
        self.fast_crashes += 1
        if self.fast_crashes >= self.policy.max_fast_crashes:
            return None
        return self.policy.delay(self.fast_crashes)


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class StartFailed(Exception):
    """A child exited or stayed unhealthy while being started; the message says which,
    with the end of its log."""


class Stopped(Exception):
    """A signal asked the supervisor to stop while it was waiting for a child."""


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(url: str, timeout: float = 2.0) -> bool:
    """GET URL answers 200 (never through a proxy: the services are local)."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:   # the supervisor died before prctl took effect
            os._exit(1)
    return preexec


class Child:
    """One supervised process: its spec, the current Popen, and its restart bookkeeping."""

    def __init__(self, spec: ChildSpec, log_path: Path, pid_path: Path, policy: RestartPolicy) -> None:
        self.spec = spec
        self.log_path = log_path
        self.pid_path = pid_path
        self.backoff = Backoff(policy)
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.up = False                     # healthy since the last (re)start
        self.restart_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def note(self, text: str) -> None:
        """A supervisor line in the child's log, so the log tells the whole story."""
        with open(self.log_path, "a") as log:
            log.write(f"---- eucalypt up {time.strftime('%Y-%m-%d %H:%M:%S')}: {text}\n")

    def spawn(self, now: float) -> None:
        self.note(f"starting {' '.join(self.spec.argv)}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        self.pid_path.write_text(f"{self.process.pid}\n")
        self.started_at, self.up, self.restart_at = now, False, None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text.rstrip().splitlines()[-lines:])


class Supervisor:
    def __init__(self, run_dir: Path, log_dir: Path, *, say: Callable[[str], None],
                 policy: RestartPolicy = RestartPolicy(), clock=None, tick: float = 0.2) -> None:
        self.run_dir, self.log_dir = Path(run_dir), Path(log_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.policy = policy
        self.clock = clock or MonotonicClock()
        self.tick = tick
        self.children: list[Child] = []
        self.stop_signal: int | None = None

    # ---- signals ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.stop_signal = signum
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    # ---- starting --------------------------------------------------------------------
    def start(self, spec: ChildSpec) -> Child:
        """Start one child and wait until it is healthy. StartFailed if it exits or times
        out first (it is then stopped); Stopped if a signal arrives meanwhile."""
        child = Child(spec, self.log_dir / f"{spec.name}.log", self.run_dir / f"{spec.name}.pid", self.policy)
        self.children.append(child)
        child.spawn(self.clock.now())
        self.say(f"{spec.name}: starting (pid {child.process.pid}, log {child.log_path})")
        deadline = self.clock.now() + self.policy.start_timeout
        while not healthy(spec.health_url, timeout=1.0):
            if self.stopping:
                raise Stopped()
            if not child.running():
                raise StartFailed(f"{spec.name} exited during startup ({describe_exit(child.process.returncode)}); "
                                  f"the end of {child.log_path}:\n{child.log_tail()}")
            if self.clock.now() > deadline:
                raise StartFailed(f"{spec.name} did not answer {spec.health_url} within "
                                  f"{self.policy.start_timeout:.0f} s; the end of {child.log_path}:\n"
                                  f"{child.log_tail()}")
            self.clock.sleep(self.tick)
        child.up = True
        self.say(f"{spec.name}: up (pid {child.process.pid})")
        return child

    # ---- supervising -----------------------------------------------------------------
    def run(self) -> int:
        """Supervise until a signal (returns 0 after stopping everything) or a child gives
        up (returns 1 after stopping the others)."""
        while not self.stopping:
            now = self.clock.now()
            for child in self.children:
                if not self._check(child, now):
                    self.stop_all()
                    return 1
            self.clock.sleep(self.tick)
        self.say(f"{signal.Signals(self.stop_signal).name}: stopping")
        self.stop_all()
        return 0

    def _check(self, child: Child, now: float) -> bool:
        """One look at a child; False when it has crashed too often to go on."""
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.spawn(now)
                self.say(f"{child.name}: restarted (pid {child.process.pid})")
            return True
        if not child.running():
            ran_for = now - child.started_at
            why = describe_exit(child.process.returncode)
            delay = child.backoff.crashed(ran_for)
            child.pid_path.unlink(missing_ok=True)
            if delay is None:
                message = (f"{child.name} crashed {child.backoff.fast_crashes} times in a row, each within "
                           f"{self.policy.fast_crash_seconds:.0f} s of starting (last: {why}); giving up. "
                           f"The end of {child.log_path}:\n{child.log_tail()}")
                child.note(f"exited ({why}); giving up")
                self.say(message)
                return False
            child.note(f"exited unexpectedly ({why}) after {ran_for:.1f} s; restarting in {delay:.1f} s")
            self.say(f"{child.name}: exited unexpectedly ({why}) after {ran_for:.1f} s; "
                     f"restarting in {delay:.1f} s (log {child.log_path})")
            child.restart_at = now + delay
            return True
        if not child.up:
            if healthy(child.spec.health_url, timeout=0.5):
                child.up = True
                self.say(f"{child.name}: up again (pid {child.process.pid})")
            elif now - child.started_at > self.policy.start_timeout:
                self.say(f"{child.name}: not healthy {self.policy.start_timeout:.0f} s after its restart; killing it")
                child.process.kill()
        return True

    # ---- stopping --------------------------------------------------------------------
    def stop_all(self) -> None:
        """SIGTERM every running child (last started first), wait up to stop_grace, then
        SIGKILL those that remain. Only our own children, by PID."""
        running = [c for c in reversed(self.children) if c.running()]
        for child in running:
            child.note("stopping (SIGTERM)")
            child.process.send_signal(signal.SIGTERM)
        deadline = self.clock.now() + self.policy.stop_grace
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - self.clock.now()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name}: still running {self.policy.stop_grace:.0f} s after SIGTERM; SIGKILL")
                child.process.kill()
                child.process.wait()
        for child in reversed(self.children):
            if child.process is not None:
                child.process.poll()
                if child in running:
                    child.note(f"stopped ({describe_exit(child.process.returncode)})")
                    self.say(f"{child.name}: stopped")
            child.pid_path.unlink(missing_ok=True)
