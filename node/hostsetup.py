"""Host setup for a node: make `qemu:///system` work on this machine, or say why not.

`choose_hypervisor` is what `eucalypt up` (and an end-to-end test) calls before starting
a node: it returns the libvirt URI to use, the domain type ("kvm" or "qemu", i.e. TCG),
and a warning when it had to fall back to libvirt's test driver (`test:///default`, no
real VMs). On the way, when allowed to, it installs the Debian packages, writes the
qemu.conf settings a container-like host needs, and starts virtlogd and libvirtd as plain
daemons (there may be no systemd). The daemons it starts are recorded by PID (and start
time, so a reused PID is never signalled) in STATE_DIR/hostsetup-daemons.json, and
`stop_started_daemons(STATE_DIR)` stops exactly those, never a daemon someone else runs.

What the host needs, as found on this project's build machine (a Debian 12 VM without
systemd, running as root; see /work/shared/tools/virt-e2e-demo.sh):

- qemu.conf `user = "root"` and `group = "root"`: with the default (libvirt-qemu) libvirt
  9.0 re-probes qemu's capabilities for ~50 s on every domain start there.
- /dev/kvm may exist and even accept KVM_CREATE_VM and still fail guests (nested KVM
  without the vmx/svm CPU flag: "KVM internal error ... emulation failure" in the guest
  kernel). "kvm" is chosen only when /dev/kvm works *and* the CPU advertises vmx or svm
  *and* libvirt's capabilities offer it; otherwise "qemu" (TCG, a few seconds for the
  demo guest). EUCALYPT_DOMAIN_TYPE=kvm|qemu overrides the guess.
- libvirtd must run in the network namespace where the instances' bridge lives (libvirt
  creates the taps in its own namespace): `netns=` starts it under `ip netns exec`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "dnsmasq-base", "nftables")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SETTINGS = {"user": '"root"', "group": '"root"'}
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
DEFAULT_STATE_DIR = Path("/run/eucalypt/hostsetup")
SYSTEM_URI = "qemu:///system"
TEST_URI = "test:///default"
_STATE_FILE = "hostsetup-daemons.json"


@dataclass(frozen=True, slots=True)
class HostChoice:
    uri: str                    # what the node should connect to
    domain_type: str | None     # "kvm" | "qemu" for a real hypervisor; None for test://
    warning: str | None         # why we fell back to test:///default (None: no fallback)


class HostSetupError(Exception):
    """One step of the setup failed; the message says which and why."""


def _say(log, level: int, msg: str) -> None:
    if log is None:
        return
    if isinstance(log, logging.Logger):
        log.log(level, "%s", msg)
    else:
        log(msg)


# ---------------------------------------------------------------------------------------
# facts about the host


def is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip().strip('"')
    ids = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    return bool(ids & {"debian", "ubuntu"}) and shutil.which("apt-get") is not None


def missing_packages(packages=PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False, capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.endswith("install ok installed"):
            missing.append(pkg)
    return missing


def kvm_usable() -> bool:
    """/dev/kvm opens, speaks API 12, creates a VM, and the CPU advertises hardware
    virtualisation (vmx/svm). The last check catches nested setups where the first three
    pass and guests still die with KVM emulation failures."""
    KVM_GET_API_VERSION, KVM_CREATE_VM = 0xAE00, 0xAE01
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != 12:
            return False
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        return False
    return bool(flags & {"vmx", "svm"})


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): with the PID, identifies one
    process for its whole life. None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def running_processes(name: str) -> list[int]:
    """PIDs of live processes whose command name is NAME (like `pgrep -x NAME`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _comm(int(entry.name)) == name and _proc_start_time(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def netns_inode(netns: str | None) -> int:
    return os.stat(f"/run/netns/{netns}" if netns else "/proc/self/ns/net").st_ino


def process_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


# ---------------------------------------------------------------------------------------
# changes to the host


def install_packages(packages: list[str], log) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", *packages]
    _say(log, logging.INFO, f"installing {' '.join(packages)}")
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:  # stale package lists are the usual reason
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, env=env)
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise HostSetupError(f"apt-get install {' '.join(packages)} failed: {' / '.join(tail)}")


def configure_qemu_conf(path: Path = QEMU_CONF, settings: dict[str, str] = QEMU_SETTINGS, *, log=None) -> bool:
    """Set `key = value` for each setting in qemu.conf, idempotently: an active line with
    another value is replaced (the old line kept as a comment), a missing key appended.
    The first change keeps the original as qemu.conf.eucalypt-orig. True if it changed."""
    try:
        original = path.read_text()
    except FileNotFoundError:
        original = ""
    lines = original.splitlines()
    changed = False
    for key, value in settings.items():
        wanted = f"{key} = {value}"
        found = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("#") or "=" not in stripped:
                continue
            if stripped.split("=", 1)[0].strip() != key:
                continue
            found = True
            if stripped.split("=", 1)[1].strip() != value:
                lines[i] = f"# eucalypt: was: {stripped}\n{wanted}"
                changed = True
        if not found:
            lines.append(f"# eucalypt (node/hostsetup.py): needed where libvirtd runs without systemd\n{wanted}")
            changed = True
    if not changed:
        return False
    backup = path.with_name(path.name + ".eucalypt-orig")
    if path.exists() and not backup.exists():
        shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.eucalypt-new")
    tmp.write_text("\n".join(lines) + "\n")
    if path.exists():
        shutil.copymode(path, tmp)
    os.replace(tmp, path)
    _say(log, logging.INFO, f"{path}: set {', '.join(f'{k} = {v}' for k, v in settings.items())}")
    return True


def _record(state_dir: Path, entries: list[dict]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{_STATE_FILE}.new"
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, state_dir / _STATE_FILE)


def _recorded(state_dir: Path) -> list[dict]:
    try:
        return json.loads((state_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return []


def start_daemon(name: str, state_dir: Path, *, netns: str | None = None) -> int:
    """Start NAME (virtlogd, libvirtd) in the foreground of its own session, its output in
    STATE_DIR/NAME.log, and record its PID. `ip netns exec` execs, so the PID is the
    daemon's."""
    binary = shutil.which(name) or f"/usr/sbin/{name}"
    cmd = ["ip", "netns", "exec", netns, binary] if netns else [binary]
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    started = None
    for _ in range(50):  # the start time is readable at once; the comm changes after exec
        started = _proc_start_time(proc.pid)
        if started is not None:
            break
        time.sleep(0.01)
    if started is None:
        raise HostSetupError(f"{name} exited at once (see {state_dir / (name + '.log')})")
    entries = [e for e in _recorded(state_dir) if e.get("name") != name]
    entries.append({"name": name, "pid": proc.pid, "start_time": started, "netns": netns})
    _record(state_dir, entries)
    return proc.pid   # the dropped Popen is reaped by subprocess when it exits


def _alive(pid: int, start_time: int) -> bool:
    return _proc_start_time(pid) == start_time   # a zombie counts as gone


def stop_started_daemons(state_dir) -> list[str]:
    """Stop the daemons `choose_hypervisor` started (as recorded in STATE_DIR), newest
    first: SIGTERM, up to 10 s, then SIGKILL. A recorded PID that now belongs to another
    process (different start time) is left alone. Idempotent; returns the names stopped.
    Domains should be destroyed first: qemu processes outlive libvirtd."""
    state_dir = Path(state_dir)
    stopped = []
    for entry in reversed(_recorded(state_dir)):
        pid, start_time, name = int(entry["pid"]), int(entry["start_time"]), entry["name"]
        if not _alive(pid, start_time) or _comm(pid) not in (name, "ip"):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid, start_time):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, start_time):
                time.sleep(0.05)
        try:   # reap it if it was our child
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        stopped.append(name)
    (state_dir / _STATE_FILE).unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------------------------------
# libvirt


def probe_libvirt(uri: str) -> str:
    """Open URI, read its capabilities, close; return the capabilities XML.
    HostSetupError with libvirt's message when it does not work."""
    try:
        import libvirt
    except ImportError as exc:
        raise HostSetupError(f"libvirt-python is not installed ({exc})") from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
        try:
            return conn.getCapabilities()
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        raise HostSetupError(f"{uri}: {exc.get_error_message() or exc}") from exc


def capability_domain_types(caps_xml: str, arch: str = "x86_64") -> set[str]:
    import defusedxml.ElementTree as ET
    root = ET.fromstring(caps_xml)
    types = set()
    for guest in root.findall("guest"):
        a = guest.find("arch")
        if a is not None and a.get("name") == arch:
            types.update(d.get("type") for d in a.findall("domain"))
    return types


def wait_for_libvirt(uri: str, timeout: float, *, pid: int | None = None, log_file: Path | None = None) -> str:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if pid is not None and _proc_start_time(pid) is None:
            tail = ""
            if log_file and log_file.exists():
                tail = " / ".join(log_file.read_text(errors="replace").strip().splitlines()[-3:])
            raise HostSetupError(f"libvirtd exited: {tail or 'no output'}")
        if LIBVIRT_SOCKET.exists() or not uri.startswith("qemu:///"):
            try:
                return probe_libvirt(uri)
            except HostSetupError as exc:
                last = str(exc)
        time.sleep(0.1)
    raise HostSetupError(f"libvirt did not answer within {timeout:.0f} s ({last})")


def choose_domain_type(caps_xml: str) -> str:
    forced = os.environ.get("EUCALYPT_DOMAIN_TYPE")
    if forced in ("kvm", "qemu"):
        return forced
    return "kvm" if kvm_usable() and "kvm" in capability_domain_types(caps_xml) else "qemu"


# ---------------------------------------------------------------------------------------
# the entry point


def _ensure_libvirt(uri: str, *, install: bool, log, state_dir: Path, netns: str | None,
                    timeout: float) -> str:
    """Everything short of the fallback; returns the capabilities XML or raises."""
    running = running_processes("libvirtd")
    if running:
        want = netns_inode(netns)
        if netns is not None and all(process_netns_inode(p) != want for p in running):
            raise HostSetupError(f"a libvirtd not started by eucalypt is running (pid {running[0]}) outside "
                                 f"network namespace {netns}; it was left alone")
        _say(log, logging.INFO, f"using the running libvirtd (pid {running[0]})")
        return wait_for_libvirt(uri, timeout)
    if os.geteuid() != 0:
        raise HostSetupError("no libvirtd is running and starting one needs root")
    if not is_debian_like():
        raise HostSetupError("no libvirtd is running and this is not a Debian/Ubuntu host "
                             "(install and start libvirt yourself)")
    missing = missing_packages()
    if missing:
        if not install:
            raise HostSetupError(f"missing Debian packages {' '.join(missing)} (installing was not allowed)")
        install_packages(missing, log)
        running = running_processes("libvirtd")   # a package script may have started one
        if running:
            _say(log, logging.INFO, f"using the libvirtd the packages started (pid {running[0]})")
            return wait_for_libvirt(uri, timeout)
    configure_qemu_conf(log=log)
    if not running_processes("virtlogd"):
        pid = start_daemon("virtlogd", state_dir)
        _say(log, logging.INFO, f"started virtlogd (pid {pid})")
    pid = start_daemon("libvirtd", state_dir, netns=netns)
    _say(log, logging.INFO, f"started libvirtd (pid {pid}{', netns ' + netns if netns else ''})")
    return wait_for_libvirt(uri, timeout, pid=pid, log_file=state_dir / "libvirtd.log")


def choose_hypervisor(requested: str | None, *, install: bool, log: Callable[[str], None] | logging.Logger | None,
                      state_dir: Path | str | None = None, netns: str | None = None,
                      timeout: float = 30.0) -> HostChoice:
    """The hypervisor a node on this host should use.

    - `requested` a test:// URI: returned as is (domain_type None, no warning).
    - otherwise `requested` (default qemu:///system) is made to work: an already running
      libvirtd is used as it is; else, as root on Debian/Ubuntu, the packages are
      installed when `install` (only the missing ones), qemu.conf gets user/group root,
      and virtlogd (unless one runs) and libvirtd are started, in network namespace
      `netns` if given, recorded in `state_dir` (default /run/eucalypt/hostsetup) for
      `stop_started_daemons`. The URI must then open and report capabilities.
    - any failure: test:///default, with `warning` saying why (the daemons started on the
      way stay recorded, so stop_started_daemons still cleans up).
    `log` takes progress lines (a callable of one str, a logging.Logger, or None).
    """
    if requested and requested.startswith("test://"):
        return HostChoice(requested, None, None)
    uri = requested or SYSTEM_URI
    state_dir = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
    try:
        if uri == SYSTEM_URI:
            caps = _ensure_libvirt(uri, install=install, log=log, state_dir=state_dir, netns=netns,
                                   timeout=timeout)
        else:   # a remote or session URI: not ours to set up
            caps = probe_libvirt(uri)
        domain_type = choose_domain_type(caps)
        if domain_type not in capability_domain_types(caps):
            raise HostSetupError(f"{uri} offers no x86_64 domain of type {domain_type}")
    except (HostSetupError, OSError, subprocess.SubprocessError) as exc:
        warning = f"no usable hypervisor at {uri}: {exc}; falling back to {TEST_URI} (instances will not really boot)"
        _say(log, logging.WARNING, warning)
        return HostChoice(TEST_URI, None, warning)
    _say(log, logging.INFO, f"hypervisor {uri}, domain type {domain_type}")
    return HostChoice(uri, domain_type, None)
