#!/usr/bin/env python3
"""Bundle and unbundle throughput of bundletools against the shell pipeline, same file, same run.

    .venv/bin/python bench/bundle_bench.py [--size-mib 1024] [--json]

The image is a mix meant to look like a disk: 40% incompressible bytes, 30% low-entropy
bytes (gzip halves them), 30% zeros, in 1 MiB stripes. References, timed on the same
file in the same run:
  bundle:   tar c FILE | gzip -1 | openssl enc -aes-128-cbc -K .. -iv ..  > payload
  unbundle: cat parts | openssl enc -d -aes-128-cbc .. | gunzip | tar x -O > image
Our bundler and reader run in child processes so their peak RSS (wait4) is their own.
Work files live in a temp dir that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
LOW_ENTROPY = bytes.maketrans(bytes(range(256)), bytes(b & 0x0F for b in range(256)))

CHILD_BUNDLE = """
import sys
from bundletools import keys
from bundletools.writer import BundleSpec, bundle_image
image, dest, cert = sys.argv[1:4]
c = keys.load_certificate(cert)
pk = keys.load_private_key(sys.argv[4])
bundle_image(image, dest, BundleSpec(user="123456789012", prefix="bench.img"), cloud_cert=c, user_cert=c, private_key=pk)
"""

CHILD_UNBUNDLE = """
import sys
from bundletools import keys, reader
manifest, dest, pk = sys.argv[1:4]
reader.unbundle(manifest, dest, keys.load_private_key(pk), fsync=sys.argv[4] == "fsync")
"""


def make_image(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        for i in range(size_mib):
            kind = i % 10
            if kind < 4:
                f.write(os.urandom(MIB))
            elif kind < 7:
                f.write(os.urandom(MIB).translate(LOW_ENTROPY))
            else:
                f.write(bytes(MIB))


def make_keys(work: Path) -> tuple[Path, Path]:
    pk, cert = work / "pk.pem", work / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pk, "-out", cert,
                    "-days", "1", "-subj", "/CN=bench"], check=True, capture_output=True)
    return pk, cert


def timed_shell(cmd: str, cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True)
    return time.perf_counter() - t


def timed_child(code: str, *args) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of a python child running `code`."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bundle-tools'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"benchmark child failed with status {proc.returncode}")
    return elapsed, usage.ru_maxrss * 1024


def run(size_mib: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    try:
        image = work / "bench.img"
        make_image(image, size_mib)
        pk, cert = make_keys(work)
        key = os.urandom(16).hex()
        iv = os.urandom(16).hex()
        subprocess.run(["cat", image], stdout=subprocess.DEVNULL, check=True)  # same warm cache for all

        ref_bundle = timed_shell(
            f"tar c bench.img | gzip -1 | openssl enc -e -aes-128-cbc -K {key} -iv {iv} > payload", work)
        ours_bundle, rss_bundle = timed_child(CHILD_BUNDLE, image, work / "bundle", cert, pk)
        (work / "payload").unlink()

        from bundletools import keys as bkeys, manifest as bmanifest  # noqa: E402

        m = bmanifest.parse((work / "bundle" / "bench.img.manifest.xml").read_bytes())
        private = bkeys.load_private_key(pk)
        k2 = bkeys.unwrap(private, m.ec2_encrypted_key)
        iv2 = bkeys.unwrap(private, m.ec2_encrypted_iv)
        parts = " ".join(f"bundle/{p.filename}" for p in m.parts)
        ref_unbundle = timed_shell(
            f"cat {parts} | openssl enc -d -aes-128-cbc -K {k2} -iv {iv2} | gunzip | tar x -O > ref.img", work)
        (work / "ref.img").unlink()
        # like for like: the reference does not fsync; the fsync'd figure is reported too
        ours_unbundle, rss_unbundle = timed_child(CHILD_UNBUNDLE, work / "bundle" / "bench.img.manifest.xml",
                                                  work / "out", pk, "no-fsync")
        shutil.rmtree(work / "out")
        ours_unbundle_fsync, _ = timed_child(CHILD_UNBUNDLE, work / "bundle" / "bench.img.manifest.xml",
                                             work / "out", pk, "fsync")
        if (work / "out" / "bench.img").stat().st_size != image.stat().st_size:
            raise SystemExit("unbundled image has the wrong size")
        mib = size_mib
        return {
            "size_mib": mib,
            "bundled_mib": round(m.bundled_size / MIB, 1),
            "bundle_s": round(ours_bundle, 2),
            "bundle_mib_s": round(mib / ours_bundle, 1),
            "ref_bundle_s": round(ref_bundle, 2),
            "ref_bundle_mib_s": round(mib / ref_bundle, 1),
            "bundle_ratio": round(ref_bundle / ours_bundle, 2),
            "bundle_peak_rss_mib": round(rss_bundle / MIB, 1),
            "unbundle_s": round(ours_unbundle, 2),
            "unbundle_mib_s": round(mib / ours_unbundle, 1),
            "ref_unbundle_s": round(ref_unbundle, 2),
            "ref_unbundle_mib_s": round(mib / ref_unbundle, 1),
            "unbundle_ratio": round(ref_unbundle / ours_unbundle, 2),
            "unbundle_ratio_vs_bundle_pipeline": round(ref_bundle / ours_unbundle, 2),
            "unbundle_peak_rss_mib": round(rss_unbundle / MIB, 1),
            "unbundle_fsync_s": round(ours_unbundle_fsync, 2),
            "unbundle_fsync_mib_s": round(mib / ours_unbundle_fsync, 1),
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    for tool in ("tar", "gzip", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}")
    sys.path.insert(0, str(ROOT / "bundle-tools"))
    r = run(args.size_mib)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"bundle-tools, {r['size_mib']} MiB image ({r['bundled_mib']} MiB bundled), {r['cpus']} CPUs")
    print(f"  bundle   {r['bundle_s']:7.2f} s {r['bundle_mib_s']:7.1f} MiB/s   "
          f"ratio {r['bundle_ratio']:.2f}x vs tar|gzip -1|openssl enc ({r['ref_bundle_mib_s']} MiB/s)   "
          f"peak RSS {r['bundle_peak_rss_mib']} MiB")
    print(f"  unbundle {r['unbundle_s']:7.2f} s {r['unbundle_mib_s']:7.1f} MiB/s   "
          f"ratio {r['unbundle_ratio']:.2f}x vs openssl enc -d|gunzip|tar x ({r['ref_unbundle_mib_s']} MiB/s), "
          f"{r['unbundle_ratio_vs_bundle_pipeline']:.2f}x vs the bundle pipeline   "
          f"peak RSS {r['unbundle_peak_rss_mib']} MiB")
    print(f"  unbundle with fsync of the image {r['unbundle_fsync_s']:.2f} s {r['unbundle_fsync_mib_s']} MiB/s "
          f"(the library default; the reference does not fsync)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
