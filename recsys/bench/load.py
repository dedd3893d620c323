"""The load generator: keep-alive HTTP clients at a fixed concurrency for a fixed time, for /recommend and
/feedback, counting errors and degraded answers apart; latency per stage and its spread over windows."""

from __future__ import annotations

import http.client
import itertools
import json
import statistics
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

CDF_POINTS = list(range(0, 101, 5))  # percentiles kept per stage for the latency CDF plot
OVERLOADED = "503 overloaded"  # how `_status_kind` reads an admission refusal (serving.admission)


class KeepAlive:
    """One persistent HTTP/1.1 connection per load-generating client, as real callers keep: a new TCP connection
    per request costs the client and the ingress CPU that a 2-core bench shares with the graph."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname or "127.0.0.1", u.port or 80, u.path or "/"
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.conn: http.client.HTTPConnection | None = None
        self.retry_after = 0.0  # the last answer's Retry-After (s), 0 without one

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _exchange(self, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        self.conn.request("POST", self.path, body, self.headers)
        r = self.conn.getresponse()
        self.retry_after = float(r.getheader("Retry-After") or 0)
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


def post(url: str, body: bytes) -> tuple[float, dict | str]:
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
         max_requests: int = 5_000, honour_retry_after: bool = False, raw: bool = False) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each sends its next request when the last one answered (or, with
    `honour_retry_after`, after a refusal's Retry-After, as the API asks of its clients). `raw`: the samples
    are kept too (`RAW`), so slices of one load interleaved with another can be pooled (`pooled`)."""
    deadline = time.monotonic() + seconds
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    done: list[float] = []  # when each answer came back (monotonic), for the per-window spread
    errors = degraded = 0
    kinds: dict[str, int] = {}
    refused: list[float] = []  # ms to each admission refusal (503 overloaded): it must come fast to be any use
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
                    if payload.startswith(OVERLOADED):
                        refused.append(ms)
                    backoff = conn.retry_after if honour_retry_after else 0.0
                else:
                    backoff = 0.0
                    lat.append(ms)
                    done.append(time.monotonic())
                    degraded += bool(payload["degraded"])
                    for k, v in payload["timings_ms"].items():
                        stages.setdefault(k, []).append(v)
            if backoff:
                time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))

    t0, start = time.perf_counter(), time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    out = _summary(concurrency, include_copy, lat, stages, refused, wall, errors, degraded, kinds)
    out["windows"] = window_spread(start, wall, done, lat)
    if raw:
        out[RAW] = {"lat": lat, "stages": stages, "refused": refused, "wall_s": wall}
    return out


RAW = "raw"  # the key of a `load(..., raw=True)` result's samples; `pooled` drops it


def _summary(concurrency: int, include_copy: bool, lat: list[float], stages: dict[str, list[float]],
             refused: list[float], wall: float, errors: int, degraded: int, kinds: dict[str, int]) -> dict[str, Any]:
    q = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    return {"concurrency": concurrency, "include_copy": include_copy, "requests": len(lat), "errors": errors,
            "error_kinds": kinds, "refused": len(refused),
            "refused_p99_ms": round(float(np.percentile(refused, 99)), 1) if refused else None,
            "degraded": degraded, "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
            "p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "stage_p50_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()},
            "stage_cdf_ms": {k: [round(float(x), 2) for x in np.percentile(v, CDF_POINTS)] for k, v in stages.items()}}


def pooled(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One result over slices of the same load (`load(..., raw=True)`) run apart in time, interleaved with another
    load's (`recsys.bench.interleave`): req/s is all answers over the slices' summed wall time and the percentiles
    are over all their latencies, so each slice counts by its requests; `slices` keeps each slice's own summary
    (without samples) as the spread. A slow minute of the VM lands in both loads' pools alike."""
    lat = [x for r in slices for x in r[RAW]["lat"]]
    stages: dict[str, list[float]] = {}
    for r in slices:
        for k, v in r[RAW]["stages"].items():
            stages.setdefault(k, []).extend(v)
    kinds: dict[str, int] = {}
    for r in slices:
        for k, n in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    out = _summary(slices[0]["concurrency"], slices[0]["include_copy"], lat, stages,
                   [x for r in slices for x in r[RAW]["refused"]], sum(r[RAW]["wall_s"] for r in slices),
                   sum(r["errors"] for r in slices), sum(r["degraded"] for r in slices), kinds)
    each = [{k: v for k, v in r.items() if k not in (RAW, "stage_cdf_ms", "windows")} for r in slices]
    out["windows"] = {"rps": spread([r["rps"] for r in each]), "p50_ms": spread([r["p50_ms"] for r in each])}
    return out | {"slices": each}


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


def post_feedback(url: str, key: str, events: list[dict[str, Any]], conn: KeepAlive | None = None) -> tuple[float, int]:
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
            ms, status = post_feedback(url, key, evs, conn)
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


def spread(xs: list[float], digits: int = 1) -> list[float]:
    """[min, median, max]: how much a timing moved between repeats (absolute times drift on a shared VM)."""
    return [round(float(min(xs)), digits), round(float(np.median(xs)), digits), round(float(max(xs)), digits)] \
        if xs else []
