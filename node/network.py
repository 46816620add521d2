"""The node's instance network: bridge, DHCP (dnsmasq) and NAT (nftables), managed by
the agent when NodeConfig.network_managed (bridge + subnet set, and root or asked for).

    start()                 bridge BR (created if missing: STP off, forward delay 0), the
                            gateway (the subnet's first host) on it, BR up, ip_forward on;
                            dnsmasq (DHCP only, static leases) bound to BR alone
    install_nat(port)       nftables table ip eucalypt_<BR>: DNAT of tcp
                            169.254.169.254:80 arriving on BR to GATEWAY:port (the metadata
                            service), masquerade of the subnet leaving by any other
                            interface, an (empty) forward filter chain for security groups
    add_host / remove_host  one "MAC,IP,hostname" line per instance in DATA/network/dhcp-hosts,
                            then SIGHUP to dnsmasq (it re-reads the file)
    set_contexts            the managed segments' subnets dnsmasq serves too (segments.py
                            makes the bridges; a changed set restarts dnsmasq)
    set_public_addresses    with --public-interface: the elastic IPs held there (/32) and
                            announced by gratuitous ARP
    stop()                  dnsmasq stopped (by the PID we started), the tables removed (this
                            one and firewall.py's bridge table of the same name), the
                            bridge removed only if we created it and no instance of ours is
                            left on it (qemu:///system domains outlive the agent; their taps
                            would be torn off the bridge)

Everything is idempotent across agent restarts: an existing bridge and address are kept,
the table is replaced in one nft transaction, a dnsmasq left by a previous agent (its
pid file, checked against /proc/PID/cmdline) is stopped before ours starts. Whether we
created the bridge is recorded in DATA/network/state.json, so a restarted agent still
knows. All tools run as argv lists through asyncio subprocesses (no shell).

dnsmasq runs with --user=root: it re-reads the hosts file on SIGHUP *after* dropping
privileges, and the file lives in the agent's private data directory (pytest's tmp
directories, /var/lib/eucalypt, are not world-readable). It serves DHCP only (--port=0),
on BR only, so that is little to protect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest
from .segments import Segments, check_bridge_name
from .tools import NetworkError, run_tool, send_gratuitous_arp

log = logging.getLogger("eucalypt.node.network")

METADATA_ADDRESS = "169.254.169.254"
LEASE_TIME = "12h"


def nft_table_name(bridge: str) -> str:
    return "eucalypt_" + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


def nft_ruleset(bridge: str, subnet: str, gateway: str, metadata_port: int) -> str:
    """The node's nftables table (a pure function; `nft -f -` reads it). Adding the
    empty table first and deleting it makes one transaction that replaces any older
    version atomically, whether it exists or not."""
    t = nft_table_name(bridge)
    return f"""\
table ip {t} {{}}
delete table ip {t}
table ip {t} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{bridge}" ip daddr {METADATA_ADDRESS} tcp dport 80 dnat to {gateway}:{metadata_port}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{bridge}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    # security groups (issue #8): per-instance rules go here
  }}
}}
"""


def dhcp_hosts_text(hosts: dict[str, tuple[str, str, str]]) -> str:
    """dnsmasq --dhcp-hostsfile lines "MAC,IP,hostname", one per instance, sorted."""
    return "".join(f"{mac},{ip},{name}\n" for _, (mac, ip, name) in sorted(hosts.items()))


def host_dns_servers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's own IPv4 name servers an instance can also reach (loopback ones, such
    as systemd-resolved's 127.0.0.53, are the host's alone and left out)."""
    servers = []
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    addr = ipaddress.IPv4Address(parts[1])
                except ValueError:
                    continue
                if not addr.is_loopback:
                    servers.append(str(addr))
    except OSError:
        pass
    return servers


@dataclass(frozen=True, order=True, slots=True)
class DhcpContext:
    """One managed subnet dnsmasq serves: on `bridge`, router `gateway`, MTU (None: 1500)."""
    bridge: str
    subnet: str
    gateway: str
    mtu: int | None = None


class NodeNetwork:
    """See the module doc. One object per agent; not shared."""

    def __init__(self, data_dir: Path, bridge: str, subnet: str, *, dns_servers: list[str] | None = None,
                 tunnel_ip: str | None = None, uplink: str | None = None,
                 public_interface: str | None = None) -> None:
        self.bridge = bridge
        self.net = ipaddress.IPv4Network(subnet)
        self.subnet = str(self.net)
        self.gateway = str(next(self.net.hosts()))
        self.dir = Path(data_dir) / "network"
        self.hosts_file = self.dir / "dhcp-hosts"
        self.leases_file = self.dir / "leases"
        self.pid_file = self.dir / "dnsmasq.pid"
        self.log_file = self.dir / "dnsmasq.log"
        self.state_file = self.dir / "state.json"
        self.dns_servers = host_dns_servers() if dns_servers is None else dns_servers
        self._hosts: dict[str, tuple[str, str, str]] = {}
        self._dnsmasq: asyncio.subprocess.Process | None = None
        self._nat_installed = False
        self._lock = asyncio.Lock()
        self.tunnel_ip, self.uplink = tunnel_ip, uplink
        self.public_interface = public_interface
        self.segments = Segments(data_dir, bridge, tunnel_ip=tunnel_ip, uplink=uplink)
        self.modes = self._modes()
        self._contexts: tuple[DhcpContext, ...] = ()  # the managed segments' subnets

    def describe(self) -> dict:
        return {"bridge": self.bridge, "subnet": self.subnet, "gateway": self.gateway,
                "modes": list(self.modes), "transports": self.segments.transports(),
                "tunnel_ip": self.tunnel_ip, "uplink": self.uplink}

    def _modes(self) -> list[str]:
        """The network modes this node can run: managed ones need segment device names
        that fit (<bridge>-4094 in 15 characters). Once, at construction (it logs why not)."""
        try:
            check_bridge_name(self.bridge)
        except ValueError as exc:
            log.warning("network: flat mode only: %s", exc)
            return ["flat"]
        return ["flat", "managed", "managed-novlan"]

    @property
    def table(self) -> str:
        return nft_table_name(self.bridge)

    # the state we keep across restarts -----------------------------------------------------

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    # start / stop --------------------------------------------------------------------------

    async def start(self, hosts: dict[str, tuple[str, str, str]]) -> None:
        """Bring the network up with these DHCP entries (instance id -> (mac, ip, hostname))."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._hosts = dict(hosts)
        await self._ensure_bridge()
        await self.segments.probe()
        await asyncio.to_thread(Path("/proc/sys/net/ipv4/ip_forward").write_text, "1\n")
        await asyncio.to_thread(self._write_hosts)
        await self._start_dnsmasq()
        log.info("network: bridge %s (%s, gateway %s), dnsmasq pid %s, %d DHCP host(s)", self.bridge,
                 self.subnet, self.gateway, self._dnsmasq.pid, len(self._hosts))

    async def _ensure_bridge(self) -> None:
        state = self._state()
        code, out, _ = await run_tool("ip", "-j", "link", "show", "dev", self.bridge, check=False)
        if code != 0:
            await run_tool("ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            state["created_bridge"] = True
            self._save_state(state)
        else:
            links = json.loads(out or "[]")
            if links and links[0].get("linkinfo", {}).get("info_kind") not in (None, "bridge"):
                raise NetworkError(f"{self.bridge} exists and is not a bridge")
            state.setdefault("created_bridge", False)
            self._save_state(state)
        _, out, _ = await run_tool("ip", "-j", "addr", "show", "dev", self.bridge)
        addrs = {(a.get("local"), a.get("prefixlen")) for link in json.loads(out or "[]")
                 for a in link.get("addr_info", []) if a.get("family") == "inet"}
        if (self.gateway, self.net.prefixlen) not in addrs:
            await run_tool("ip", "addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
        await run_tool("ip", "link", "set", self.bridge, "up")

    def dnsmasq_argv(self) -> list[str]:
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
                "--bind-interfaces", f"--interface={self.bridge}", "--except-interface=lo",
                f"--listen-address={self.gateway}",
                f"--dhcp-range={self.net.network_address},static,{self.net.netmask},{LEASE_TIME}",
                f"--dhcp-hostsfile={self.hosts_file}", f"--dhcp-leasefile={self.leases_file}",
                f"--pid-file={self.pid_file}", f"--log-facility={self.log_file}", "--log-dhcp",
                "--dhcp-authoritative", f"--dhcp-option=option:router,{self.gateway}"]
        for i, ctx in enumerate(self._contexts):  # a tag per segment subnet: its own router and MTU
            net = ipaddress.IPv4Network(ctx.subnet)
            if f"--interface={ctx.bridge}" not in argv:
                argv.append(f"--interface={ctx.bridge}")
            argv += [f"--dhcp-range=set:seg{i},{net.network_address},static,{net.netmask},{LEASE_TIME}",
                     f"--dhcp-option=tag:seg{i},option:router,{ctx.gateway}"]
            if ctx.mtu:
                argv.append(f"--dhcp-option=tag:seg{i},option:mtu,{ctx.mtu}")
        if self.dns_servers:
            argv.append("--dhcp-option=option:dns-server," + ",".join(self.dns_servers))
        return argv

    async def set_contexts(self, contexts) -> None:
        """Serve DHCP on these managed segments too (a DhcpContext each); dnsmasq reads
        its ranges only at start, so a changed set restarts it (leases are static)."""
        contexts = tuple(sorted(contexts))
        async with self._lock:
            if contexts == self._contexts:
                return
            self._contexts = contexts
            if self._dnsmasq is not None:
                await self._stop_dnsmasq()
                await self._start_dnsmasq()

    async def _start_dnsmasq(self) -> None:
        await self._stop_stale_dnsmasq()
        self.pid_file.unlink(missing_ok=True)
        self._dnsmasq = await asyncio.create_subprocess_exec(
            *self.dnsmasq_argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        # dnsmasq checks its options and binds before it writes the pid file; a failure
        # (bad option, interface missing) ends the process with the reason on stderr.
        for _ in range(100):
            if self._dnsmasq.returncode is not None or self.pid_file.exists():
                break
            try:
                await asyncio.wait_for(self._dnsmasq.wait(), 0.05)
            except TimeoutError:
                pass
        if self._dnsmasq.returncode is not None:
            err = (await self._dnsmasq.stderr.read()).decode(errors="replace").strip()
            self._dnsmasq = None
            raise NetworkError(f"dnsmasq on {self.bridge} exited: {err}")

    async def _stop_stale_dnsmasq(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not cmdline or not cmdline[0].endswith(b"dnsmasq") or f"--pid-file={self.pid_file}".encode() not in cmdline:
            return  # the pid was reused by someone else's process
        log.info("network: stopping the dnsmasq (pid %d) a previous agent left", pid)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                return
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    async def install_nat(self, metadata_port: int) -> None:
        await run_tool("nft", "-f", "-", stdin=nft_ruleset(self.bridge, self.subnet, self.gateway,
                                                          metadata_port).encode())
        self._nat_installed = True

    async def _stop_dnsmasq(self) -> None:
        if self._dnsmasq is not None:
            if self._dnsmasq.returncode is None:
                self._dnsmasq.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self._dnsmasq.wait(), 5)
                except TimeoutError:
                    self._dnsmasq.kill()
                    await self._dnsmasq.wait()
            self._dnsmasq = None
            self.pid_file.unlink(missing_ok=True)

    async def set_public_addresses(self, addresses: set[str]) -> None:
        """With --public-interface: hold exactly these elastic IPs (of this node's
        instances) as /32 addresses there, so the public network's ARP finds the node
        that hosts each; a newly held one is announced (gratuitous ARP), so a move
        between nodes takes effect at once. Without: nothing (the operator routes the
        public range to the nodes)."""
        if not self.public_interface:
            return
        state = self._state()
        held = set(state.get("public_addresses", []))
        for ip in sorted(addresses - held):
            code, _, err = await run_tool("ip", "addr", "add", f"{ip}/32", "dev", self.public_interface, check=False)
            if code != 0 and "File exists" not in err:
                raise NetworkError(f"adding elastic IP {ip} to {self.public_interface}: {err}")
            held.add(ip)
            self._save_state({**state, "public_addresses": sorted(held)})
            try:
                await asyncio.to_thread(send_gratuitous_arp, self.public_interface, ip)
            except OSError as exc:
                log.warning("network: announcing %s on %s: %s", ip, self.public_interface, exc)
        for ip in sorted(held - addresses):
            await run_tool("ip", "addr", "del", f"{ip}/32", "dev", self.public_interface, check=False)
            held.discard(ip)
        self._save_state({**self._state(), "public_addresses": sorted(held)})

    async def stop(self, *, instances_left: int = 0) -> None:
        await self._stop_dnsmasq()
        await self.set_public_addresses(set())  # the DNAT goes with the tables below
        await run_tool("nft", "delete", "table", "ip", self.table, check=False)
        await run_tool("nft", "delete", "table", "bridge", self.table, check=False)  # firewall.py's
        self._nat_installed = False
        if instances_left:
            log.info("network: leaving the managed segments up for %d instance(s)", instances_left)
        else:
            try:
                await self.segments.remove_all()
            except NetworkError as exc:
                log.warning("network: removing the managed segments: %s", exc.message)
        if self._state().get("created_bridge"):
            if instances_left:
                log.info("network: leaving bridge %s up for %d instance(s)", self.bridge, instances_left)
            else:
                code, _, err = await run_tool("ip", "link", "del", self.bridge, check=False)
                if code == 0:
                    self._save_state({**self._state(), "created_bridge": False})
                else:
                    log.warning("network: removing bridge %s: %s", self.bridge, err)

    # DHCP entries --------------------------------------------------------------------------

    def check_address(self, ip: str, subnet: str | None = None, gateway: str | None = None) -> None:
        """`ip` must be a host of the node's flat subnet (or of the managed `subnet`,
        whose first host addresses are the nodes' gateways) other than the gateway."""
        net = ipaddress.IPv4Network(subnet) if subnet else self.net
        gateway = gateway if subnet else self.gateway
        addr = ipaddress.IPv4Address(ip)
        if addr not in net or addr in (net.network_address, net.broadcast_address) or str(addr) == gateway:
            where = f"the subnet {net}" if subnet else f"this node's subnet {net}"
            raise BadRequest(f"private_ip {ip} is not a host address of {where} (gateway {gateway})")

    def _write_hosts(self) -> None:
        tmp = self.hosts_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(dhcp_hosts_text(self._hosts))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.hosts_file)

    async def _reload(self) -> None:
        await asyncio.to_thread(self._write_hosts)
        if self._dnsmasq is None:
            return  # not started (yet): start() reads the file
        if self._dnsmasq.returncode is None:
            self._dnsmasq.send_signal(signal.SIGHUP)
        else:  # it died since: say so and start another, which reads the new file
            log.error("network: dnsmasq (pid %d) had exited with %s; restarting it", self._dnsmasq.pid,
                      self._dnsmasq.returncode)
            await self._start_dnsmasq()

    async def add_host(self, instance_id: str, mac: str, ip: str, hostname: str) -> None:
        async with self._lock:
            if self._hosts.get(instance_id) != (mac, ip, hostname):
                self._hosts[instance_id] = (mac, ip, hostname)
                await self._reload()

    async def remove_host(self, instance_id: str) -> None:
        async with self._lock:
            if self._hosts.pop(instance_id, None) is not None:
                await self._reload()
