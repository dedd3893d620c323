"""`make bench`: the offline pipeline, training scaling, quality and serving latency, measured on this machine.

Everything runs against real processes on 127.0.0.1 in a throwaway home (`<home>/bench`), bounded in count
and time. Results: `bench/results/<date>-<host>.json` (with the machine and the pinned stack) and
`BENCHMARKS.md`. Absolute times drift on a shared machine, so ratios are measured inside one run.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from recsys.settings import Settings, load_settings

RESULTS = Path("bench/results")
REPORT = Path("BENCHMARKS.md")
README = Path("README.md")
README_BEGIN, README_END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"
CDF_POINTS = list(range(0, 101, 5))  # percentiles kept per stage for the latency CDF plot
STACK = ("torch", "ray", "feast", "mlflow", "onnxruntime", "faiss-cpu", "tritonclient", "transformers")


def machine() -> dict[str, Any]:
    import psutil

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "commit": commit or "unknown",
            "stack": {p: metadata.version(p) for p in STACK}}


class PeakRSS:
    """Peak summed RSS of this process, its descendants and the local Ray/Triton processes (sampled at 4 Hz)."""

    NAMES = ("ray::", "raylet", "gcs_server", "tritonserver", "triton_python_backend_stub", "haproxy")

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        procs = {p.pid: p for p in me.children(recursive=True)} | {me.pid: me}
        for p in psutil.process_iter(["name", "cmdline"]):
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
            if any(n in text for n in self.NAMES):
                procs[p.pid] = p
        total = 0
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(0.25)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return round(self.peak / 2**30, 2)


def spread(xs: list[float], digits: int = 1) -> list[float]:
    """[min, median, max]: how much a timing moved between repeats (absolute times drift on a shared VM)."""
    return [round(float(min(xs)), digits), round(float(np.median(xs)), digits), round(float(max(xs)), digits)] \
        if xs else []


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1)


def offline(s: Settings, console: Console) -> dict[str, Any]:
    """data → features → train both → promote → export on the configured data (ML-100K when present)."""
    from training.export import export_repository
    from training.promotion import promote
    from training.steps import build_feature_store, prepare_data, train_ranking_step, train_retrieval_step
    from training.tracking import RANKER_MODEL, RETRIEVAL_MODEL

    steps: dict[str, float] = {}
    with PeakRSS() as mem:
        res, steps["data"] = _timed(lambda: prepare_data(s))
        console.print(f"data: {res.manifest['counts']} from {res.source}")
        _, steps["features"] = _timed(lambda: build_feature_store(s))
        retrieval, steps["train_retrieval"] = _timed(lambda: train_retrieval_step(s))
        ranking, steps["train_ranking"] = _timed(lambda: train_ranking_step(s))
        _, steps["promote"] = _timed(lambda: [promote(s, m, force=True) for m in (RETRIEVAL_MODEL, RANKER_MODEL)])
        _, steps["export"] = _timed(lambda: export_repository(s))
    console.print(f"offline steps (s): {steps}")
    rates = epoch_rates(s, retrieval["run_id"])
    return {"source": res.source, "counts": res.manifest["counts"], "steps_s": steps,
            "total_s": round(sum(steps.values()), 1), "peak_rss_gib": mem.gib,
            "retrieval_samples_per_s": round(retrieval["samples_per_second"], 1),
            "ranking_samples_per_s": round(ranking["samples_per_second"], 1),
            "epoch_samples_per_s": {"retrieval": spread(rates), "ranking": spread(epoch_rates(s, ranking["run_id"]))},
            "retrieval_epoch_rates": [round(x, 1) for x in rates],  # the scaling suite's 2-worker figures
            "epochs": {"retrieval": s.retrieval_epochs, "ranking": s.ranking_epochs},
            "retrieval_kept_epoch": int(retrieval.get("kept_epoch", 0)),
            "ranker": {k: round(float(ranking[k]), 4) for k in ("val_auc", "val_rating_rmse", "recall_weight")
                       if k in ranking}}


def epoch_rates(s: Settings, run_id: str) -> list[float]:
    """Samples/s of each training epoch of a tracked run (its `samples` / `epoch_seconds` metrics)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.tracking_uri)
    secs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_seconds")}
    samples = {m.step: m.value for m in client.get_metric_history(run_id, "samples")}
    return [samples[e] / secs[e] for e in sorted(secs) if e in samples and secs[e] > 0]


def training_scaling(s: Settings, console: Console, epochs: int = 3,
                     two_workers: list[float] | None = None) -> dict[str, Any]:
    """Retrieval samples/s per epoch with 1 worker (2 threads) vs 2 DDP workers (1 thread each), same data, same
    bench run, as [min, median, max] over epochs. Per-epoch rates leave out the fit's fixed start-up (~30 s of
    Ray worker start on 2 cores), which dominated a 2-epoch run's overall rate. `two_workers`: the offline
    suite's per-epoch rates (2 workers, every epoch) when it ran; otherwise a 2-worker run is made here too."""
    from training.steps import train_retrieval_step

    rates: dict[int, list[float]] = {2: two_workers} if two_workers else {}
    for workers in (1, 2):
        if workers not in rates:
            r = train_retrieval_step(s.model_copy(update={"train_workers": workers}), epochs=epochs)
            rates[workers] = epoch_rates(s, r["run_id"])
        console.print(f"retrieval, {workers} worker(s): samples/s per epoch {spread(rates[workers])}")
    out: dict[str, Any] = {f"workers_{w}": spread(rates[w]) for w in (1, 2)}
    out["speedup"] = round(float(np.median(rates[2]) / np.median(rates[1])), 2)
    out["scaling_efficiency"] = round(out["speedup"] / 2, 2)
    out["epochs"] = {w: len(rates[w]) for w in (1, 2)}
    return out


def quality(s: Settings) -> list[dict[str, Any]]:
    from training.evaluate import evaluation_table

    return evaluation_table(s, "champion", baselines=True)


class KeepAlive:
    """One persistent HTTP/1.1 connection per load-generating client, as real callers keep: a new TCP connection
    per request costs the client and the ingress CPU that a 2-core bench shares with the graph."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname or "127.0.0.1", u.port or 80, u.path or "/"
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _exchange(self, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        self.conn.request("POST", self.path, body, self.headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def post(self, body: bytes) -> tuple[float, dict | str]:
        """(ms, the JSON answer) or (ms, what went wrong: the HTTP status and error line, "timeout" or
        "connection"). A kept connection the server has closed meanwhile is retried once on a new one."""
        t0 = time.perf_counter()
        try:
            try:
                status, data = self._exchange(body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                status, data = self._exchange(body)
        except TimeoutError:
            self.close()
            return (time.perf_counter() - t0) * 1e3, "timeout"
        except (OSError, http.client.HTTPException):
            self.close()
            return (time.perf_counter() - t0) * 1e3, "connection"
        ms = (time.perf_counter() - t0) * 1e3
        if status >= 400:  # e.g. 503: Serve sheds load past its queue bounds
            return ms, _status_kind(status, data)
        return ms, json.loads(data)


def _post(url: str, body: bytes) -> tuple[float, dict | str]:
    """One request on its own connection (see `KeepAlive.post`)."""
    client = KeepAlive(url)
    try:
        return client.post(body)
    finally:
        client.close()


def _status_kind(status: int, data: bytes) -> str:
    """"500" plus the platform's one-line error where the body carries one ("500 internal error (KeyError)")."""
    try:
        msg = json.loads(data or b"{}").get("error")
    except (ValueError, AttributeError):  # not the platform's JSON: Serve's or uvicorn's own text
        msg = data.decode("utf-8", "replace").strip() or None
    return f"{status} {str(msg)[:60]}" if msg else str(status)


def load(url: str, users: list[int], concurrency: int, seconds: float, include_copy: bool,
         max_requests: int = 5_000) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each sends its next request when the last one answered."""
    deadline = time.monotonic() + seconds
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    done: list[float] = []  # when each answer came back (monotonic), for the per-window spread
    errors = degraded = 0
    kinds: dict[str, int] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal errors, degraded
        i = c
        conn = KeepAlive(url)
        while time.monotonic() < deadline and len(lat) < max_requests:
            body = json.dumps({"user_id": users[i % len(users)], "k": 10, "include_copy": include_copy}).encode()
            ms, payload = conn.post(body)
            i += concurrency
            with lock:
                if isinstance(payload, str):
                    errors += 1
                    kinds[payload] = kinds.get(payload, 0) + 1
                    continue
                lat.append(ms)
                done.append(time.monotonic())
                degraded += bool(payload["degraded"])
                for k, v in payload["timings_ms"].items():
                    stages.setdefault(k, []).append(v)

    t0, start = time.perf_counter(), time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    return {"concurrency": concurrency, "include_copy": include_copy, "requests": len(lat), "errors": errors,
            "windows": window_spread(start, wall, done, lat),
            "error_kinds": kinds, "degraded": degraded, "rps": round(len(lat) / wall, 1), "p50_ms": round(q[0], 1),
            "p95_ms": round(q[1], 1), "p99_ms": round(q[2], 1),
            "stage_p50_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()},
            "stage_cdf_ms": {k: [round(float(x), 2) for x in np.percentile(v, CDF_POINTS)] for k, v in stages.items()}}


def window_spread(start: float, wall: float, done: list[float], lat: list[float], n: int = 3) -> dict[str, list]:
    """req/s and p50 ms in `n` equal consecutive windows of one run, as [min, median, max]: the spread the run
    itself shows, at no extra bench time."""

    edges = [start + wall * i / n for i in range(n + 1)]
    rps, p50 = [], []
    for a, b in itertools.pairwise(edges):
        ms = [m for t, m in zip(done, lat, strict=True) if a <= t < b or (b == edges[-1] and t >= b)]
        rps.append(len(ms) / (b - a))
        if ms:
            p50.append(float(np.median(ms)))
    return {"rps": spread(rps), "p50_ms": spread(p50)}


def _label(cmd: str) -> str:
    """A process's short name: its Ray actor name, the Triton parts, else the executable."""
    words = cmd.split()
    ray_name = next((w.removeprefix("ray::") for w in words if w.startswith("ray::")), None)
    if ray_name:
        return ray_name
    if "python_backend_stub" in cmd:
        return "triton python model"
    if "tritonserver" in cmd:
        return "tritonserver"
    return Path(words[0]).name if words else "?"


def _process_cpu() -> dict[int, tuple[float, str]]:
    """CPU seconds so far of every process on the machine, with a short label."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "name"]):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = (t.user + t.system, _label(" ".join(p.info["cmdline"] or [p.info["name"] or ""])))
    return out


def cpu_per_request(run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a load and attribute the machine's CPU time to processes: ms of CPU per answered request."""
    before = _process_cpu()
    result = run()
    after = _process_cpu()
    per: dict[str, float] = {}
    for pid, (cpu, label) in after.items():
        per[label] = per.get(label, 0.0) + cpu - before.get(pid, (0.0, ""))[0]
    n = max(1, result["requests"])
    top = sorted(per.items(), key=lambda kv: -kv[1])[:8]
    return result, {k: round(v / n * 1e3, 2) for k, v in top if v > 0}


def in_process(s: Settings, users: list[int], n: int = 200) -> dict[str, float]:
    """Features → recall → ranking (Triton over gRPC) in one process, no Serve hops: the baseline for the
    graph's overhead, compared with the graph's concurrency-1 run without copy."""
    import asyncio

    from serving.features import FeatureReader
    from serving.ranking import Ranker
    from serving.recall import Recaller

    reader = FeatureReader(s)
    recaller, ranker = Recaller(s, reader), Ranker(s, reader)

    async def run() -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            user = reader.user(users[i % len(users)])
            await ranker.rank(user, recaller.candidates(user), 10)
            out.append((time.perf_counter() - t0) * 1e3)
        await ranker.client.close()
        return out

    lat = asyncio.run(run())
    return {"p50_ms": round(float(np.median(lat)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def _feedback(url: str, key: str, events: list[dict[str, Any]], conn: KeepAlive | None = None) -> tuple[float, int]:
    """(ms, HTTP status) of one POST /feedback (on `conn`, kept by the caller, or its own); 0: nothing answered."""
    client = conn or KeepAlive(f"{url}/feedback", {"Authorization": f"Bearer {key}"})
    try:
        ms, out = client.post(json.dumps({"events": events}).encode())
    finally:
        if conn is None:
            client.close()
    if not isinstance(out, str):
        return ms, 200
    code = out.split(" ", 1)[0]
    return ms, int(code) if code.isdigit() else 0


def feedback_load(url: str, key: str, users: list[int], items: list[int], concurrency: int, seconds: float,
                  batch: int = 1) -> dict[str, Any]:
    """Closed loop of event posts (new ids each time): acknowledged events/s and ack latency."""
    deadline = time.monotonic() + seconds
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal errors
        n = 0
        conn = KeepAlive(f"{url}/feedback", {"Authorization": f"Bearer {key}"})
        while time.monotonic() < deadline:
            evs = [{"user_id": users[(c * 31 + n + j) % len(users)],
                    "item_id": items[(c * 17 + n * 7 + j) % len(items)], "event_type": "click",
                    "event_id": f"bench-{c}-{n}-{j}-{time.time_ns()}"} for j in range(batch)]
            ms, status = _feedback(url, key, evs, conn)
            n += 1
            with lock:
                if status == 200:
                    lat.append(ms)
                else:
                    errors += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    return {"concurrency": concurrency, "batch": batch, "events_per_s": round(len(lat) * batch / wall, 1),
            "ack_p50_ms": round(q[0], 1), "ack_p99_ms": round(q[1], 1), "errors": errors}


def freshness(s: Settings, url: str, key: str, users: list[int], n: int = 30) -> dict[str, Any]:
    """Per event: ms from sending it to (a) the online store showing it, (b) a changed /recommend answer."""
    from serving.features import FeatureReader

    reader = FeatureReader(s)
    store_ms, rec_ms = [], []
    def top(u: int) -> list[int] | None:
        _, payload = _post(f"{url}/recommend", json.dumps({"user_id": u, "k": 10, "include_copy": False}).encode())
        return [it["item_id"] for it in payload["items"]] if isinstance(payload, dict) else None

    for u in users[:n]:
        before = top(u)
        if not before:
            continue
        item = before[0]  # the user's current top item: clicking it must change the answer (seen items drop out)
        t0 = time.perf_counter()
        _, status = _feedback(url, key, [{"user_id": u, "item_id": item, "event_type": "click"}])
        if status != 200:
            continue
        while reader.user(u).recent_items[-1:] != [item] and time.perf_counter() - t0 < 5:
            time.sleep(0.005)
        store_ms.append((time.perf_counter() - t0) * 1e3)
        while time.perf_counter() - t0 < 5 and top(u) in (before, None):
            pass
        rec_ms.append((time.perf_counter() - t0) * 1e3)

    def pct(v: list[float]) -> dict[str, float]:
        return {"p50_ms": round(float(np.percentile(v, 50)), 1), "p99_ms": round(float(np.percentile(v, 99)), 1)}

    return {"events": len(store_ms), "to_online_store": pct(store_ms), "to_changed_recommendation": pct(rec_ms)}


def feedback(s: Settings, console: Console, seconds: float = 8.0) -> dict[str, Any]:
    """Ingest and freshness against the running graph (called by `serving` while the stack is up)."""
    from serving import launcher
    from serving.artifacts import load_item_ids
    from training.datasets import prepare

    url, key = launcher.http_url(s), (s.api_key or (s.api_keys or [""])[0])
    users = sorted(prepare(s).train)[500:800]
    items = [int(i) for i in load_item_ids(s)[1:]]
    runs = [feedback_load(url, key, users, items, c, seconds, b) for c, b in ((1, 1), (8, 1), (8, 10))]
    for r in runs:
        console.print(f"feedback c={r['concurrency']} batch={r['batch']}: {r['events_per_s']} events/s, "
                      f"ack p50 {r['ack_p50_ms']} ms, p99 {r['ack_p99_ms']} ms, errors {r['errors']}")
    fresh = freshness(s, url, key, users)
    console.print(f"freshness: online store p99 {fresh['to_online_store']['p99_ms']} ms, changed answer p99 "
                  f"{fresh['to_changed_recommendation']['p99_ms']} ms")
    return {"ingest": runs, "freshness": fresh, "seconds_per_run": seconds}


def retrain_cycle(s: Settings, console: Console, retrieval_epochs: int = 2, ranking_epochs: int = 1) -> dict[str, Any]:
    """One `recsys retrain` while the graph serves, over the feedback the feedback runs just logged: merge →
    features → challengers warm-started from the champions (a nightly increment: 2 retrieval epochs, 1 ranking
    epoch, not the first fit's 40 and 4) → gate (forced, so the live swap is always part of the cycle; the
    gate's own verdict is kept) → live swap of both models."""
    from recsys.retrain import retrain

    r = retrain(s, console, force=True, retrieval_epochs=retrieval_epochs, ranking_epochs=ranking_epochs)
    console.print(f"retrain cycle: {r.seconds} s ({r.merged['events']} events merged), serving: {r.live}")
    return {"seconds": r.seconds, "events": r.merged["events"], "added": r.merged["added"],
            "decisions": r.decisions, "promoted": r.promoted, "live": r.live,
            "retrieval_epochs": retrieval_epochs, "ranking_epochs": ranking_epochs}


def serving(s: Settings, console: Console, seconds: float = 8.0) -> dict[str, Any]:
    from serving import launcher
    from training.datasets import prepare

    users = sorted(prepare(s).train)[:500]
    url = f"{launcher.http_url(s)}/recommend"
    with PeakRSS() as mem:
        launcher.up(s)
        runs = []
        for include_copy in (False, True):
            for c in (1, 8, 32):
                if c == 8 and not include_copy:
                    r, cpu_ms = cpu_per_request(lambda: load(url, users, 8, seconds, False))
                else:
                    r = load(url, users, c, seconds, include_copy)
                console.print(f"copy={include_copy} c={c}: {r['rps']} req/s, p50 {r['p50_ms']} ms, "
                              f"p99 {r['p99_ms']} ms, errors {r['errors']}, degraded {r['degraded']}")
                runs.append(r)
        baseline = in_process(s, users)
        events = feedback(s, console, seconds)
    cycle = retrain_cycle(s, console)  # outside the RSS window: its Ray Train workers are not the serving stack
    launcher.down(s)
    c1 = next(r for r in runs if r["concurrency"] == 1 and not r["include_copy"])
    return {"runs": runs, "in_process": baseline, "graph_over_in_process_p50": round(c1["p50_ms"] /
            baseline["p50_ms"], 2), "peak_rss_gib": mem.gib, "seconds_per_run": seconds,
            "cpu_ms_per_request_c8": cpu_ms, "feedback": events, "retrain": cycle}


SUITES = ("offline", "scaling", "quality", "serving", "copy", "factuality")
# freshness and feedback ingest are measured against the live graph, so they run inside the serving suite;
# factuality (1,000 copies, base and tuned: ~27 min here) is opt-in, outside `all` (`make bench` < 30 min).
OPT_IN = ("factuality",)
GROUPS = {"all": tuple(x for x in SUITES if x not in OPT_IN), "training": ("offline", "scaling"),
          "freshness": ("serving",)}


def expand_suites(names: list[str]) -> tuple[str, ...]:
    """Suite and group names → the suites to run, in SUITES order; an unknown name is a ValueError."""
    chosen: set[str] = set()
    for name in names:
        if name not in SUITES and name not in GROUPS:
            raise ValueError(f"unknown suite {name!r}: choose from {', '.join((*SUITES, *GROUPS))}")
        chosen.update(GROUPS.get(name, (name,)))
    return tuple(x for x in SUITES if x in chosen)


def run_bench(suites: tuple[str, ...], console: Console) -> Path:
    base = load_settings()
    home = (base.home / "bench").resolve()
    shutil.rmtree(home, ignore_errors=True)
    s = base.model_copy(update={"home": home})
    os.environ["RECSYS_HOME"] = str(home)  # the Feast definitions module reads settings itself
    started = datetime.now(UTC)
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine()}
    seconds: dict[str, float] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        result[name], seconds[name] = _timed(fn)

    if {"offline", "quality", "serving", "copy"} & set(suites):
        run("offline", lambda: offline(s, console))
    if "quality" in suites:
        run("quality", lambda: quality(s))
    if "serving" in suites:
        run("serving", lambda: serving(s, console))
    if "scaling" in suites:
        two = result.get("offline", {}).get("retrieval_epoch_rates")
        run("scaling", lambda: training_scaling(s, console, two_workers=two))
    if "copy" in suites:
        from recsys.bench_copy import copy_suite

        run("copy", lambda: copy_suite(s, console))
    if "factuality" in suites:
        from recsys.bench_copy import factuality_suite

        if "copy" in suites:  # its own copy LM run (1,000-copy evaluation) must not replace the copy suite's
            s = s.model_copy(update={"home": home / "factuality"})
            os.environ["RECSYS_HOME"] = str(s.home)
        run("factuality", lambda: factuality_suite(s, console))
    result["suite_seconds"] = {**seconds, "total": round(sum(seconds.values()), 1)}  # `make bench` target: < 1800
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started:%Y-%m-%d}-{platform.node()}.json"
    result = carry_over(result, latest_results())
    from recsys.bench_plots import draw

    result["plots"] = {k: str(v) for k, v in draw(result).items()}
    path.write_text(json.dumps(result, indent=1, default=str))
    REPORT.write_text(report(result, path))
    if README.exists():
        README.write_text(with_readme_block(README.read_text(), readme_block(result, path)))
    return path


SECTIONS = ("offline", "quality", "serving", "scaling", "copy", "factuality")


def latest_results(folder: Path = RESULTS) -> dict[str, Any] | None:
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def carry_over(result: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Sections this run did not measure, kept from the previous results file of the same machine and
    labelled with that run, so re-running one suite does not drop the report's other tables."""
    if not previous or previous.get("machine", {}).get("cpu") != result["machine"]["cpu"]:
        return result
    origin = previous.get("carried_from", {})
    for key in SECTIONS:
        if key not in result and key in previous:
            result[key] = previous[key]
            result.setdefault("carried_from", {})[key] = origin.get(key) or {
                "started": previous["started"], "commit": previous["machine"]["commit"]}
    return result


def _carried_note(r: dict[str, Any]) -> list[str]:
    carried = r.get("carried_from", {})
    if not carried:
        return []
    parts = [f"{k} ({v['started'][:16]}, commit {v['commit']})" for k, v in carried.items()]
    return [f"Not re-measured in this run, carried over from earlier runs on this machine: {'; '.join(parts)}.", ""]


def with_readme_block(text: str, block: str, begin: str = README_BEGIN, end_marker: str = README_END) -> str:
    """README with the text between two markers replaced; unchanged if the markers are missing."""
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        return text
    return text[: start + len(begin)] + "\n" + block + "\n" + text[end:]


def readme_block(r: dict[str, Any], path: Path) -> str:
    """The README's summary of the latest run: the headline numbers and the plots, nothing typed by hand."""
    m = r["machine"]
    lines = [f"Latest `make bench` ({r['started'][:10]}, commit {m['commit']}, {m['cpu']}, {m['cores']} cores, no "
             f"GPU); full tables in [BENCHMARKS.md](BENCHMARKS.md), raw numbers in `{path}`.", "",
             *_carried_note(r), "| what | result |", "|---|---|"]
    if "offline" in r:
        o = r["offline"]
        steps = ", ".join(f"{k} {v}" for k, v in o["steps_s"].items())
        lines.append(f"| offline pipeline on {o['counts'].get('interactions', '?')} interactions | {o['total_s']} s "
                     f"({steps}); peak RSS {o['peak_rss_gib']} GiB |")
    for q in r.get("quality", []):
        lines.append(f"| test HR@10 / NDCG@10, {q['model']} | {q['hr_at_10']:.3f} ± {q['hr_at_10_se']:.3f} / "
                     f"{q['ndcg_at_10']:.3f} ± {q['ndcg_at_10_se']:.3f} |")
    if "serving" in r:
        for x in r["serving"]["runs"]:
            if not x["include_copy"]:
                lines.append(f"| `/recommend` k=10, no copy, concurrency {x['concurrency']} | p50 {x['p50_ms']} / "
                             f"p99 {x['p99_ms']} ms, {x['rps']} req/s, {x['errors']} errors |")
    if "scaling" in r:
        sc = r["scaling"]
        lines.append(f"| Ray Train retrieval, 1 → 2 workers | {sc['speedup']}× samples/s |")
    if "copy" in r:
        q, g = r["copy"]["quality"], r["copy"]["generation"]
        lines.append(f"| copy LM factuality, base → fine-tuned ({r['copy']['eval_items']} held-out items) | "
                     f"{q['base_val_factuality']:.3f} → {q['val_factuality']:.3f} |")
        lines.append(f"| copy k=10, cache miss / hit p50 | {g['miss_p50_ms']} / {g['hit_p50_ms']} ms |")
    if "factuality" in r:
        f = r["factuality"]
        served = "1.000" if f["served_factuality"] == 1.0 else "< 1"
        lines.append(f"| copy LM factuality on {f['copies']} held-out copies (opt-in suite), base → fine-tuned → "
                     f"served after the guard | {f['base_factuality']:.3f} → {f['tuned_factuality']:.3f} → {served} |")
    lines.append("")
    lines += [f"![{name}]({Path(p).as_posix()})" for name, p in r.get("plots", {}).items()]
    return "\n".join(lines)


def report(r: dict[str, Any], path: Path) -> str:
    m = r["machine"]
    lines = ["# Benchmarks", "", f"Generated by `make bench` ({r['started']}, commit {m['commit']}); raw results in "
             f"`{path}`.", f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, no GPU; Python "
             f"{m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["stack"].items()) + ".", "",
             *_carried_note(r)]
    if r.get("suite_seconds"):
        t = r["suite_seconds"]
        counted = sum(v for k, v in t.items() if k not in ("total", *OPT_IN))
        lines += ["Wall time of this run by suite (s): " + ", ".join(f"{k} {v}" for k, v in t.items() if k != "total")
                  + f"; total {counted / 60:.1f} min without the opt-in suites (target: `make bench` under 30 min).",
                  ""]
    if "offline" in r:
        o = r["offline"]
        lines += ["## Offline pipeline", "", f"Data: {o['source']} {o['counts']}; epochs {o['epochs']}; "
                  f"2 Ray Train workers (CPU DDP).", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in o["steps_s"].items()]
        lines += [f"| **total** | **{o['total_s']}** |", "", f"Peak RSS of the whole local stack: {o['peak_rss_gib']} "
                  f"GiB. Training throughput, whole fit (start-up included): retrieval {o['retrieval_samples_per_s']} "
                  f"samples/s, ranking {o['ranking_samples_per_s']} samples/s"
                  + ("; per epoch, median (min–max): retrieval "
                     f"{with_spread(o['epoch_samples_per_s']['retrieval'])}, ranking "
                     f"{with_spread(o['epoch_samples_per_s']['ranking'])}" if "epoch_samples_per_s" in o else "")
                  + ".", ""]
        if o.get("ranker"):
            rk = o["ranker"]
            lines += [f"Retrieval kept epoch {o.get('retrieval_kept_epoch')} of {o['epochs']['retrieval']} (best "
                      f"validation NDCG@10). Ranker on validation: AUC {rk.get('val_auc')} (held-out positive vs "
                      f"sampled negatives), rating RMSE {rk.get('val_rating_rmse')} on held-out ratings (SVD: 0.934 "
                      f"on ML-100K, Surprise, 5-fold, a different split); blend weight w = {rk.get('recall_weight')}"
                      ".", ""]
    if "scaling" in r:
        sc = r["scaling"]
        lines += ["## Ray Train scaling (retrieval, same data, one run)", "",
                  "| workers | samples/s per epoch, median (min–max) |", "|---|---|",
                  f"| 1 × 2 threads | {with_spread(sc['workers_1'])} |",
                  f"| 2 × 1 thread (DDP) | {with_spread(sc['workers_2'])} |", "",
                  f"Speed-up {sc['speedup']}× (medians), scaling efficiency {sc['scaling_efficiency']}; epochs "
                  f"{sc['epochs']} (the 2-worker epochs are the offline run's when it ran in the same bench).", ""]
    if "quality" in r:
        lines += ["## Quality (test split, full ranking over all items, k=10, mean ± SE)", "",
                  "Protocol: every rating an implicit interaction; users with < 5 interactions dropped; "
                  "leave-last-out by time; the user's earlier items excluded, never the target; seeded ties.", "",
                  "| model | HR@10 | NDCG@10 | MRR | coverage@10 |", "|---|---|---|---|---|"]
        lines += [f"| {q['model']} | {q['hr_at_10']:.4f} ± {q['hr_at_10_se']:.4f} | {q['ndcg_at_10']:.4f} ± "
                  f"{q['ndcg_at_10_se']:.4f} | {q['mrr']:.4f} | {q['coverage_at_10']:.3f} |" for q in r["quality"]]
        lines += ["", "Published reference points (not run here): RecBole GRU4Rec on ML-100K HR@10 0.110 / "
                  "NDCG@10 0.051; on ML-1M SASRec NDCG@10 0.134 (BCE), 0.182 (full-softmax CE, Klenitskiy & Vasilev, "
                  "RecSys'23), gSASRec 0.173 (Petrov & Macdonald, RecSys'23); rating RMSE of SVD on ML-100K 0.934 "
                  "(Surprise).", ""]
    if "serving" in r:
        sv = r["serving"]
        lines += ["## Serving (`POST /recommend`, k=10, closed loop on 127.0.0.1)", "",
                  f"{sv['seconds_per_run']} s per row; Ray Serve high-throughput mode; Triton (python backend, "
                  "ONNX Runtime, CPU) for the ranker.", "",
                  "| copy | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | degraded | stage p50 ms | "
                  "req/s, p50 ms over 3 windows (min–max) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in sv["runs"]:
            st = ", ".join(f"{k} {v}" for k, v in x["stage_p50_ms"].items() if k != "total")
            kinds = ", ".join(f"{k} ×{v}" for k, v in sorted(x.get("error_kinds", {}).items()))
            errs = f"{x['errors']} ({kinds})" if kinds else str(x["errors"])
            w = x.get("windows", {})
            win = " · ".join(f"{v[0]}–{v[2]}" for v in (w.get("rps"), w.get("p50_ms")) if v)
            lines.append(f"| {x['include_copy']} | {x['concurrency']} | {x['rps']} | {x['p50_ms']} | {x['p95_ms']} | "
                         f"{x['p99_ms']} | {errs} | {x['degraded']} | {st} | {win} |")
        ip = sv["in_process"]
        lines += ["", "Features → recall → ranking in one process (no Serve hops, no copy): "
                  f"p50 {ip['p50_ms']} ms, p99 {ip['p99_ms']} ms; "
                  f"graph / in-process p50 at concurrency 1 = {sv['graph_over_in_process_p50']}×. Peak RSS of the "
                  f"serving stack: {sv['peak_rss_gib']} GiB.", ""]
        if sv.get("feedback"):
            fb = sv["feedback"]
            lines += ["## Feedback (`POST /feedback`, closed loop on 127.0.0.1, while the graph serves)", "",
                      "Each acknowledgement means: appended to the SQLite event log (WAL, fsync) and the user's "
                      "profile pushed to Feast's online store.", "",
                      "| clients | events per request | events/s | ack p50 ms | ack p99 ms | errors |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {x['concurrency']} | {x['batch']} | {x['events_per_s']} | {x['ack_p50_ms']} | "
                      f"{x['ack_p99_ms']} | {x['errors']} |" for x in fb["ingest"]]
            f = fb["freshness"]
            lines += ["", f"Freshness over {f['events']} events (send → visible): online store p50 "
                      f"{f['to_online_store']['p50_ms']} / p99 {f['to_online_store']['p99_ms']} ms; changed "
                      f"`/recommend` answer p50 {f['to_changed_recommendation']['p50_ms']} / p99 "
                      f"{f['to_changed_recommendation']['p99_ms']} ms (target p99 ≤ 1000 ms).", ""]
        if sv.get("retrain"):
            rt = sv["retrain"]
            lines += [f"Retrain-and-promote cycle while the graph serves (`recsys retrain`): {rt['seconds']} s for "
                      f"{rt['events']} logged events ({rt['added']} new interactions) → features → challengers "
                      f"warm-started from the champions ({rt['retrieval_epochs']} retrieval, {rt['ranking_epochs']} "
                      f"ranking epoch) → gate → live swap ({rt['live']}). Gate: {'; '.join(rt['decisions'])}.", ""]
        if sv.get("cpu_ms_per_request_c8"):
            cpu = ", ".join(f"{k} {v}" for k, v in sv["cpu_ms_per_request_c8"].items())
            lines += [f"CPU per request at concurrency 8, no copy (ms, by process): {cpu}. On 2 cores the "
                      "throughput ceiling is 2000 / (their sum) req/s.", ""]
    if "copy" in r:
        lines += copy_report(r["copy"])
    if "factuality" in r:
        lines += factuality_report(r["factuality"])
    if r.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({Path(p).as_posix()})" for name, p in r["plots"].items()] + [""]
    return "\n".join(lines)


def with_spread(v: float | list[float]) -> str:
    """A timing as `median (min–max)` when its repeats were kept ([min, median, max]), else as it is."""
    return f"{v[1]} ({v[0]}–{v[2]})" if isinstance(v, list) and len(v) == 3 else str(v)


def factuality_report(f: dict[str, Any]) -> list[str]:
    served = "1.000" if f["served_factuality"] == 1.0 else "below 1 (a template failed the guard)"
    return ["## Copy factuality on 1,000 copies (`recsys bench --suite factuality`, opt-in)", "",
            f"{f['copies']} held-out (item, taste) pairs over {f['held_out_items']} items never trained on; "
            f"{f['base_model']} + LoRA, {f['steps']} steps. Factuality before the guard replaces anything; after it, "
            "every failing copy is served as its grounded template, and those templates are checked by the same "
            "guard.", "",
            "| model | factuality (before the guard) | distinct-2 |", "|---|---|---|",
            f"| base | {f['base_factuality']:.3f} | {f['base_distinct_2']:.3f} |",
            f"| fine-tuned | {f['tuned_factuality']:.3f} | {f['tuned_distinct_2']:.3f} |", "",
            f"Served (after the guard): {served}; templates passing the guard {f['templates_factual']:.3f}. "
            f"Suite time {f['seconds'] / 60:.1f} min (training + both evaluations, "
            f"{f['generate_seconds_per_item']} s per generated copy, batched). Target: fine-tuned ≥ 0.99 before "
            "the guard, 1.00 after.", ""]


def copy_report(c: dict[str, Any]) -> list[str]:
    q, g, sc = c["quality"], c["generation"], c["scaling"]
    return ["## Copy LM (LoRA on " + c["base_model"] + ")", "",
            f"{c['steps']} LoRA steps (batch 8) on Ray Train; evaluated on {c['eval_items']} held-out items (never "
            "trained on). Factuality = share of generated copies passing the guard (title present, year and genres "
            "true, no other catalogue title, length, no links/markup), before the guard replaces anything; served "
            "copy is 1.00 by construction (a failing copy is replaced by the grounded template).", "",
            "| model | factuality | perplexity | distinct-2 |", "|---|---|---|---|",
            f"| base | {q['base_val_factuality']:.3f} | {q['base_val_perplexity']:.2f} | "
            f"{q['base_val_distinct_2']:.3f} |",
            f"| fine-tuned | {q['val_factuality']:.3f} | {q['val_perplexity']:.2f} | {q['val_distinct_2']:.3f} |", "",
            f"Training loss {q['first_loss']:.3f} → {q['final_train_loss']:.3f} in {q['train_seconds']:.0f} s "
            f"({q['tokens_per_second']:.0f} tokens/s, 2 workers). Tokens/s per epoch, median (min–max): 1 worker × 2 "
            f"threads {with_spread(sc['workers_1']['tokens_per_s'])}, 2 DDP workers × 1 thread "
            f"{with_spread(sc['workers_2']['tokens_per_s'])} ({sc['speedup']}×).", "",
            "| k=10 copy | p50 ms | p99 ms | min / median / max ms |", "|---|---|---|---|",
            f"| cache miss (one batched generate, {g.get('decoding', 'plain greedy')}, {g['dtype']}) | "
            f"{g['miss_p50_ms']} | {g['miss_p99_ms']} | "
            f"{' / '.join(map(str, g.get('miss_ms', [])))} |",
            f"| cache hit | {g['hit_p50_ms']} | {g['hit_p99_ms']} | {' / '.join(map(str, g.get('hit_ms', [])))} |", "",
            f"Generation {g['tokens_per_s']} tokens/s; cache hit rate under a repeat-heavy stream ({g['stream']} "
            f"requests over {g['shapes']} request shapes, Zipf-like): {g['repeat_hit_rate']}. Targets here: miss p50 "
            "≤ 1500 ms, hit ≤ 5 ms.",
            ""]
