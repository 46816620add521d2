"""Walrus benchmark: Walrus against a native ceiling (nginx) and two peers (moto, s3rver).

    .venv/bin/python bench/run.py                       # everything (~10 min)
    .venv/bin/python bench/run.py --quick               # smoke run, small sizes (~2 min)
    .venv/bin/python bench/run.py --only walrus,nginx --workloads small-get,large-get

All targets run in the same process tree, on 127.0.0.1, measured in the same run with the
same load tools (wrk for small objects and listing, curl for large bodies), with the
repetitions interleaved across targets so machine noise hits all of them alike. See
bench/README.md for what each figure means and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import MiB, LoadError, curl_get, curl_put, data_file, fetch, parallel, populate, wrk  # noqa: E402
import profiling  # noqa: E402
from servers import BENCH, BUCKET, REPO, TARGETS, WORK, Nginx, Target, vm_hwm_kib, walrus_available  # noqa: E402

GiB = 1 << 30


@dataclass
class Sizes:
    big: int = 256 * MiB
    par_n: int = 8
    par: int = 64 * MiB
    small: int = 4096
    small_keys: int = 2000
    small_conns: int = 64
    small_secs: float = 5
    list_keys: int = 10000
    list_secs: float = 5
    mpu: int = 512 * MiB
    mpu_part: int = 8 * MiB
    mpu_width: int = 4
    reps: int = 3
    rss: int = 4 * GiB
    bundle_mib: int = 1024


QUICK = Sizes(big=32 * MiB, par=8 * MiB, small_keys=500, small_secs=2, list_keys=2000,
              list_secs=2, mpu=64 * MiB, reps=1, rss=0, bundle_mib=64)

WORKLOADS = ["large-put", "large-put-8", "large-get", "large-get-8", "multipart",
             "small-put", "small-get", "list", "rss-4g", "bundle"]

# (workload, reference, minimum ratio candidate/reference)
TARGETS_RATIO = [
    ("large-get", "nginx", 0.5), ("large-get-8", "nginx", 0.5),
    ("large-put", "nginx", 0.4), ("large-put", "s3rver", 1.5),
    ("large-put-8", "nginx", 0.4), ("large-put-8", "s3rver", 1.5),
    ("small-get", "s3rver", 2.0), ("small-get", "moto", 10.0),
    ("small-put", "s3rver", 1.5),
]
RSS_LIMIT_MIB = 300


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- workloads: prepare (untimed, once per target) and measure (one repetition) ---------
class Bench:
    def __init__(self, sz: Sizes):
        self.sz = sz

    def make_data(self, workloads: list[str], extra_rep: bool, rss: bool) -> None:
        """Write every data file up front (kept in bench/.work/data for later runs), so no
        measurement pays for generating its bytes or flushing them. PUT workloads get
        distinct bytes per repetition (and one more set for a --profile pass)."""
        sz, want = self.sz, []
        reps = sz.reps + (1 if extra_rep else 0)
        if "large-get" in workloads:
            want.append(("get-big", sz.big))
        if "large-put" in workloads:
            want += [(f"put-big-{r}", sz.big) for r in range(reps)]
        if "large-get-8" in workloads:
            want += [(f"get-par-{i}", sz.par) for i in range(sz.par_n)]
        if "large-put-8" in workloads:
            want += [(f"put-par-{r}-{i}", sz.par) for r in range(reps) for i in range(sz.par_n)]
        if "multipart" in workloads:
            want += [(f"mpu-{r}-{i:03d}", sz.mpu_part) for r in range(reps)
                     for i in range(sz.mpu // sz.mpu_part)]
        if "small-put" in workloads:
            want.append(("small-4k", sz.small))
        if "rss-4g" in workloads and sz.rss and rss:
            want.append(("rss-4g", sz.rss))
        total = sum(n for _, n in want)
        log(f"data: {len(want)} files, {total / GiB:.1f} GiB in {WORK / 'data'}")
        for name, n in want:
            data_file(name, n)
        os.sync()

    # large single stream
    def prep_large_get(self, t: Target):
        curl_put(t.base, t.put_url("big/get"), data_file("get-big", self.sz.big))

    def run_large_get(self, t: Target, rep: int):
        r = curl_get(t.base, t.get_url("big/get"), self.sz.big)
        return {"value": self.sz.big / r["time"], "unit": "B/s", "seconds": r["time"]}

    def run_large_put(self, t: Target, rep: int):
        f = data_file(f"put-big-{rep}", self.sz.big)  # distinct bytes per repetition: no dedupe
        r = curl_put(t.base, t.put_url("big/put"), f)
        return {"value": self.sz.big / r["time"], "unit": "B/s", "seconds": r["time"]}

    # large, 8 concurrent streams
    def prep_large_get_8(self, t: Target):
        for i in range(self.sz.par_n):
            curl_put(t.base, t.put_url(f"par/get-{i}"), data_file(f"get-par-{i}", self.sz.par))

    def run_large_get_8(self, t: Target, rep: int):
        urls = [t.get_url(f"par/get-{i}") for i in range(self.sz.par_n)]
        wall, _ = parallel([lambda u=u: curl_get(t.base, u, self.sz.par) for u in urls],
                           self.sz.par_n)
        total = self.sz.par * self.sz.par_n
        return {"value": total / wall, "unit": "B/s", "seconds": wall}

    def run_large_put_8(self, t: Target, rep: int):
        jobs = []
        for i in range(self.sz.par_n):
            f = data_file(f"put-par-{rep}-{i}", self.sz.par)
            u = t.put_url(f"par/put-{i}")
            jobs.append(lambda u=u, f=f: curl_put(t.base, u, f))
        wall, _ = parallel(jobs, self.sz.par_n)
        total = self.sz.par * self.sz.par_n
        return {"value": total / wall, "unit": "B/s", "seconds": wall}

    # multipart: create (boto3) + parts (presigned, curl, 4 at a time) + complete (boto3)
    def run_multipart(self, t: Target, rep: int):
        n = self.sz.mpu // self.sz.mpu_part
        files = [data_file(f"mpu-{rep}-{i:03d}", self.sz.mpu_part) for i in range(n)]
        key = "mpu/obj"
        t0 = time.perf_counter()
        uid = t.multipart_begin(key)
        urls = [t.part_url(key, uid, i + 1) for i in range(n)]  # presigning ~0.2 ms each
        _, res = parallel([lambda u=u, f=f: curl_put(t.base, u, f) for u, f in zip(urls, files)],
                          self.sz.mpu_width)
        t.multipart_complete(key, uid, [r["etag"] for r in res])
        wall = time.perf_counter() - t0
        if t.kind == "s3":
            size = t.s3().head_object(Bucket=BUCKET, Key=key)["ContentLength"]
            if size != self.sz.mpu:
                raise LoadError(f"completed multipart object has {size} bytes, not {self.sz.mpu}")
        return {"value": self.sz.mpu / wall, "unit": "B/s", "seconds": wall, "parts": n}

    # small objects, wrk at concurrency 64
    def _small_keys(self):
        return [f"small/{i:05d}" for i in range(self.sz.small_keys)]

    def run_small_put(self, t: Target, rep: int):
        paths = [t.put_url(k) for k in self._small_keys()]
        body = data_file("small-4k", self.sz.small)
        s = wrk(t.base, "PUT", paths, connections=self.sz.small_conns, seconds=self.sz.small_secs,
                body=body)
        return self._wrk_result(s, "ops/s")

    def prep_small_get(self, t: Target):
        keys = self._small_keys()
        populate(t.base, [(t.put_url(k), os.urandom(self.sz.small)) for k in keys])
        code, body = fetch(t.base, t.get_url(keys[0]))
        if code != 200 or len(body) != self.sz.small:
            raise LoadError(f"small GET check: HTTP {code}, {len(body)} bytes")

    def run_small_get(self, t: Target, rep: int):
        paths = [t.get_url(k) for k in self._small_keys()]
        s = wrk(t.base, "GET", paths, connections=self.sz.small_conns, seconds=self.sz.small_secs)
        return self._wrk_result(s, "ops/s", min_body=self.sz.small)

    # ListObjectsV2 over 10k keys, one client, pages of 1000 (start-after precomputed)
    def _list_keys(self):
        return [f"list/k{i:05d}" for i in range(self.sz.list_keys)]

    def prep_list(self, t: Target):
        keys = self._list_keys()
        populate(t.base, [(t.put_url(k), b"%016d" % i) for i, k in enumerate(keys)], concurrency=32)
        reqs = t.list_requests("list/", keys)
        for path, expect in (reqs[0], reqs[-1]):
            code, body = fetch(t.base, path)
            got = (len(json.loads(body)) if t.kind == "native"
                   else len(re.findall(rb"<Key>", body)))
            if code != 200 or got != expect:
                raise LoadError(f"list check: HTTP {code}, {got} keys, expected {expect}")

    def run_list(self, t: Target, rep: int):
        reqs = t.list_requests("list/", self._list_keys())
        per_req = sum(n for _, n in reqs) / len(reqs)
        s = wrk(t.base, "GET", [p for p, _ in reqs], connections=1, seconds=self.sz.list_secs,
                timeout_s=60)
        out = self._wrk_result(s, "keys/s", scale=per_req)
        out["listing_ms"] = 1000 * self.sz.list_keys / out["value"] if out["value"] else None
        return out

    def _wrk_result(self, s: dict, unit: str, scale: float = 1.0, min_body: int = 0):
        if s["requests"] == 0:
            raise LoadError("wrk completed no request")
        if s["bytes"] / s["requests"] < min_body:  # responses must carry the object
            raise LoadError(f"wrk: {s['bytes'] / s['requests']:.0f} bytes a response, "
                            f"expected >= {min_body}")
        bad = s["errors"] / max(1, s["requests"])
        if bad > 0.01:
            raise LoadError(f"wrk: {s['errors']} errors in {s['requests']} requests "
                            f"(status {s['err_status']}, timeout {s['err_timeout']})")
        return {"value": s["rps"] * scale, "unit": unit, "requests": s["requests"],
                "errors": s["errors"], "p50_ms": s["lat_p50_us"] / 1000,
                "p99_ms": s["lat_p99_us"] / 1000}

    # server memory while streaming a 4 GiB object (walrus only; not in --quick)
    def run_rss_4g(self, t: Target, rep: int):
        f = data_file("rss-4g", self.sz.rss)
        t.sampler.reset_window()
        put = curl_put(t.base, t.put_url("rss/4g"), f, timeout=1800)
        put_peak = t.sampler.window_peak
        t.sampler.reset_window()
        get = curl_get(t.base, t.get_url("rss/4g"), self.sz.rss, timeout=1800)
        get_peak = t.sampler.window_peak
        return {"value": max(put_peak, get_peak) / 1024, "unit": "MiB",
                "put_peak_mib": put_peak / 1024, "get_peak_mib": get_peak / 1024,
                "put_Bps": self.sz.rss / put["time"], "get_Bps": self.sz.rss / get["time"]}


# -- reporting -------------------------------------------------------------------------
def fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "B/s":
        return f"{v / 1e9:.2f} GB/s" if v >= 1e8 else f"{v / 1e6:.0f} MB/s"
    if unit in ("ops/s", "keys/s"):
        return f"{v / 1000:.1f}k/s" if v >= 10000 else f"{v:.0f}/s"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v:.3g} {unit}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


LABELS = {
    "large-put": "PUT 1x256 MiB", "large-put-8": "PUT 8x64 MiB concurrent",
    "large-get": "GET 1x256 MiB", "large-get-8": "GET 8x64 MiB concurrent",
    "multipart": "multipart 512 MiB, 8 MiB parts", "small-put": "PUT 4 KiB, c=64",
    "small-get": "GET 4 KiB, c=64", "list": "ListObjectsV2 10k keys", "rss-4g": "RSS streaming 4 GiB",
}


def report(results: dict, order: list[str], workloads: list[str], cand: str, sz: Sizes) -> dict:
    labels = dict(LABELS)
    labels["large-put"] = f"PUT 1x{sz.big // MiB} MiB"
    labels["large-get"] = f"GET 1x{sz.big // MiB} MiB"
    labels["large-put-8"] = f"PUT {sz.par_n}x{sz.par // MiB} MiB concurrent"
    labels["large-get-8"] = f"GET {sz.par_n}x{sz.par // MiB} MiB concurrent"
    labels["multipart"] = f"multipart {sz.mpu // MiB} MiB, {sz.mpu_part // MiB} MiB parts"
    labels["list"] = f"ListObjectsV2 {sz.list_keys // 1000}k keys"
    refs = [r for r in ("nginx", "s3rver", "moto") if r in order and r != cand]
    have_cand = cand in order
    head = ["workload"] + order + ([f"{cand}/{r}" for r in refs] if have_cand else [])
    rows = [head]
    for w in workloads:
        if w in ("bundle",):
            continue
        row = [labels.get(w, w)]
        for t in order:
            m = results.get(t, {}).get(w)
            row.append("err" if m and "error" in m else fmt(m and m.get("value"), (m or {}).get("unit", "")))
        if have_cand:
            c = results.get(cand, {}).get(w, {})
            for r in refs:
                m = results.get(r, {}).get(w, {})
                if w != "rss-4g" and c.get("value") and m.get("value"):
                    row.append(f"{c['value'] / m['value']:.2f}x")
                else:
                    row.append("-")
        if any(c not in ("-",) for c in row[1:]):
            rows.append(row)
    print()
    print(f"== figures (median of {sz.reps} repetitions, large GETs of {max(sz.reps, 5) if sz.reps > 1 else 1}; "
          "B/s in decimal GB/MB) ==")
    print(table(rows))

    # server memory: peak RSS of each server's process tree per workload
    mrows = [["peak RSS (MiB)"] + order]
    for w in workloads:
        if w in ("bundle", "rss-4g"):
            continue
        row = [labels.get(w, w)]
        for t in order:
            m = results.get(t, {}).get(w, {})
            row.append(f"{m['rss_peak_mib']:.0f}" if m.get("rss_peak_mib") is not None else "-")
        if any(c != "-" for c in row[1:]):
            mrows.append(row)
    if len(mrows) > 1:
        print()
        print("== server memory: peak RSS of the process tree during each workload ==")
        print(table(mrows))

    checks = []
    if have_cand:
        for w, ref, need in TARGETS_RATIO:
            if w not in workloads or ref not in order or ref == cand:
                continue
            c = results.get(cand, {}).get(w, {})
            m = results.get(ref, {}).get(w, {})
            if c.get("value") and m.get("value"):
                ratio = c["value"] / m["value"]
                checks.append({"workload": w, "reference": ref, "ratio": ratio, "need": need,
                               "ok": ratio >= need})
            else:
                checks.append({"workload": w, "reference": ref, "ratio": None, "need": need,
                               "ok": False, "note": "not measured"})
        if "rss-4g" in workloads:
            m = results.get(cand, {}).get("rss-4g", {})
            if m.get("value") is not None:
                checks.append({"workload": "rss-4g", "reference": "absolute", "value_mib": m["value"],
                               "need": f"< {RSS_LIMIT_MIB} MiB", "ok": m["value"] < RSS_LIMIT_MIB})
            elif sz.rss:
                checks.append({"workload": "rss-4g", "reference": "absolute", "ok": False,
                               "need": f"< {RSS_LIMIT_MIB} MiB", "note": "not measured"})
        print()
        print(f"== targets for {cand} (durability on) ==")
        for c in checks:
            mark = "\u2714" if c["ok"] else "\u2718"
            if c["reference"] == "absolute":
                v = f"{c['value_mib']:.0f} MiB" if "value_mib" in c else "not measured"
                print(f"  {mark} {labels.get(c['workload'], c['workload'])}: {v} (need {c['need']})")
            else:
                v = f"{c['ratio']:.2f}x" if c["ratio"] is not None else "not measured"
                print(f"  {mark} {labels.get(c['workload'], c['workload'])}: {cand}/{c['reference']} = {v}"
                      f" (need >= {c['need']}x)")
        r4 = results.get(cand, {}).get("rss-4g", {})
        if r4.get("value") is not None:
            print(f"    4 GiB PUT {fmt(r4['put_Bps'], 'B/s')} peak {r4['put_peak_mib']:.0f} MiB; "
                  f"GET {fmt(r4['get_Bps'], 'B/s')} peak {r4['get_peak_mib']:.0f} MiB "
                  f"(idle {results[cand].get('_idle_rss_mib', 0):.0f} MiB)")
    else:
        print(f"\n({cand} not in this run: no target checks)")
    errs = [(t, w, m["error"]) for t in order for w, m in results.get(t, {}).items()
            if isinstance(m, dict) and "error" in m]
    if errs:
        print("\n== errors ==")
        for t, w, e in errs:
            print(f"  {t} {w}: {e}")
    return {"checks": checks}


# -- main ------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="nginx,moto,s3rver,walrus",
                    help="comma-separated targets (default: %(default)s)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated workloads (default: all: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition (smoke run)")
    ap.add_argument("--reps", type=int, help="repetitions per workload (default 3, --quick 1)")
    ap.add_argument("--candidate", default="walrus", help="target the ratios are for")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--no-setup", action="store_true", help="do not run bench/setup.sh")
    ap.add_argument("--max-minutes", type=float, default=60, help="skip what is left after this")
    ap.add_argument("--json", default=str(WORK / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the servers' data dirs")
    ap.add_argument("--profile", action="store_true",
                    help="after each workload, one uncounted repetition of the candidate under "
                         "py-spy; stacks in bench/.work/profiles/")
    ap.add_argument("--profile-idle", action="store_true",
                    help="with --profile: count idle/waiting threads too (shows I/O waits)")
    a = ap.parse_args(argv)

    sz = QUICK if a.quick else Sizes()
    if a.reps:
        sz.reps = a.reps
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for n in names:
        if n not in TARGETS:
            ap.error(f"unknown target {n!r}; known: {', '.join(TARGETS)}")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    workloads = [w for w in WORKLOADS if w in workloads]  # canonical order
    if a.quick and "rss-4g" in workloads:
        workloads.remove("rss-4g")

    WORK.mkdir(parents=True, exist_ok=True)
    if not a.no_setup:
        r = subprocess.run(["bash", str(BENCH / "setup.sh")])
        if r.returncode != 0:
            print("bench: setup failed (see above)", file=sys.stderr)
            return 2

    deadline = time.monotonic() + a.max_minutes * 60
    run_root = WORK / f"run-{os.getpid()}"
    notes: dict[str, str] = {}
    if "walrus" in names:
        ok, why = walrus_available()
        if not ok:
            log(f"walrus not available ({why}); skipping it")
            notes["walrus"] = f"not available: {why}"
            names.remove("walrus")
    Targets = [TARGETS[n](run_root / n) for n in names]
    for t in Targets:
        if isinstance(t, Nginx):
            t.workers = a.nginx_workers

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, dict] = {}
    profiles: dict[str, dict] = {}
    machine: dict = {}
    started: list[Target] = []
    if a.profile and not profiling.available():
        log("--profile: py-spy missing (bench/setup.sh installs it); no profiles")
        a.profile = False
    bench = Bench(sz)
    t_start = time.time()
    try:
        bench.make_data(workloads, extra_rep=a.profile, rss=a.candidate in names)
        machine = probes(sz)
        log("probes: " + ", ".join(f"{k[:-4]} {fmt(v, 'B/s')}" for k, v in machine.items()
                                   if k.endswith("_Bps")))
        for t in Targets:
            try:
                t.start()
                started.append(t)
                results[t.name] = {"_version": t.version(), "_idle_rss_mib": t.sampler.idle / 1024}
                log(f"started {t.name} {t.version()} pid {t.pid} on {t.base}")
            except Exception as e:  # noqa: BLE001 - a peer that fails to start is reported, not fatal
                log(f"{t.name} failed to start: {e}")
                notes[t.name] = f"failed to start: {str(e)[:300]}"
        order = [t.name for t in started]

        for w in workloads:
            if w == "bundle":
                continue
            if time.monotonic() > deadline:
                log(f"time budget spent; skipping {w}")
                notes.setdefault("skipped", "")
                notes["skipped"] += f" {w}"
                continue
            key = w.replace("-", "_")
            prep = getattr(bench, f"prep_{key}", None)
            run = getattr(bench, f"run_{key}")
            ts = [t for t in started if (w != "rss-4g" or t.name == a.candidate)]
            if w == "rss-4g" and not sz.rss:
                continue
            reps = 1 if w == "rss-4g" else sz.reps
            if w in ("large-get", "large-get-8") and sz.reps > 1:
                reps = max(reps, 5)  # ~0.1 s each at nginx speed: more samples, same cost
            live = []
            for t in ts:
                if t.proc.poll() is not None:
                    results[t.name][w] = {"error": f"server exited ({t.proc.returncode})"}
                    continue
                if prep:
                    log(f"{w}: preparing {t.name}")
                    try:
                        prep(t)
                    except Exception as e:  # noqa: BLE001
                        results[t.name][w] = {"error": f"prepare: {str(e)[:300]}"}
                        log(f"{w}: {t.name} prepare failed: {e}")
                        continue
                live.append(t)
            samples: dict[str, list] = {t.name: [] for t in live}
            rss: dict[str, int] = {t.name: 0 for t in live}
            failed: dict[str, str] = {}
            for rep in range(reps):
                for t in live:  # interleaved: rep 0 of every target, then rep 1, ...
                    if t.name in failed:
                        continue
                    if t.proc.poll() is not None:
                        failed[t.name] = f"server exited ({t.proc.returncode})"
                        continue
                    os.sync()  # nobody's dirty pages land on the next target's clock
                    t.sampler.reset_window()
                    try:
                        m = run(t, rep)
                    except Exception as e:  # noqa: BLE001
                        failed[t.name] = str(e)[:300]
                        log(f"{w}: {t.name} rep {rep} failed: {e}")
                        continue
                    rss[t.name] = max(rss[t.name], t.sampler.window_peak)
                    samples[t.name].append(m)
                    log(f"{w}: {t.name} rep {rep}: {fmt(m['value'], m['unit'])}")
            for t in live:
                s = samples[t.name]
                if t.name in failed and not s:
                    results[t.name][w] = {"error": failed[t.name]}
                    continue
                vals = [m["value"] for m in s]
                med = statistics.median(vals)
                best = min(s, key=lambda m: abs(m["value"] - med))
                results[t.name][w] = {**best, "value": med, "samples": vals,
                                      "rss_peak_mib": rss[t.name] / 1024}
                if t.name in failed:
                    results[t.name][w]["partial_error"] = failed[t.name]
            cand_t = next((t for t in live if t.name == a.candidate and t.name not in failed), None)
            if a.profile and cand_t and w != "rss-4g":
                profiles[w] = profile_pass(cand_t, w, run, sz.reps, a.profile_idle)
        for t in started:
            results[t.name]["_peak_rss_mib"] = t.sampler.peak / 1024
            results[t.name]["_vm_hwm_mib"] = vm_hwm_kib(t.pid) / 1024
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping servers")
        notes["interrupted"] = str(e)
        order = [t.name for t in started]
    finally:
        for t in started:
            t.stop()
            log(f"stopped {t.name}")
        if not a.keep:
            for t in Targets:
                t.cleanup()
            import shutil
            shutil.rmtree(run_root, ignore_errors=True)

    bundle = None
    if "bundle" in workloads and "interrupted" not in notes:
        bundle = run_bundle(sz)

    summary = report(results, order, workloads, a.candidate, sz)
    if machine:
        print("\n== this machine, one core / the data disk (what a durable PUT pays for) ==")
        print("  " + ", ".join(f"{k[:-4]} {fmt(v, 'B/s')}" for k, v in machine.items()
                               if k.endswith("_Bps")))
    for w, pr in profiles.items():
        if pr.get("samples"):
            print()
            print(profiling.render(f"{a.candidate} {w}", pr))
        else:
            print(f"\n-- profile {a.candidate} {w}: {pr.get('error', 'no samples')}")
    if bundle:
        print("\n== bundle_bench.py ==")
        print(bundle["output"].rstrip())
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "args": vars(a), "sizes": vars(sz), "targets": order, "candidate": a.candidate,
        "results": results, "checks": summary["checks"], "notes": notes, "bundle": bundle,
        "profiles": profiles, "probes": machine,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nresults: {a.json}")
    return 0


def probes(sz: Sizes) -> dict:
    """What this machine's disk and one core can do, for reading the PUT/GET figures:
    a durable store pays for the fsyncs and the digests that nginx skips."""
    import hashlib

    out: dict[str, float] = {}
    n = min(sz.big, 256 * MiB)
    src = data_file("get-big", sz.big)
    buf = src.read_bytes()[:n]
    for name in ("sha256", "md5"):
        t0 = time.perf_counter()
        hashlib.new(name, buf).digest()
        out[f"{name}_Bps"] = n / (time.perf_counter() - t0)
    try:
        import zstandard

        t0 = time.perf_counter()
        zstandard.ZstdCompressor(level=1).compress(buf[: 64 * MiB])
        out["zstd1_random_Bps"] = 64 * MiB / (time.perf_counter() - t0)
    except ImportError:
        pass
    del buf
    d = WORK / f"probe-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    try:
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(["dd", f"if={src}", f"of={d / 'out'}", "bs=1M", f"count={n // MiB}",
                        "conv=fdatasync"], capture_output=True, check=True, timeout=300)
        out["one_file_fdatasync_Bps"] = n / (time.perf_counter() - t0)
        (d / "out").unlink()
        # what a chunk store does: a new 1 MiB file each, written, fdatasync'd, renamed
        os.sync()
        with open(src, "rb") as f:
            t0 = time.perf_counter()
            for i in range(n // MiB):
                block = f.read(MiB)
                tmp, final = d / f"{i}.tmp", d / f"{i}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, block)
                os.fdatasync(fd)
                os.close(fd)
                os.rename(tmp, final)
            dfd = os.open(d, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
            out["1MiB_files_fdatasync_each_Bps"] = n / (time.perf_counter() - t0)
    except (subprocess.SubprocessError, OSError) as e:
        out["error"] = str(e)[:200]
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    return out


def profile_pass(t: Target, w: str, run, rep: int, idle: bool) -> dict:
    """One more repetition of `w` on `t` with py-spy attached; not counted in the figures."""
    log(f"{w}: profiling {t.name} (uncounted repetition)")
    os.sync()
    rec = profiling.Recording(t.pid, f"{t.name}-{w}", idle=idle)
    try:
        m = run(t, rep)
    except Exception as e:  # noqa: BLE001
        rec.stop()
        return {"error": str(e)[:300]}
    path = rec.stop()
    if not path:
        err = rec.proc.stderr.read() if rec.proc.stderr else ""
        return {"error": f"py-spy wrote nothing: {err.strip()[:300]}"}
    s = profiling.summarize(path)
    s["figure_under_profiler"] = m["value"]
    s["unit"] = m["unit"]
    return s


def run_bundle(sz: Sizes):
    script = BENCH / "bundle_bench.py"
    if not script.exists():
        return None
    py = REPO / ".venv" / "bin" / "python"
    cmd = [str(py if py.exists() else sys.executable), str(script), "--size-mib", str(sz.bundle_mib)]
    log(f"bundle: {' '.join(cmd)}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
        return {"cmd": cmd, "rc": r.returncode, "output": r.stdout + (r.stderr if r.returncode else "")}
    except subprocess.TimeoutExpired:
        return {"cmd": cmd, "rc": None, "output": "timed out after 1800 s"}


if __name__ == "__main__":
    sys.exit(main())
