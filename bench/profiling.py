"""Sampling profiles of a Python server under load (py-spy, from bench/.work/prof-venv).

`bench/run.py --profile` runs one extra, uncounted repetition of each workload against the
candidate with py-spy attached (non-blocking, subprocesses included), writes the collapsed
stacks to bench/.work/profiles/TARGET-WORKLOAD.txt (feed them to any flamegraph tool) and
prints where the samples went: the functions with the most samples on top of the stack
(self) and anywhere in it (inclusive). That is the profile that shows why a target is missed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from servers import WORK

PYSPY = WORK / "prof-venv" / "bin" / "py-spy"
PROFILES = WORK / "profiles"


def available() -> bool:
    return PYSPY.exists()


class Recording:
    def __init__(self, pid: int, name: str, rate: int = 250, idle: bool = False):
        PROFILES.mkdir(parents=True, exist_ok=True)
        self.out = PROFILES / f"{name}.txt"
        self.out.unlink(missing_ok=True)
        cmd = [str(PYSPY), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
               "--rate", str(rate), "--format", "raw", "--output", str(self.out)]
        if idle:
            cmd.append("--idle")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        time.sleep(1.0)  # attach before the load starts

    def stop(self) -> Path | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out if self.out.exists() else None


_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _frame(f: str) -> str:
    m = _FRAME.match(f.strip())
    if not m:
        return f.strip()
    func, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


# frames every stack shares (thread and event-loop entry points): left out of "inclusive"
_GENERIC_FILES = ("threading.py", "futures/thread.py", "asyncio/runners.py", "uvloop/__init__.py",
                  "asyncio/base_events.py", "asyncio/events.py", "eucalypt/cli.py")
# self time in these frames is C code they call that py-spy cannot see into
_SELF_LABEL = {
    "Runner.run": "event loop C code (uvloop: socket I/O, callbacks)",
    "_worker": "thread-pool worker outside Python (queue wait / GIL)",
}


def summarize(path: Path, top: int = 12) -> dict:
    self_c: Counter = Counter()
    incl: Counter = Counter()
    lanes: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        lanes["worker threads" if any(f.startswith("_worker ") for f in frames)
              else "event-loop thread"] += n
        leaf = frames[-1]
        self_c[_SELF_LABEL.get(leaf.split(" (")[0], leaf)] += n
        for f in set(frames):
            if not f.endswith(_GENERIC_FILES) and not f.startswith("<module>") \
                    and not any(f.endswith(g + ")") for g in _GENERIC_FILES):
                incl[f] += n
    if not total:
        return {"samples": 0, "file": str(path), "self": [], "inclusive": [], "lanes": []}
    return {"samples": total, "file": str(path),
            "lanes": [(k, v / total) for k, v in lanes.most_common()],
            "self": [(f, n / total) for f, n in self_c.most_common(top)],
            "inclusive": [(f, n / total) for f, n in incl.most_common(top)]}


def render(name: str, s: dict) -> str:
    out = [f"-- profile {name}: {s['samples']} samples, {s['file']}"]
    if s.get("figure_under_profiler") is not None:
        out[0] += f" (figure under the profiler: {s['figure_under_profiler']:.4g} {s.get('unit', '')})"
    out.append("   where: " + ", ".join(f"{k} {p * 100:.0f}%" for k, p in s.get("lanes", [])))
    out.append("   self (on top of the stack):")
    out += [f"     {p * 100:5.1f}%  {f}" for f, p in s["self"]]
    out.append("   inclusive (thread/loop entry points left out):")
    out += [f"     {p * 100:5.1f}%  {f}" for f, p in s["inclusive"]]
    return "\n".join(out)
