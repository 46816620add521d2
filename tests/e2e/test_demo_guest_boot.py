"""End to end: the demo guest (`eucalypt demo-image`) really boots under libvirt.

Everything network-related lives in a network namespace this test creates (and deletes):

    netns eue2e<pid>:  bridge eubr0 10.213.0.1/24 <- the instance's tap (domainxml.tap_name)
                       dnsmasq: DHCP for the instance's MAC -> 10.213.0.23 only
                       nft: 169.254.169.254:80 from the bridge -> 10.213.0.1:<port>
                       libvirtd (started by node.hostsetup inside the netns, so its taps
                       land on the private bridge); virtlogd (if none runs)
    test process:      an aiohttp metadata server listening on a socket made inside the
                       netns (instance-id, local-ipv4, a public key, a user-data script)

The guest is booted through qemu:///system with the node's own domain XML
(node.domainxml.domain_xml: direct kernel boot, a qcow2 overlay over rootfs.img made by
node.disks.create_overlay, a bridge NIC, the serial console to a file), and its console
must show the READY marker, the instance id, the public key, and a token that only the
user-data script, when run, prints. Root only; skipped (with the reason) when not root,
when a libvirtd already runs on this host (it is left alone), or when qemu cannot be
installed. No packet leaves the namespace: the bridge has no uplink.

    sudo .venv/bin/python -m pytest -m e2e tests/e2e/test_demo_guest_boot.py -s
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from eucalypt.demoimage import DemoImageError, build_demo_image
from node import hostsetup
from node.disks import create_overlay
from node.domainxml import DomainSpec, domain_xml, mac_address, tap_name
from node.hypervisor import LibvirtHypervisor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BRIDGE = "eubr0"
GATEWAY = "10.213.0.1"
GUEST_IP = "10.213.0.23"
BOOT_TIMEOUT = 300.0   # generous: TCG on a shared 2-core machine; it usually takes ~10 s
CLONE_NEWNET = 0x40000000


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


def _delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def root_only():
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: the demo guest boot test needs root (network namespace, libvirtd, qemu)")
    for tool in ("ip", "nft", "dnsmasq", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(f"SKIPPED: {tool} is missing (make apt installs it)")
    running = hostsetup.running_processes("libvirtd")
    if running:
        pytest.skip(f"SKIPPED: a libvirtd is already running on this host (pid {running[0]}); this test starts "
                    "its own inside a private network namespace and will not touch another one")


@pytest.fixture(scope="module")
def demo_image(root_only, tmp_path_factory):
    try:
        return build_demo_image(tmp_path_factory.mktemp("demo-image"))
    except DemoImageError as exc:
        pytest.skip(f"SKIPPED: cannot build the demo image: {exc}")


@pytest.fixture
def netns(root_only):
    name = f"eue2e{os.getpid()}"
    _delete_netns(name)
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", name, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _run("ip", "-n", name, "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _run("ip", "-n", name, "link", "set", BRIDGE, "up")
        yield name
    finally:
        _delete_netns(name)


def socket_in_netns(netns: str, host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket made inside NETNS (a socket stays in the namespace it was
    made in): setns in a short-lived thread, so the test process stays where it is."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict = {}

    def make():
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(64)
                s.setblocking(False)
                out["sock"] = s
            finally:
                libc.setns(own, CLONE_NEWNET)
        except OSError as exc:  # handed to the caller
            out["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


class MetadataServer:
    """The EC2 metadata tree for one instance; records who asked for what."""

    def __init__(self, tree: dict[str, bytes]) -> None:
        self.tree = tree
        self.requests: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.remote or "", request.path))
        body = self.tree.get(request.path.removeprefix("/latest/"))
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="text/plain")

    async def start(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_dnsmasq(netns: str, mac: str, ip: str, workdir: Path) -> subprocess.Popen:
    """DHCP on the bridge for one static MAC -> IP and nothing else (no DNS)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
         "--pid-file", "--port=0", "--bind-interfaces", f"--interface={BRIDGE}", "--except-interface=lo",
         "--dhcp-range=10.213.0.0,static,255.255.255.0,1h", f"--dhcp-host={mac},{ip}",
         f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}", "--log-dhcp",
         f"--log-facility={workdir / 'dnsmasq.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def add_metadata_dnat(netns: str, port: int) -> None:
    _run("ip", "netns", "exec", netns, "nft", "-f", "-", input=f"""
table ip eucalypt_e2e {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{BRIDGE}" ip daddr 169.254.169.254 tcp dport 80 dnat to {GATEWAY}:{port}
  }}
}}
""")


def _acpi_shutdown(uri: str, name: str) -> None:
    import libvirt
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(name).shutdown()
    finally:
        conn.close()


async def _wait_for(path: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            await asyncio.sleep(0.5)   # let the rest of the line (and anything after) land
            return path.read_text(errors="replace")
        await asyncio.sleep(0.2)
    text = path.read_text(errors="replace") if path.exists() else "(no console log)"
    raise AssertionError(f"no {marker!r} on the console within {timeout:.0f} s; console:\n{text[-3000:]}")


@pytest.mark.parametrize("metadata_delay", [0, 8], ids=["metadata-ready", "metadata-8s-late"])
async def test_demo_guest_boots_with_dhcp_metadata_key_and_user_data(tmp_path, demo_image, netns, metadata_delay):
    instance_id = f"i-{secrets.token_hex(4)}"
    mac = mac_address(instance_id)
    token_head, token_tail = secrets.token_hex(6), secrets.token_hex(6)
    public_key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " e2e@eucalypt"
    # the full token appears only when the script runs (the guest never echoes the script)
    user_data = f'#!/bin/sh\nT={token_head}\necho "user-data-token=${{T}}{token_tail} answer=$((6 * 7))"\n'
    metadata = MetadataServer({
        "meta-data/instance-id": instance_id.encode(),
        "meta-data/local-ipv4": GUEST_IP.encode(),
        "meta-data/public-keys/": b"0=e2e",
        "meta-data/public-keys/0/openssh-key": public_key.encode() + b"\n",
        "user-data": user_data.encode(),
    })
    state_dir = tmp_path / "hostsetup"
    procs: list[subprocess.Popen] = []
    hypervisor = None
    started = time.monotonic()
    try:
        sock = socket_in_netns(netns, GATEWAY)
        md_port = sock.getsockname()[1]
        await metadata.start(sock)
        if not metadata_delay:
            add_metadata_dnat(netns, md_port)
        procs.append(start_dnsmasq(netns, mac, GUEST_IP, tmp_path))

        choice = await asyncio.to_thread(hostsetup.choose_hypervisor, None, install=True, log=print,
                                         state_dir=state_dir, netns=netns, timeout=60)
        if choice.warning:
            if hostsetup.missing_packages(["qemu-system-x86"]):
                pytest.skip(f"SKIPPED: qemu-system-x86 cannot be installed: {choice.warning}")
            pytest.fail(f"host setup failed: {choice.warning}")
        assert choice.uri == "qemu:///system" and choice.domain_type in ("kvm", "qemu")
        assert procs[0].poll() is None, f"dnsmasq exited: {procs[0].stderr.read().decode()}"
        setup_done = time.monotonic()

        overlay = tmp_path / "disk.qcow2"
        console = tmp_path / "console.log"
        await create_overlay(demo_image.rootfs, overlay)
        spec = DomainSpec(name=instance_id, vcpus=1, memory_mib=256, disk_path=str(overlay),
                          console_log=str(console), domain_type=choice.domain_type,
                          kernel=str(demo_image.kernel), ramdisk=str(demo_image.ramdisk),
                          cmdline=demo_image.cmdline, bridge=BRIDGE, mac=mac, tap=tap_name(instance_id),
                          images=(("machine", "emi-demo0001"), ("kernel", "eki-demo0001"),
                                  ("ramdisk", "eri-demo0001")))
        hypervisor = LibvirtHypervisor(choice.uri, domain_type=choice.domain_type)
        await hypervisor.define(domain_xml(spec))
        boot_started = time.monotonic()
        await hypervisor.start(instance_id)
        if metadata_delay:
            # the guest is already asking (and timing out) when the metadata path appears
            await _wait_for(console, "EUCALYPT-GUEST: stage=metadata", BOOT_TIMEOUT)
            await asyncio.sleep(metadata_delay)
            assert not metadata.requests
            add_metadata_dnat(netns, md_port)
        text = await _wait_for(console, "EUCALYPT-GUEST-READY", BOOT_TIMEOUT)
        booted = time.monotonic()
        lines = [line.strip() for line in text.replace("\r", "").splitlines()]
        print(f"\nhost setup {setup_done - started:.1f} s, boot to READY {booted - boot_started:.1f} s "
              f"(domain type {choice.domain_type})")
        print("\n".join(line for line in lines if "EUCALYPT-GUEST" in line))

        assert f"EUCALYPT-GUEST-READY instance-id={instance_id} stage=rootfs" in text
        assert "EUCALYPT-GUEST: stage=initrd" in text and "EUCALYPT-GUEST: stage=rootfs" in text
        assert f"EUCALYPT-GUEST: dhcp eth0 ip={GUEST_IP}/24 router={GATEWAY}" in lines
        assert f"EUCALYPT-GUEST: instance-id {instance_id}" in lines
        assert f"EUCALYPT-GUEST: local-ipv4 {GUEST_IP}" in lines
        assert f"EUCALYPT-GUEST: public-key {public_key}" in lines
        assert f"user-data-token={token_head}{token_tail} answer=42" in lines
        assert "EUCALYPT-GUEST: user-data rc=0" in lines
        # every metadata request came from the address dnsmasq gave the instance's MAC
        assert metadata.requests and {remote for remote, _ in metadata.requests} == {GUEST_IP}
        assert {"/latest/meta-data/instance-id", "/latest/user-data",
                "/latest/meta-data/public-keys/0/openssh-key"} <= {path for _, path in metadata.requests}
        assert (await hypervisor.state(instance_id)).value == "running"

        # a second caller in the same namespace uses the running libvirtd (and records
        # nothing to stop); one that wants another namespace is refused, the daemon untouched
        again_dir, other_ns = tmp_path / "hostsetup-again", f"{netns}b"
        again = await asyncio.to_thread(hostsetup.choose_hypervisor, "qemu:///system", install=False,
                                        log=None, state_dir=again_dir, netns=netns)
        assert again == choice and not (again_dir / "hostsetup-daemons.json").exists()
        _run("ip", "netns", "add", other_ns)
        try:
            refused = await asyncio.to_thread(hostsetup.choose_hypervisor, None, install=False, log=None,
                                              state_dir=again_dir, netns=other_ns)
        finally:
            _delete_netns(other_ns)
        assert refused.uri == "test:///default" and f"outside network namespace {other_ns}" in refused.warning
        assert (await hypervisor.state(instance_id)).value == "running"

        # the ACPI power button (virDomainShutdown, `virsh shutdown`) powers the guest off
        await asyncio.to_thread(_acpi_shutdown, choice.uri, instance_id)
        await _wait_for(console, "EUCALYPT-GUEST: power button, powering off", 60)
        deadline = time.monotonic() + 60
        while (await hypervisor.state(instance_id)).value != "shutoff" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await hypervisor.state(instance_id)).value == "shutoff"
    finally:
        if hypervisor is not None:
            await hypervisor.destroy(instance_id)
            await hypervisor.undefine(instance_id)
            await hypervisor.close()
        await asyncio.to_thread(hostsetup.stop_started_daemons, state_dir)
        for proc in procs:
            _stop_process(proc)
        await metadata.stop()
    assert not hostsetup.running_processes("libvirtd"), "a libvirtd this test started is still running"
