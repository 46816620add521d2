"""The demo image's parts (eucalypt.demoimage) and the host setup's file edits
(node.hostsetup), checked with the real tools: GNU cpio reads our newc archives, debugfs
reads the root disk, busybox checks the guest scripts. The full build (which downloads
the Debian packages once) is marked e2e; the rest runs anywhere."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eucalypt.demoimage import (
    MODULES,
    DemoImage,
    KernelParts,
    NewcArchive,
    build_demo_image,
    guest_file,
    module_depends,
    module_load_order,
)
from node.hostsetup import (
    HostChoice,
    capability_domain_types,
    choose_hypervisor,
    configure_qemu_conf,
)


def _cpio(archive: bytes, *args: str) -> str:
    return subprocess.run(["cpio", *args], input=archive, capture_output=True, check=True).stdout.decode()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed (make apt)")
def test_newc_archive_reads_back_with_gnu_cpio():
    buf = io.BytesIO()
    a = NewcArchive(buf)
    a.directory("bin")
    a.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    a.symlink("bin/sh", "hello")
    a.directory("dev")
    a.chardev("dev/console", 5, 1)
    a.file("odd-length-name", b"x" * 5)
    a.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    listing = _cpio(data, "-itv", "--quiet").splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing] == \
        ["bin", "bin/hello", "bin/sh", "dev", "dev/console", "odd-length-name"]
    modes = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()[0] for line in listing}
    assert modes == {"bin": "drwxr-xr-x", "bin/hello": "-rwxr-xr-x", "bin/sh": "lrwxrwxrwx",
                     "dev": "drwxr-xr-x", "dev/console": "crw-------", "odd-length-name": "-rw-r--r--"}
    assert "bin/sh -> hello" in "\n".join(listing)
    assert all(" root " in line for line in listing)
    assert "5,   1" in next(line for line in listing if "dev/console" in line)
    assert _cpio(data, "-i", "--quiet", "--to-stdout", "bin/hello") == "#!/bin/sh\necho hi\n"
    assert _cpio(data, "-i", "--quiet", "--to-stdout", "odd-length-name") == "xxxxx"


def test_module_depends_reads_modinfo():
    ko = b"\x7fELF....\x00license=GPL\x00depends=virtio_ring,virtio\x00retpoline=Y\x00name=virtio_pci\x00"
    assert module_depends(ko) == ["virtio_ring", "virtio"]
    assert module_depends(b"\x00depends=\x00name=virtio_ring\x00") == []
    assert module_depends(b"\x00name=x\x00") == []


def test_module_load_order_puts_dependencies_first_and_skips_builtins():
    k = KernelParts("6.1.0-test", b"", modules={m: b"" for m in ("a", "b", "c", "virtio_net")},
                    depends={"a": ["b"], "b": ["c"], "c": [], "virtio_net": ["c"]}, builtin={"ext4"})
    assert module_load_order(k, ["a", "ext4", "virtio-net"]) == ["c", "b", "a", "virtio_net"]
    with pytest.raises(Exception, match="no module nope"):
        module_load_order(k, ["nope"])


def test_qemu_conf_edit_is_idempotent_and_keeps_a_backup(tmp_path):
    conf = tmp_path / "qemu.conf"
    original = '# Some comment\n#user = "root"\n#group = "root"\nvnc_listen = "0.0.0.0"\n'
    conf.write_text(original)
    assert configure_qemu_conf(conf) is True
    text = conf.read_text()
    assert 'user = "root"' in text.splitlines() and 'group = "root"' in text.splitlines()
    assert 'vnc_listen = "0.0.0.0"' in text.splitlines()
    assert (tmp_path / "qemu.conf.eucalypt-orig").read_text() == original
    assert configure_qemu_conf(conf) is False and conf.read_text() == text

    conf.write_text('user = "libvirt-qemu"\ngroup = "root"\n')
    assert configure_qemu_conf(conf) is True
    lines = conf.read_text().splitlines()
    assert lines.count('user = "root"') == 1 and lines.count('group = "root"') == 1
    assert '# eucalypt: was: user = "libvirt-qemu"' in lines
    assert (tmp_path / "qemu.conf.eucalypt-orig").read_text() == original   # the first backup stays


def test_choose_hypervisor_passes_test_uris_through():
    lines = []
    assert choose_hypervisor("test:///default", install=False, log=lines.append) == \
        HostChoice("test:///default", None, None)
    assert lines == []


def test_choose_hypervisor_falls_back_with_the_reason(tmp_path):
    """A URI that cannot work falls back to the test driver, saying why."""
    lines = []
    choice = choose_hypervisor("qemu+unix:///system?socket=/nonexistent/sock", install=False,
                               log=lines.append, state_dir=tmp_path)
    assert choice.uri == "test:///default" and choice.domain_type is None
    assert "qemu+unix:///system?socket=/nonexistent/sock" in choice.warning and "falling back" in choice.warning
    assert lines == [choice.warning]


def test_capability_domain_types():
    caps = """<capabilities><host/>
      <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest>
      <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
    </capabilities>"""
    assert capability_domain_types(caps) == {"qemu", "kvm"}
    assert capability_domain_types(caps, "aarch64") == set()


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, check=True).stdout.decode(
        errors="replace")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("debugfs") is None,
                    reason="needs a Debian host (apt-get, dpkg-deb, e2fsprogs)")
def test_build_demo_image(tmp_path):
    out = tmp_path / "image"
    image = build_demo_image(out)
    assert isinstance(image, DemoImage) and image.rebuilt
    m = json.loads((out / "manifest.json").read_text())
    assert m == image.manifest and m["format"] == 1
    assert m["cmdline"] == "console=ttyS0 root=/dev/vda rw quiet"
    assert [p["name"] for p in m["packages"]][1] == "busybox-static"
    assert m["packages"][0]["name"].startswith("linux-image-")
    for name in ("vmlinuz", "initrd.img", "rootfs.img"):
        assert m["files"][name] == {"size": (out / name).stat().st_size, "sha256": _sha256(out / name)}
    # the cloud kernel has ext4, crc32c and af_packet built in: only the rest are modules
    assert {"virtio_pci", "virtio_blk", "virtio_net", "button", "evdev"} <= set(m["modules"]) <= \
        set(MODULES) | {"virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                        "failover", "net_failover", "crc32c_generic", "libcrc32c", "jbd2", "mbcache", "crc16"}

    # the ramdisk: /init, the modules in load order, a console device, busybox applets
    initrd = gzip.decompress((out / "initrd.img").read_bytes())
    listing = _cpio(initrd, "-it", "--quiet").split()
    assert {"init", "bin/busybox", "bin/sh", "bin/udhcpc", "bin/switch_root", "dev/console",
            "etc/udhcpc.script"} <= set(listing)
    assert _cpio(initrd, "-i", "--quiet", "--to-stdout", "init") == guest_file("init").decode()
    order = _cpio(initrd, "-i", "--quiet", "--to-stdout", "etc/eucalypt-modules").split()
    assert order == m["modules"] and {f"lib/modules/{mod}.ko" for mod in order} <= set(listing)
    assert order.index("virtio_ring") < order.index("virtio_pci") < order.index("virtio_blk")

    # the root disk: ext2 labelled eucaroot with /sbin/init and busybox
    rootfs = out / "rootfs.img"
    assert "Filesystem volume name:   eucaroot" in subprocess.run(
        ["dumpe2fs", "-h", str(rootfs)], capture_output=True, check=True).stdout.decode()
    assert _debugfs(rootfs, "cat /sbin/init") == guest_file("init").decode()
    assert "busybox" in _debugfs(rootfs, "ls -l /bin")
    assert "eucalypt-rootfs" in _debugfs(rootfs, "ls /etc")

    # the guest scripts parse with the guest's own shell
    busybox = tmp_path / "busybox"
    subprocess.run(["debugfs", "-R", f"dump /bin/busybox {busybox}", str(rootfs)], capture_output=True, check=True)
    busybox.chmod(0o755)
    for script in ("init", "udhcpc.script"):
        path = tmp_path / script
        path.write_bytes(guest_file(script))
        subprocess.run([str(busybox), "sh", "-n", str(path)], check=True)

    # idempotent: a second build changes nothing
    mtimes = {name: os.stat(out / name).st_mtime_ns for name in ("vmlinuz", "initrd.img", "rootfs.img")}
    again = build_demo_image(out)
    assert not again.rebuilt and again.manifest == m
    assert mtimes == {name: os.stat(out / name).st_mtime_ns for name in mtimes}
    cli = subprocess.run([sys.executable, "-m", "eucalypt.cli", "demo-image", str(out)], capture_output=True,
                         text=True, check=True)
    assert f"demo-image: up to date: {out}" in cli.stdout and m["cmdline"] in cli.stdout
    assert mtimes == {name: os.stat(out / name).st_mtime_ns for name in mtimes}
    # offline, from the cache: the same packages, a byte-identical ramdisk
    offline = build_demo_image(tmp_path / "offline", offline=True)
    assert [p["version"] for p in offline.manifest["packages"]] == [p["version"] for p in m["packages"]]
    assert offline.manifest["files"]["initrd.img"] == m["files"]["initrd.img"]
    assert offline.manifest["files"]["vmlinuz"] == m["files"]["vmlinuz"]


def test_stop_started_daemons_stops_only_what_was_recorded(tmp_path):
    """By PID *and* start time: a recorded PID that now names another process is left alone."""
    from node.hostsetup import _proc_start_time, stop_started_daemons
    ours = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        entries = [{"name": "sleep", "pid": ours.pid, "start_time": _proc_start_time(ours.pid), "netns": None},
                   {"name": "sleep", "pid": other.pid, "start_time": _proc_start_time(other.pid) + 1, "netns": None}]
        (tmp_path / "hostsetup-daemons.json").write_text(json.dumps(entries))
        assert stop_started_daemons(tmp_path) == ["sleep"]
        assert ours.wait(5) is not None
        assert other.poll() is None
        assert not (tmp_path / "hostsetup-daemons.json").exists()
        assert stop_started_daemons(tmp_path) == []
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("debugfs") is None,
                    reason="needs root (to stage files owned by someone else) and debugfs")
def test_rootfs_files_belong_to_root_whoever_built_it(tmp_path):
    """mke2fs -d copies the staged files' owners; a non-root build would give the guest's
    files to the builder's uid. Staged here as uid 1234, the image must still say 0."""
    from eucalypt.demoimage import Entry, make_ext2, stage_tree
    tree = {"bin": Entry("dir"), "bin/busybox": Entry("file", 0o755, b"\x7fELF"),
            "bin/sh": Entry("symlink", target="busybox"), "etc": Entry("dir"),
            "etc/passwd": Entry("file", 0o644, b"root:x:0:0::/root:/bin/sh\n")}
    stage, image = tmp_path / "stage", tmp_path / "root.img"
    stage_tree(tree, stage)
    for p in stage.rglob("*"):
        os.lchown(p, 1234, 1234)
    make_ext2(stage, image, size_mib=4, label="t", work=tmp_path)
    for name in ("/bin", "/bin/busybox", "/bin/sh", "/etc/passwd"):
        stat_text = _debugfs(image, f"stat {name}")
        assert "User:     0   Group:     0" in stat_text, (name, stat_text[:300])
    assert "Type: symlink" in _debugfs(image, "stat /bin/sh")  # the link itself, not its target
