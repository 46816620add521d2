"""The benchmark's targets: servers it starts on 127.0.0.1, drives and stops (by PID).

Every target exposes the same few things, so one load tool drives them all:

* ``put_url(key)`` / ``get_url(key)``: a path (with query) for a plain GET/PUT. S3 targets
  return SigV4 presigned URLs made up front with botocore, so the load tool signs nothing;
  nginx returns plain paths (WebDAV PUT for uploads).
* ``list_requests(prefix, keys)``: the requests that list every key once, and how many keys
  each returns (ListObjectsV2 pages of 1000 via ``start-after``; nginx: one JSON autoindex).
* ``multipart_begin/part_url/complete``: S3 multipart via boto3 + presigned UploadPart URLs;
  nginx stores each part as its own file (the native ceiling for moving the bytes).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
BUCKET = "bench"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_tree_kib(pid: int) -> int:
    """VmRSS of pid plus all its descendants, in KiB (0 if gone)."""
    total = 0
    todo = [pid]
    seen = set()
    while todo and len(seen) < 256:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the RSS of a server's process tree every 50 ms; peak per window."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.window_peak = self.peak = self.idle = rss_tree_kib(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_tree_kib(self.pid)
            self.window_peak = max(self.window_peak, r)
            self.peak = max(self.peak, r)

    def reset_window(self) -> None:
        self.window_peak = rss_tree_kib(self.pid)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=2)


@dataclass
class Target:
    name: str
    run_dir: Path
    kind: str = "s3"  # "s3" or "native"
    port: int = 0
    proc: subprocess.Popen | None = None
    sampler: RssSampler | None = None
    access_key: str = "bench"
    secret_key: str = "bench-secret"
    log: Path | None = None
    _client: object = field(default=None, repr=False)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    def prepare_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.prepare_dirs()
        cmd, env = self.command()
        self.log = self.run_dir / "server.log"
        logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, cwd=self.run_dir, start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        self.sampler = RssSampler(self.proc.pid)
        self.after_start()

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            urllib.request.urlopen(self.base + "/", timeout=2).read()
        except urllib.error.HTTPError:
            pass  # answered: 403 etc. is fine
        except OSError:
            return False
        return True

    def after_start(self) -> None:
        self.s3().create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        p = self.proc
        if p and p.poll() is None:
            # we started it in its own session: signal its process group (its workers too)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.proc = None

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    # -- requests -------------------------------------------------------------------
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.base, region_name=REGION,
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                              retries={"max_attempts": 1}, connect_timeout=10,
                              read_timeout=600, max_pool_connections=16),
            )
        return self._client

    def _presign(self, op: str, params: dict) -> str:
        url = self.s3().generate_presigned_url(op, Params=params, ExpiresIn=6 * 3600)
        assert url.startswith(self.base), url
        return url[len(self.base):]

    def get_url(self, key: str) -> str:
        return self._presign("get_object", {"Bucket": BUCKET, "Key": key})

    def put_url(self, key: str) -> str:
        return self._presign("put_object", {"Bucket": BUCKET, "Key": key})

    def list_requests(self, prefix: str, keys: list[str], page: int = 1000) -> list[tuple[str, int]]:
        keys = sorted(keys)
        out = []
        for i in range(0, len(keys), page):
            params = {"Bucket": BUCKET, "Prefix": prefix, "MaxKeys": page}
            if i:
                params["StartAfter"] = keys[i - 1]
            out.append((self._presign("list_objects_v2", params), len(keys[i:i + page])))
        return out

    def multipart_begin(self, key: str) -> str:
        return self.s3().create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    def part_url(self, key: str, upload_id: str, n: int) -> str:
        return self._presign("upload_part", {"Bucket": BUCKET, "Key": key,
                                             "UploadId": upload_id, "PartNumber": n})

    def multipart_complete(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        self.s3().complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                            MultipartUpload={"Parts": parts})

    def version(self) -> str:
        return ""


class Nginx(Target):
    """The native ceiling: nginx serving files (sendfile), WebDAV PUT for uploads.

    One worker by default: the S3 servers measured are single processes on a 2-core
    machine that also runs the load tool. No fsync on PUT (nginx has none)."""

    workers = 1

    def __init__(self, run_dir: Path):
        super().__init__("nginx", run_dir, kind="native")

    def command(self):
        root = self.run_dir / "root"
        (root / BUCKET).mkdir(parents=True, exist_ok=True)
        (root / ".tmp").mkdir(parents=True, exist_ok=True)
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = self.run_dir / "nginx.conf"
        conf.write_text(f"""
worker_processes {self.workers};
daemon off;
{user}
pid {self.run_dir}/nginx.pid;
error_log {self.run_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 120;
  client_max_body_size 0;
  client_body_buffer_size 128k;
  client_body_temp_path {root}/.tmp;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    root {root};
    location / {{
      dav_methods PUT DELETE;
      create_full_put_path on;
      dav_access user:rw;
      autoindex on;
      autoindex_format json;
    }}
  }}
}}
""")
        return ["nginx", "-e", str(self.run_dir / "error.log"), "-p", str(self.run_dir),
                "-c", str(conf)], {}

    def after_start(self) -> None:
        pass

    def get_url(self, key: str) -> str:
        return f"/{BUCKET}/{key}"

    put_url = get_url

    def list_requests(self, prefix, keys, page=1000):
        # nginx cannot page; one JSON autoindex of the directory returns every key.
        d = prefix.rstrip("/")
        return [(f"/{BUCKET}/{d}/", len(keys))]

    def multipart_begin(self, key):
        return "native"

    def part_url(self, key, upload_id, n):
        return f"/{BUCKET}/{key}.parts/{n:05d}"

    def multipart_complete(self, key, upload_id, etags):
        pass

    def version(self):
        r = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        return r.stderr.strip().split("/")[-1]


class Moto(Target):
    def __init__(self, run_dir: Path):
        super().__init__("moto", run_dir, access_key="testing", secret_key="testing")

    def command(self):
        exe = WORK / "moto-venv" / "bin" / "moto_server"
        return [str(exe), "-H", "127.0.0.1", "-p", str(self.port)], {}

    def version(self):
        r = subprocess.run([str(WORK / "moto-venv/bin/python"), "-c",
                            "import moto; print(moto.__version__)"], capture_output=True, text=True)
        return r.stdout.strip()


def node_major() -> int:
    try:
        v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        return int(v.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError):
        return 0


class S3rver(Target):
    def __init__(self, run_dir: Path):
        super().__init__("s3rver", run_dir, access_key="S3RVER", secret_key="S3RVER")

    def command(self):
        js = WORK / "node" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
        data = self.run_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {}
        if node_major() >= 17:  # s3rver 3's signing needs the legacy OpenSSL provider there
            env["NODE_OPTIONS"] = (os.environ.get("NODE_OPTIONS", "") +
                                   " --openssl-legacy-provider").strip()
        return ["node", str(js), "-d", str(data), "-a", "127.0.0.1", "-p", str(self.port),
                "--silent", "--no-vhost-buckets"], env

    def version(self):
        import json
        p = WORK / "node" / "node_modules" / "s3rver" / "package.json"
        return json.loads(p.read_text())["version"]


def walrus_exe() -> Path:
    return REPO / ".venv" / "bin" / "eucalypt"


def walrus_available() -> tuple[bool, str]:
    exe = walrus_exe()
    if not exe.exists():
        return False, f"{exe} missing"
    try:
        r = subprocess.run([str(exe), "walrus", "--help"], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        return False, "`eucalypt walrus --help` timed out"
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return False, lines[-1] if lines else f"rc={r.returncode}"
    return True, ""


class Walrus(Target):
    def __init__(self, run_dir: Path):
        super().__init__("walrus", run_dir, access_key="BENCH" + secrets.token_hex(8).upper(),
                         secret_key=secrets.token_urlsafe(30))

    def command(self):
        data = self.run_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        users = self.run_dir / "users.toml"
        users.write_text(f'[[user]]\nname = "bench"\naccess_key = "{self.access_key}"\n'
                         f'secret_key = "{self.secret_key}"\n')
        users.chmod(0o600)
        return [str(walrus_exe()), "walrus", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data), "--users", str(users)], {}

    def version(self):
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
        return "git " + r.stdout.strip()


TARGETS = {"nginx": Nginx, "moto": Moto, "s3rver": S3rver, "walrus": Walrus}
