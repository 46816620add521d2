"""`eucalypt demo-image OUTDIR`: a tiny bootable x86_64 guest made only from Debian packages.

It is shaped like a Eucalyptus EKI / ERI / EMI triple for direct kernel boot, so it can be
bundled, registered and launched like any image:

    OUTDIR/vmlinuz        the kernel, unmodified from linux-image-cloud-amd64
    OUTDIR/initrd.img     gzip newc cpio: busybox-static, the virtio modules (and what they
                          depend on) from the same kernel package, /init
    OUTDIR/rootfs.img     ext2 root disk (`mke2fs -d`): busybox-static and /sbin/init
    OUTDIR/manifest.json  package versions, sizes and sha256 of every file, the kernel
                          command line to boot it with

The guest's behaviour lives in `eucalypt/guest/init` (package data; the same script is
/init and /sbin/init): it loads the modules, switch_roots to root=/dev/vda, takes an
address with udhcpc, reads instance-id, local-ipv4, the public key and user-data from
169.254.169.254 (retrying for eu.wait=30 s), runs a "#!" user-data, and prints
"EUCALYPT-GUEST-READY instance-id=<id>" on the serial console. Under TCG it boots in a
few seconds.

Packages are fetched with `apt-get download` into a cache ($EUCALYPT_CACHE, default
~/.cache/eucalypt/demo-image); builds are idempotent: OUTDIR/.stamp records a digest of
the packages, the guest scripts, this module and the settings, and a matching stamp means
nothing is rebuilt. The cpio archive is written here (no root needed for /dev/console in
it, and the ramdisk is byte-reproducible); the ext2 image comes from mke2fs, so its UUID
and timestamps differ between builds while its contents do not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

log = logging.getLogger("eucalypt.demoimage")

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Loaded in this order (dependencies first). The Debian cloud kernel has ext4, crc32c and
# af_packet (udhcpc's raw socket) built in; they are listed for kernels that do not.
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "button", "evdev",
           "af_packet", "crc32c_generic", "ext4")
ROOTFS_MIB = 32
ROOTFS_LABEL = "eucaroot"
# quiet: the kernel's messages on an emulated 16550 cost seconds under TCG.
CMDLINE = "console=ttyS0 root=/dev/vda rw quiet"
IMAGE_FILES = ("vmlinuz", "initrd.img", "rootfs.img")
MANIFEST_FORMAT = 1


class DemoImageError(Exception):
    """The image cannot be built (a package cannot be fetched, a tool is missing...)."""


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    deb: Path


@dataclass(frozen=True, slots=True)
class DemoImage:
    outdir: Path
    manifest: dict
    rebuilt: bool            # False: the stamp matched and nothing was written

    @property
    def kernel(self) -> Path:
        return self.outdir / "vmlinuz"

    @property
    def ramdisk(self) -> Path:
        return self.outdir / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.outdir / "rootfs.img"

    @property
    def cmdline(self) -> str:
        return self.manifest["cmdline"]


def default_cache_dir() -> Path:
    env = os.environ.get("EUCALYPT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eucalypt" / "demo-image"


def guest_file(name: str) -> bytes:
    """A file of the guest (package data under eucalypt/guest/)."""
    return resources.files("eucalypt").joinpath("guest", name).read_bytes()


# ---------------------------------------------------------------------------------------
# Debian packages


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, check=True, capture_output=True, **kw)
    except FileNotFoundError as exc:
        raise DemoImageError(f"missing tool: {args[0]}") from exc
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip()
        raise DemoImageError(f"{' '.join(args)} failed: {err}") from exc


class AptFetcher:
    """Fetches exact package versions into CACHE/debs with `apt-get download`; runs
    `apt-get update` at most once (as root) when the lists do not know a package or a
    download fails; offline, or when apt cannot help, uses the newest cached .deb."""

    def __init__(self, cache: Path, *, offline: bool = False) -> None:
        self.debs = cache / "debs"
        self.offline = offline
        self._updated = False

    def _update_once(self) -> None:
        if self._updated or self.offline or os.geteuid() != 0:
            return
        self._updated = True
        log.info("running apt-get update")
        try:
            _run(["apt-get", "update", "-qq"])
        except DemoImageError as exc:
            log.warning("%s (continuing)", exc)

    def _show(self, name: str) -> dict[str, str]:
        """The candidate's control fields ({} when apt does not know the package)."""
        try:
            out = _run(["apt-cache", "show", "--no-all-versions", name]).stdout.decode()
        except DemoImageError:
            return {}
        fields: dict[str, str] = {}
        for line in out.splitlines():
            if not line.strip():
                break
            m = re.match(r"^([A-Za-z0-9-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1)] = m.group(2)
        return fields

    def candidate(self, name: str) -> dict[str, str]:
        fields = self._show(name)
        if not fields and not self.offline:
            self._update_once()
            fields = self._show(name)
        return fields

    def resolve_kernel(self, meta: str) -> str:
        """The versioned kernel package a metapackage (linux-image-cloud-amd64) points at."""
        if self.offline:
            cached = self._cached_newest(re.compile(r"^linux-image-\d[^_]*_"))
            if cached is None:
                raise DemoImageError("offline and no kernel package in the cache")
            return cached.name.split("_")[0]
        if meta.startswith("linux-image-") and meta[12:13].isdigit():
            return meta
        fields = self.candidate(meta)
        m = re.search(r"\b(linux-image-\d[^\s,()]*)", fields.get("Depends", ""))
        if not m:
            raise DemoImageError(f"cannot resolve a kernel package from {meta} (apt-get update?)")
        return m.group(1)

    def _deb_version(self, deb: Path) -> str:
        return _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.decode().strip()

    def _cached(self, name: str, version: str) -> Path | None:
        for deb in sorted(self.debs.glob(f"{name}_*.deb")):
            if self._deb_version(deb) == version:
                return deb
        return None

    def _cached_newest(self, pattern: re.Pattern) -> Path | None:
        debs = [p for p in self.debs.glob("*.deb") if pattern.match(p.name)]
        return max(debs, key=lambda p: p.stat().st_mtime, default=None)

    def fetch(self, name: str) -> Package:
        self.debs.mkdir(parents=True, exist_ok=True)
        version = None if self.offline else self.candidate(name).get("Version")
        deb = self._cached(name, version) if version else None
        if version and deb is None:
            log.info("downloading %s=%s", name, version)
            # as root apt drops to the _apt user, who cannot write into our cache
            sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
            cmd = ["apt-get", "download", "-qq", *sandbox, f"{name}={version}"]
            try:
                _run(cmd, cwd=self.debs)
            except DemoImageError as exc:
                log.warning("%s", exc)
                self._update_once()
                version = self.candidate(name).get("Version", version)
                try:
                    _run(["apt-get", "download", "-qq", *sandbox, f"{name}={version}"], cwd=self.debs)
                except DemoImageError as exc2:
                    log.warning("%s", exc2)
            deb = self._cached(name, version)
        if deb is None:
            deb = self._cached_newest(re.compile(rf"^{re.escape(name)}_"))
            if deb is None:
                raise DemoImageError(f"cannot get package {name} (apt-get update? network?)")
            log.info("using cached %s", deb.name)
        return Package(name, self._deb_version(deb), deb)


def _deb_members(deb: Path, want: Callable[[str], bool]) -> Iterable[tuple[tarfile.TarInfo, bytes | None]]:
    """(member, content) for each member of the .deb's data archive that `want` accepts
    (content None for non-files), read as one stream from `dpkg-deb --fsys-tarfile`."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not want(name):
                    continue
                data = tar.extractfile(member).read() if member.isfile() else None
                yield member, data
    finally:
        if proc.stdout:
            proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise DemoImageError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err.strip()}")


# ---------------------------------------------------------------------------------------
# kernel and modules


@dataclass(slots=True)
class KernelParts:
    release: str
    vmlinuz: bytes
    modules: dict[str, bytes]               # name (with _) -> .ko content (uncompressed)
    depends: dict[str, list[str]]
    builtin: set[str] = field(default_factory=set)


def _decompress_module(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_depends(ko: bytes) -> list[str]:
    """The depends= field of a module's .modinfo section (NUL-separated key=value
    strings), without needing kmod or an ELF parser."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def read_kernel(deb: Path) -> KernelParts:
    vmlinuz = None
    release = None
    modules: dict[str, bytes] = {}
    builtin: set[str] = set()

    def want(name: str) -> bool:
        return (re.fullmatch(r"boot/vmlinuz-.*", name) is not None
                or re.fullmatch(r"lib/modules/[^/]+/kernel/.*\.ko(\.(xz|zst|gz))?", name) is not None
                or re.fullmatch(r"lib/modules/[^/]+/modules\.builtin", name) is not None)

    for member, data in _deb_members(deb, want):
        name = member.name.removeprefix("./")
        if data is None:
            continue
        if name.startswith("boot/vmlinuz-"):
            vmlinuz, release = data, name.removeprefix("boot/vmlinuz-")
        elif name.endswith("/modules.builtin"):
            builtin = {_module_name(line) for line in data.decode().split()}
        else:
            modules[_module_name(name)] = _decompress_module(name, data)
    if vmlinuz is None or release is None:
        raise DemoImageError(f"no /boot/vmlinuz-* in {deb.name}")
    depends = {name: module_depends(ko) for name, ko in modules.items()}
    return KernelParts(release, vmlinuz, modules, depends, builtin)


def module_load_order(kernel: KernelParts, wanted: Iterable[str]) -> list[str]:
    """The wanted modules and everything they depend on, dependencies first; names that
    are built into the kernel are dropped, names the kernel does not have are an error."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in kernel.modules:
            if name in kernel.builtin:
                return
            raise DemoImageError(f"kernel {kernel.release} has no module {name}")
        for dep in kernel.depends[name]:
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


# ---------------------------------------------------------------------------------------
# cpio (newc) and the file trees


class NewcArchive:
    """Writes a "newc" (SVR4, no CRC) cpio archive, the format the kernel unpacks as an
    initramfs. Every entry is owned by root with a fixed mtime; inode numbers count up."""

    def __init__(self, out: io.BufferedIOBase, *, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), trailer: bool = False) -> None:
        self._ino += 1
        encoded = name.encode() + b"\x00"
        fields = (0 if trailer else self._ino, mode, 0, 0, nlink, self._mtime, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + b"\x00" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data + b"\x00" * (-len(data) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1, trailer=True)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str                # "dir" | "file" | "symlink" | "chardev"
    perm: int = 0o755
    data: bytes = b""
    target: str = ""
    dev: tuple[int, int] = (0, 0)


def guest_tree(busybox: bytes, applets: Iterable[str], *, stage: str,
               modules: dict[str, bytes] | None = None) -> dict[str, Entry]:
    """path -> Entry of one stage's file tree (paths relative, sorted by the caller)."""
    init = guest_file("init")
    tree: dict[str, Entry] = {}
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "root/.ssh", "lib",
              "lib/modules", "newroot", "mnt", "var", "run", "usr", "usr/bin", "usr/sbin"):
        tree[d] = Entry("dir", 0o700 if d.startswith("root") else (0o1777 if d == "tmp" else 0o755))
    tree["bin/busybox"] = Entry("file", 0o755, busybox)
    for applet in applets:
        if applet != "busybox" and f"bin/{applet}" not in tree:
            tree[f"bin/{applet}"] = Entry("symlink", target="busybox")
    tree["etc/udhcpc.script"] = Entry("file", 0o755, guest_file("udhcpc.script"))
    tree["etc/passwd"] = Entry("file", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
    tree["etc/group"] = Entry("file", 0o644, b"root:x:0:\n")
    tree["etc/hostname"] = Entry("file", 0o644, b"eucalypt-guest\n")
    tree["etc/hosts"] = Entry("file", 0o644, b"127.0.0.1 localhost\n")
    tree["etc/resolv.conf"] = Entry("file", 0o644, b"")
    if stage == "initrd":
        tree["init"] = Entry("file", 0o755, init)
        # the kernel opens /dev/console for /init before anything is mounted
        tree["dev/console"] = Entry("chardev", 0o600, dev=(5, 1))
        tree["dev/null"] = Entry("chardev", 0o666, dev=(1, 3))
        for name, ko in (modules or {}).items():
            tree[f"lib/modules/{name}.ko"] = Entry("file", 0o644, ko)
        tree["etc/eucalypt-modules"] = Entry("file", 0o644, "".join(f"{m}\n" for m in modules or {}).encode())
    else:
        tree["sbin/init"] = Entry("file", 0o755, init)
        tree["etc/eucalypt-rootfs"] = Entry("file", 0o644, b"")
    return tree


def write_initrd(tree: dict[str, Entry], path: Path) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        archive = NewcArchive(gz)
        for name in sorted(tree):
            e = tree[name]
            if e.kind == "dir":
                archive.directory(name, e.perm)
            elif e.kind == "file":
                archive.file(name, e.data, e.perm)
            elif e.kind == "symlink":
                archive.symlink(name, e.target)
            elif e.kind == "chardev":
                archive.chardev(name, *e.dev, perm=e.perm)
        archive.close()


def write_rootfs(tree: dict[str, Entry], path: Path, *, size_mib: int, label: str, work: Path) -> None:
    """ext2 with `mke2fs -d` from a staged copy of the tree (device nodes are left out:
    /dev is the ramdisk's devtmpfs, moved over before switch_root)."""
    stage = work / "rootfs"
    stage_tree(tree, stage)
    make_ext2(stage, path, size_mib=size_mib, label=label, work=work)


def stage_tree(tree: dict[str, Entry], stage: Path) -> None:
    for name in sorted(tree):
        e = tree[name]
        target = stage / name
        if e.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, e.perm)
        elif e.kind == "file":
            target.write_bytes(e.data)
            os.chmod(target, e.perm)
        elif e.kind == "symlink":
            os.symlink(e.target, target)
    os.chmod(stage, 0o755)


def make_ext2(stage: Path, path: Path, *, size_mib: int, label: str, work: Path) -> None:
    """`mke2fs -d STAGE`, then every file given to root (mke2fs copies the staged files'
    owners, which are the builder's when it is not root)."""
    path.unlink(missing_ok=True)
    _run(["mke2fs", "-q", "-t", "ext2", "-F", "-L", label, "-m", "0", "-E", "root_owner=0:0",
          "-d", str(stage), str(path), f"{size_mib}M"])
    not_root = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.lstat().st_uid != 0
                      or p.lstat().st_gid != 0)
    if not_root:
        chown_to_root(path, not_root, work=work)


def chown_to_root(image: Path, names: Iterable[str], *, work: Path) -> None:
    """Make NAMES (paths in the ext2 IMAGE) owned by root with debugfs: `mke2fs -d` copies
    the staged files' owners, which are the builder's when it is not root."""
    script = work / "chown.debugfs"
    script.write_text("".join(f'sif "/{n}" uid 0\nsif "/{n}" gid 0\n' for n in names))
    result = _run(["debugfs", "-w", "-f", str(script), str(image)])
    errors = [line for line in result.stderr.decode(errors="replace").splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise DemoImageError(f"debugfs could not give {image.name} to root: {errors[0]}")


# ---------------------------------------------------------------------------------------
# the build


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _busybox(deb: Path) -> tuple[bytes, list[str]]:
    binary = None
    for _member, data in _deb_members(deb, lambda n: n == "bin/busybox"):
        binary = data
    if not binary:
        raise DemoImageError(f"no bin/busybox in {deb.name}")
    with tempfile.NamedTemporaryFile(prefix="busybox.", delete=False) as tmp:
        tmp.write(binary)
    try:
        os.chmod(tmp.name, 0o755)
        applets = _run([tmp.name, "--list"]).stdout.decode().split()
    finally:
        os.unlink(tmp.name)
    return binary, applets


def _stamp(packages: list[Package], settings: dict) -> str:
    h = hashlib.sha256()
    for p in packages:
        h.update(f"{p.name}={p.version}:{p.deb.name}\n".encode())
    for name in ("init", "udhcpc.script"):
        h.update(hashlib.sha256(guest_file(name)).digest())
    h.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def build_demo_image(outdir: Path, *, cache: Path | None = None, kernel_package: str = KERNEL_PACKAGE,
                     modules: Iterable[str] = MODULES, rootfs_mib: int = ROOTFS_MIB,
                     force: bool = False, offline: bool = False) -> DemoImage:
    """Build (or find up to date) the demo guest in OUTDIR. Files are replaced atomically,
    the manifest and then the stamp last, so an interrupted build is redone next time."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "mke2fs"):
        if shutil.which(tool) is None:
            raise DemoImageError(f"missing tool: {tool} (Debian: apt-get install apt dpkg e2fsprogs)")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else default_cache_dir()
    apt = AptFetcher(cache, offline=offline)
    kernel_pkg = apt.fetch(apt.resolve_kernel(kernel_package))
    busybox_pkg = apt.fetch(BUSYBOX_PACKAGE)
    modules = tuple(modules)
    settings = {"modules": list(modules), "rootfs_mib": rootfs_mib, "label": ROOTFS_LABEL, "cmdline": CMDLINE}
    stamp = _stamp([kernel_pkg, busybox_pkg], settings)
    stamp_path = outdir / ".stamp"
    manifest_path = outdir / "manifest.json"
    if (not force and stamp_path.is_file() and stamp_path.read_text().strip() == stamp
            and manifest_path.is_file() and all((outdir / f).is_file() for f in IMAGE_FILES)):
        log.info("up to date: %s", outdir)
        return DemoImage(outdir, json.loads(manifest_path.read_text()), rebuilt=False)

    stamp_path.unlink(missing_ok=True)
    log.info("building from %s and %s", kernel_pkg.deb.name, busybox_pkg.deb.name)
    kernel = read_kernel(kernel_pkg.deb)
    order = module_load_order(kernel, modules)
    busybox, applets = _busybox(busybox_pkg.deb)
    with tempfile.TemporaryDirectory(prefix="demo-image.", dir=outdir) as tmp:
        work = Path(tmp)
        (work / "vmlinuz").write_bytes(kernel.vmlinuz)
        initrd_tree = guest_tree(busybox, applets, stage="initrd",
                                 modules={m: kernel.modules[m] for m in order})
        write_initrd(initrd_tree, work / "initrd.img")
        write_rootfs(guest_tree(busybox, applets, stage="rootfs"), work / "rootfs.img",
                     size_mib=rootfs_mib, label=ROOTFS_LABEL, work=work)
        for name in IMAGE_FILES:
            os.replace(work / name, outdir / name)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kernel_release": kernel.release,
        "cmdline": CMDLINE,
        "rootfs_label": ROOTFS_LABEL,
        "modules": order,
        "packages": [{"name": p.name, "version": p.version, "deb": p.deb.name,
                      "size": p.deb.stat().st_size, "sha256": _sha256_file(p.deb)}
                     for p in (kernel_pkg, busybox_pkg)],
        "files": {name: {"size": (outdir / name).stat().st_size, "sha256": _sha256_file(outdir / name)}
                  for name in IMAGE_FILES},
    }
    tmp_manifest = outdir / ".manifest.json.new"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_manifest, manifest_path)
    stamp_path.write_text(stamp + "\n")
    return DemoImage(outdir, manifest, rebuilt=True)


# ---------------------------------------------------------------------------------------
# the command


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo-image", help="build a tiny demo guest (kernel, ramdisk, root disk) from Debian packages",
        description="Build a tiny x86_64 guest from Debian packages (linux-image-cloud-amd64, "
                    "busybox-static) fetched with apt-get download: OUTDIR/vmlinuz, "
                    "OUTDIR/initrd.img, OUTDIR/rootfs.img and OUTDIR/manifest.json. The guest "
                    "reads its instance id, public key and user-data from the metadata service "
                    "and prints EUCALYPT-GUEST-READY on the serial console. Nothing is rebuilt "
                    "when OUTDIR is up to date.")
    p.add_argument("outdir", type=Path, metavar="OUTDIR")
    p.add_argument("--cache", type=Path,
                   help="where downloaded packages are kept [$EUCALYPT_CACHE or ~/.cache/eucalypt/demo-image]")
    p.add_argument("--kernel-package", default=KERNEL_PACKAGE, help=f"kernel (meta)package [{KERNEL_PACKAGE}]")
    p.add_argument("--rootfs-mib", type=int, default=ROOTFS_MIB, help=f"root disk size [{ROOTFS_MIB}]")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--offline", action="store_true", help="use only packages already in the cache")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_demo_image)


def _run_demo_image(args) -> int:
    try:
        image = build_demo_image(args.outdir, cache=args.cache, kernel_package=args.kernel_package,
                                 rootfs_mib=args.rootfs_mib, force=args.force, offline=args.offline)
    except DemoImageError as exc:
        print(f"eucalypt demo-image: {exc}", file=sys.stderr)
        return 1
    m = image.manifest
    print(f"demo-image: {'built' if image.rebuilt else 'up to date'}: {image.outdir.resolve()}")
    for p in m["packages"]:
        print(f"demo-image:   {p['name']} {p['version']}")
    for name, f in m["files"].items():
        print(f"demo-image:   {name:11} {f['size']:>10} bytes  sha256 {f['sha256']}")
    print(f"demo-image:   kernel command line: {m['cmdline']}")
    return 0
