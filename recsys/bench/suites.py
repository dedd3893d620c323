"""The bench suites: offline pipeline, training scaling, quality, serving (with feedback ingest, freshness and a
retrain cycle), and `run_bench`, which runs the chosen ones in a throwaway home and writes the results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from core.errors import one_line
from core.settings import Settings, load_settings
from recsys.bench.interleave import interleaved, pair_ratios
from recsys.bench.lifecycle import catalogue_lifecycle
from recsys.bench.load import feedback_load, load, post, post_feedback, spread
from recsys.bench.processes import CpuMeter, PeakRSS, cpu_per_request, cpu_ticks, machine, rss_mib, steal_share
from recsys.bench.report import (
    README,
    REPORT,
    RESULTS,
    carry_over,
    latest_results,
    readme_block,
    report,
    results_path,
    with_readme_block,
)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1)


def offline(s: Settings, console: Console) -> dict[str, Any]:
    """data → features → train both → promote → export on the configured data (ML-100K when present)."""
    from ops.pipeline import run_offline

    with PeakRSS() as mem:
        run = run_offline(s, copy=False, force=True)
    steps, retrieval, ranking = run.seconds, run.retrieval, run.ranking
    console.print(f"data: {run.counts} from {run.source}")
    console.print(f"offline steps (s): {steps}")
    rates = epoch_rates(s, retrieval["run_id"])
    return {"source": run.source, "counts": run.counts, "steps_s": steps,
            "total_s": round(sum(steps.values()), 1), "peak_rss_gib": mem.gib,
            "retrieval_samples_per_s": round(retrieval["samples_per_second"], 1),
            "ranking_samples_per_s": round(ranking["samples_per_second"], 1),
            "epoch_samples_per_s": {"retrieval": spread(rates), "ranking": spread(epoch_rates(s, ranking["run_id"]))},
            "epochs": {"retrieval": s.retrieval_epochs, "ranking": s.ranking_epochs},
            "workers": s.train_workers, "retrieval_layout": retrieval_layout(s, s.train_workers),
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


def retrieval_layout(s: Settings, workers: int) -> str:
    """How `workers` Ray Train workers share the retrieval model (`training.jobs.retrieval.Layout`)."""
    from training.jobs.retrieval import Layout
    from training.models.retrieval import RetrievalConfig

    cfg = RetrievalConfig(members=s.retrieval_members)
    return Layout.of(cfg, 0, workers).describe(cfg)


def training_scaling(s: Settings, console: Console, epochs: int = 4) -> dict[str, Any]:
    """Retrieval samples/s per epoch with 1 worker on 1 CPU vs 2 workers, 1 CPU each, same data, as [min,
    median, max] over epochs: efficiency = 2 workers' median rate / (2 × one worker's), each worker on the CPU it
    is given. The runs are made here, back to back in the order 2, 1, 2 workers, so a drift of this VM's speed
    during the bench (1.6× within one hour, seen) falls on both sides of the reference rather than on one; the
    offline run's epochs are not used, minutes away from the reference. Per-epoch rates leave out each fit's
    start-up (~30 s of Ray worker start on 2 cores)."""
    from training.ray_cluster import ensure_ray
    from training.steps import train_retrieval_step

    ensure_ray(s)  # the bench's cluster with every CPU; the 1-worker reference asks for one of them
    shapes = {1: {"train_workers": 1, "ray_num_cpus": 1}, 2: {"train_workers": 2}}
    rates: dict[int, list[float]] = {1: [], 2: []}
    for workers in (2, 1, 2):
        r = train_retrieval_step(s.model_copy(update={**shapes[workers], "retrieval_refit_epochs": 0}),
                                 epochs=epochs)
        rates[workers] += epoch_rates(s, r["run_id"])
        console.print(f"retrieval, {workers} worker(s): samples/s per epoch {spread(rates[workers])}")
    out: dict[str, Any] = {f"workers_{w}": spread(rates[w]) for w in (1, 2)}
    out["speedup"] = round(float(np.median(rates[2]) / np.median(rates[1])), 2)
    out["scaling_efficiency"] = round(out["speedup"] / 2, 2)
    out["epochs"] = {w: len(rates[w]) for w in (1, 2)}
    out["reference"] = "1 × 1 thread"
    out["order"] = "2, 1, 2 workers, back to back"
    out["layout_2"] = retrieval_layout(s, 2)
    return out


def quality(s: Settings) -> list[dict[str, Any]]:
    """The models (full ranking), then the served list under the same protocol, then the baselines."""
    from recsys.bench.served import served_lists
    from training.evaluate import evaluation_table

    rows = evaluation_table(s, "champion", baselines=True)
    served = served_lists(s, "test")
    rows.insert(2, {"model": "served list: recall → ranker → rules (top 10 as answered)", "mrr": None, **served})
    return rows


def plain_sasrec_suite(s: Settings, console: Console) -> dict[str, Any]:
    """The plain SASRec row of the quality table (`training.evaluation.sasrec`): opt-in, it trains one model per
    dropout of its grid (at most 400 s each). Prepares the data itself when the offline suite did not run."""
    import torch

    from training.datasets import prepare
    from training.evaluation.sasrec import plain_sasrec
    from training.steps import prepare_data

    if not (s.data_dir / "manifest.json").exists():
        prepare_data(s)
    torch.set_num_threads(os.cpu_count() or 1)
    out = plain_sasrec(prepare(s), seed=s.seed)
    console.print(f"plain SASRec: dropout {out.dropout} (validation NDCG@10 {out.valid_ndcg}), test HR@10 "
                  f"{out.test.hr:.4f} / NDCG@10 {out.test.ndcg:.4f}, {out.seconds:.0f} s")
    return {"model": f"plain SASRec (item ids only, last 200, full-softmax CE; dropout {out.dropout} on validation)",
            **out.test.as_dict(), "dropout": out.dropout, "kept_epoch": out.kept_epoch,
            "valid_ndcg_by_dropout": {str(k): v for k, v in out.valid_ndcg.items()},
            "stopped_by_dropout": {str(k): v for k, v in out.stopped.items()},
            "train_seconds": round(out.seconds, 1)}


def in_process(s: Settings, users: list[int], n: int = 200) -> dict[str, float]:
    """Features → recall → ranking (Triton over gRPC) in one process, no Serve hops: the baseline for the
    graph's overhead, compared with the graph's concurrency-1 run without copy."""
    import asyncio

    from serving.features import FeatureReader
    from serving.ranking import RankingStage
    from serving.recall import Recaller

    reader = FeatureReader(s)
    recaller, ranker = Recaller(s, reader), RankingStage(s, reader)

    async def run() -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            user = reader.user(users[i % len(users)])
            await ranker.rank(user, recaller.candidates(user, n=ranker.pool(user.user_id)), 10)
            out.append((time.perf_counter() - t0) * 1e3)
        await ranker.client.close()
        return out

    lat = asyncio.run(run())
    return {"p50_ms": round(float(np.median(lat)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def freshness(s: Settings, url: str, key: str, users: list[int], n: int = 30) -> dict[str, Any]:
    """Per event: ms from sending it to (a) the online store showing it, (b) a changed /recommend answer."""
    from serving.features import FeatureReader

    reader = FeatureReader(s)
    store_ms, rec_ms = [], []
    def top(u: int) -> list[int] | None:
        _, payload = post(f"{url}/recommend", json.dumps({"user_id": u, "k": 10, "include_copy": False}).encode())
        return [it["item_id"] for it in payload["items"]] if isinstance(payload, dict) else None

    for u in users[:n]:
        before = top(u)
        if not before:
            continue
        item = before[0]  # the user's current top item: clicking it must change the answer (seen items drop out)
        t0 = time.perf_counter()
        _, status = post_feedback(url, key, [{"user_id": u, "item_id": item, "event_type": "click"}])
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
    from core.artifacts import load_item_ids
    from core.endpoints import http_url
    from training.datasets import prepare

    url, key = http_url(s), (s.api_key or (s.api_keys or [""])[0])
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


def deletions(s: Settings, console: Console, users: list[int]) -> dict[str, Any]:
    """Per user: ms from sending `DELETE /users/{id}` to its answer (log erased, online rows blanked, impressions
    redacted), and whether the next `/recommend` already answers them as a new user (no retrieval version)."""
    import json
    import urllib.request

    from core.endpoints import http_url

    url, key = http_url(s), (s.api_key or (s.api_keys or [""])[0])
    ms, cold = [], 0
    for u in users:
        req = urllib.request.Request(f"{url}/users/{u}", method="DELETE", headers={"Authorization": f"Bearer {key}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            json.loads(r.read())
        ms.append((time.perf_counter() - t0) * 1e3)
        _, answer = post(f"{url}/recommend", json.dumps({"user_id": u, "k": 10, "include_copy": False}).encode())
        cold += isinstance(answer, dict) and answer["model_versions"].get("retrieval") == ""
    out = {"users": len(users), "p50_ms": round(float(np.percentile(ms, 50)), 1),
           "max_ms": round(max(ms), 1), "new_user_after": cold}
    console.print(f"DELETE /users: p50 {out['p50_ms']} ms, max {out['max_ms']} ms; {cold}/{len(users)} answered "
                  "as new users right after")
    return out


def retrain_cycle(s: Settings, console: Console, retrieval_epochs: int = 2, ranking_epochs: int = 1) -> dict[str, Any]:
    """One `recsys retrain` while the graph serves, over the feedback the feedback runs just logged: merge →
    features → challengers warm-started from the champions (a nightly increment: 2 retrieval epochs, 1 ranking
    epoch, not the first fit's 40 and 4) → gate, not forced, as the chart's CronJob runs it (each champion
    re-evaluated on the challenger's validation split) → live swap of both models when they pass. The bench's
    feedback is load-test traffic (random items), so a refusal is the expected verdict; it is reported as is."""
    from ops.retrain import retrain

    r = retrain(s, console, force=False, retrieval_epochs=retrieval_epochs, ranking_epochs=ranking_epochs)
    console.print(f"retrain cycle: {r.seconds} s ({r.merged['events']} events merged); {r.live}")
    return {"seconds": r.seconds, "events": r.merged["events"], "added": r.merged["added"],
            "decisions": r.decisions, "promoted": r.promoted, "live": r.live,
            "retrieval_epochs": retrieval_epochs, "ranking_epochs": ranking_epochs}


def against_floor(s: Settings, console: Console, users: list[int], seconds: float, pairs: int = 8,
                  slice_s: float = 3.0) -> dict[str, Any]:
    """The platform's `/recommend` (no copy) and the floor graph (`recsys.bench.floor`: the same hops doing no
    work), same client, in `pairs` pairs of `slice_s` slices at concurrency 8 and then 1, mirrored and pooled
    (`recsys.bench.interleave`), after one warm-up request per user for each: this VM's speed drifts between days
    and within a minute, so the platform's speed is reported as a share of the floor's measured beside it. CPU
    per request is attributed to processes over all concurrency-8 slices, for both."""
    from core.endpoints import http_url
    from core.names import RANKER
    from ops.triton_server import cache_counts
    from recsys.bench import floor

    urls = {"platform": f"{http_url(s)}/recommend", "floor": floor.up(s)}
    runs: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in urls}
    meters = {name: CpuMeter() for name in urls}
    models = {"platform": RANKER, "floor": floor.FLOOR_MODEL}
    try:
        for url in urls.values():  # warm both: every user once (caches, lazily built rows), not measured
            load(url, users, 8, seconds, False, max_requests=len(users))
        before = {name: cache_counts(s, m) for name, m in models.items()}
        for c in (8, 1):
            slices = {name: partial(load, url, users, c, slice_s, False, raw=True) for name, url in urls.items()}
            got = interleaved({name: partial(meters[name].measure, one) if c == 8 else one
                               for name, one in slices.items()}, pairs)
            for name, r in got.items():
                runs[name][c] = r
                console.print(f"{name} c={c}, {pairs} slices of {slice_s:g} s pooled: {r['rps']} req/s, p50 "
                              f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}")
        # How the measured calls reached each Triton model: the bench's users repeat with unchanged profiles, so
        # after the warm-up every ranker request is a response-cache hit; reported, not assumed.
        cache = {name: {k: v - before[name][k] for k, v in cache_counts(s, m).items()} for name, m in models.items()}
    finally:
        floor.down(s)

    ratio = floor_ratios(runs)
    console.print(f"platform / floor: {ratio['rps_c8']} of its req/s at c=8 (target ≥ 0.6), p99 {ratio['p99_c8']}× "
                  f"(≤ 1.3), c=1 p50 {ratio['p50_c1']}× (≤ 1.5)")
    return {"runs": {name: {str(c): v for c, v in by_c.items()} for name, by_c in runs.items()},
            "cpu_ms_per_request_c8": {name: m.per_request() for name, m in meters.items()}, "pairs": pairs,
            "slice_s": slice_s, "candidates": floor.candidate_count(s), "floor_ratio": ratio, "triton_cache": cache}


def floor_ratios(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The platform against the floor: each measure is the ratio of the two pools (`interleaved`), with the ratio
    within each pair of slices as its spread. Until session 65 it was the median over three pairs of 8 s runs, the
    platform always first: pairs of 0.607 / 0.773 / 0.473 in one run."""
    p, f = runs["platform"], runs["floor"]
    pairs = {"rps_c8": pair_ratios(p[8], f[8], "rps"), "p99_c8": pair_ratios(p[8], f[8], "p99_ms"),
             "p50_c1": pair_ratios(p[1], f[1], "p50_ms")}
    return {"rps_c8": round(p[8]["rps"] / f[8]["rps"], 3), "p99_c8": round(p[8]["p99_ms"] / f[8]["p99_ms"], 3),
            "p50_c1": round(p[1]["p50_ms"] / f[1]["p50_ms"], 3), "pooled": True, "per_pair": pairs}


def overload(s: Settings, console: Console, users: list[int], seconds: float) -> dict[str, Any]:
    """`/recommend` (no copy) past the graph's capacity, with admission control (`serving.admission`) on as
    deployed: clients that honour Retry-After at 32, 64 and 128, and 64 that retry at once (a refusal still costs
    the proxy and the Ingress their share). "Held" = the most admitted req/s among rows whose p99 stays within
    the stage budgets (features + recall + ranking timeouts) with at most 1 % of answers degraded."""
    from core.endpoints import http_url

    url, budget = f"{http_url(s)}/recommend", s.features_timeout_ms + s.recall_timeout_ms + s.ranking_timeout_ms
    rows = []
    for c, honour in ((32, True), (64, True), (128, True), (64, False)):
        r = load(url, users, c, seconds, False, honour_retry_after=honour)
        r["honour_retry_after"] = honour
        r["within_budget"] = bool(r["requests"]) and r["p99_ms"] <= budget and r["degraded"] <= 0.01 * r["requests"]
        console.print(f"overload c={c} {'honouring Retry-After' if honour else 'retrying at once'}: admitted "
                      f"{r['rps']} req/s, p99 {r['p99_ms']} ms, refused {r['refused']} (p99 {r['refused_p99_ms']} ms),"
                      f" degraded {r['degraded']}")
        rows.append(r)
    held = max((r["rps"] for r in rows if r["within_budget"]), default=0.0)
    return {"runs": rows, "budget_ms": budget, "held_rps_within_budget": held,
            "admission": {"limit": s.admission_limit, "queue": s.admission_queue, "wait_ms": s.admission_wait_ms}}


def soak(s: Settings, console: Console, users: list[int], rounds: int = 5, seconds: float = 30.0) -> dict[str, Any]:
    """Triton's memory under sustained load: `rounds` back-to-back runs at concurrency 8 (no copy), RSS of
    tritonserver and the ranker's python-backend stub after each. It has levelled off when the last round added
    at most 2 % (or 2 MiB) to both."""
    from core.endpoints import http_url
    from core.names import RANKER

    labels = ("tritonserver", f"triton python model {RANKER}")
    url, series, served = f"{http_url(s)}/recommend", [rss_mib(labels)], 0
    for i in range(rounds):
        served += load(url, users, 8, seconds, False, max_requests=10**7)["requests"]
        series.append(rss_mib(labels))
        console.print(f"soak round {i + 1}/{rounds}: {served} requests, RSS MiB {series[-1]}")

    rss = {label: [r[label] for r in series] for label in labels}
    return {"rounds": rounds, "seconds_per_round": seconds, "requests": served, "rss_mib": rss,
            "levelled_off": all(levelled_off(v) for v in rss.values())}


def levelled_off(mib: list[float]) -> bool:
    """The last of a series of RSS samples added at most 2 % (or 2 MiB) to the one before."""
    return len(mib) >= 2 and mib[-1] - mib[-2] <= max(2.0, 0.02 * mib[-2])


def _copy_champion(s: Settings, console: Console) -> None:
    """A copy LM champion for the serving rows: the copy suite's when it ran first, else a short LoRA run (trained
    before the serving stack's RSS window, exported only for its rows). Latency hardly depends on how well it is
    tuned: a copy the guard rejects costs the same generation and is cached the same way."""
    from core.artifacts import exported_copy_version
    from core.names import COPY_MODEL
    from training.copy_steps import train_copy_step
    from training.promotion import promote

    if exported_copy_version(s.model_repo) is None:
        t0 = time.perf_counter()
        r = train_copy_step(s.model_copy(update={"copy_steps": 8, "copy_eval_items": 4}))
        promote(s, COPY_MODEL, force=True)
        _end_train_coordinator()
        console.print(f"copy LM v{r['version']} for the serving rows: {time.perf_counter() - t0:.0f} s (8 LoRA "
                      "steps)")


def _end_train_coordinator() -> None:
    """Ray Train creates a detached, restartable `AutoscalingCoordinator` actor in the cluster it trains on
    (ray/data/_internal/cluster_autoscaler/default_autoscaling_coordinator.py, get_or_create_autoscaling_coordinator)
    and leaves it there: 0.19 GiB counted in the serving stack when the bench trains its stand-in copy model on
    the serving head. A cluster trains in its RayJob's own Ray cluster, so it is not the serving stack's.
    `ray.kill` only asks: the process is waited for, or the RSS window's first samples still count it."""
    import psutil
    import ray

    if not ray.is_initialized():
        return
    procs = [p for p in psutil.process_iter(["cmdline"]) if "ray::_AutoscalingCoordinatorActor" in
             " ".join(p.info["cmdline"] or [])]
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator"), no_restart=True)
    psutil.wait_procs(procs, timeout=15)


def _adapter_steps(s: Settings, version: str) -> int | None:
    """LoRA steps of the exported copy model the rows ran with: the copy suite's real adapter (200 by default), or
    the 8-step stand-in trained when the serving suite runs alone (its copies are longer and rarely drafted, so
    misses cost several times more and the warm rows may not settle)."""
    from core.artifacts import COPY_DIR
    from core.copy_lm import read_copy_folder

    try:
        return int(read_copy_folder(s.model_repo / COPY_DIR / version)[0].steps)
    except (OSError, ValueError, KeyError):
        return None


def with_copy_lm(s: Settings, console: Console, users: list[int], cold_users: list[int], seconds: float,
                 pairs: int = 8, slice_s: float = 3.0, warm_rounds: int = 20) -> dict[str, Any]:
    """`/recommend` with the copy LM loaded. Warm: a Zipf stream over 20 users (the steady state of repeat
    traffic: their copies cached after a warm-up), copy on vs off in `pairs` mirrored pairs of `slice_s` slices at
    concurrency 8, pooled (`recsys.bench.interleave`; target: p99 with copy ≤ 1.2× without). Cold: users never
    asked for, one at a time: every copy misses, so each answer should come at the copy budget with templates
    (background fill), never past the copy stage's timeout."""
    from core.artifacts import exported_copy_version
    from core.endpoints import http_url
    from ops import launcher
    from training.copy_steps import export_copy

    url, version = f"{http_url(s)}/recommend", exported_copy_version(s.model_repo) or str(export_copy(s))
    launcher.deploy(s)  # the Copy replica is reconfigured with the exported version and loads it
    t0 = time.monotonic()
    if launcher.wait_copy_ready(s, 600.0, poll_s=1.0) is None:
        raise RuntimeError("the copy model was not ready 600 s after it was deployed")
    ready_s = round(time.monotonic() - t0, 1)
    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, 21)
    stream = [int(u) for u in rng.choice(users[:20], size=3000, p=zipf / zipf.sum())]
    warm = []
    for _ in range(warm_rounds):  # until the hot users' copies are cached: answers no longer degraded. Two
        # clients: at 8 the requests take the CPU the background generation needs (measured: 64 s at 8 clients
        # left half the answers with a late copy)
        r = load(url, stream, 2, seconds, True, honour_retry_after=True)
        warm.append({"requests": r["requests"], "degraded": r["degraded"]})
        if r["degraded"] <= 0.01 * max(1, r["requests"]):
            break
    runs = interleaved({name: partial(load, url, stream, 8, slice_s, name == "copy", raw=True,
                                      honour_retry_after=True) for name in ("no_copy", "copy")}, pairs)
    for name, r in runs.items():
        console.print(f"copy LM v{version} warm, {name} c=8, {pairs} slices of {slice_s:g} s pooled: {r['rps']} req/s, "
                      f"p99 {r['p99_ms']} ms, degraded {r['degraded']}")
    cold = load(url, cold_users, 1, seconds, True)
    ratio = round(runs["copy"]["p99_ms"] / runs["no_copy"]["p99_ms"], 3)
    copy_cdf = cold["stage_cdf_ms"].get("copy", [])
    out = {"version": version, "adapter_steps": _adapter_steps(s, version), "ready_s": ready_s, "warm_up": warm,
           "runs": runs, "pairs": pairs, "slice_s": slice_s, "warm_p99_ratio": ratio,
           "warm_p99_per_pair": pair_ratios(runs["copy"], runs["no_copy"], "p99_ms"),
           "cold": cold, "cold_copy_p95_ms": copy_cdf[-2] if copy_cdf else None,
           "cold_copy_max_ms": copy_cdf[-1] if copy_cdf else None, "copy_budget_ms": s.copy_budget_ms,
           "copy_timeout_ms": s.copy_timeout_ms}
    console.print(f"copy LM warm p99 {ratio}× no-copy (target ≤ 1.2); cold copy stage p95 {out['cold_copy_p95_ms']} "
                  f"/ max {out['cold_copy_max_ms']} ms (budget {s.copy_budget_ms:g}, timeout {s.copy_timeout_ms:g})")
    return out


def serving(s: Settings, console: Console, seconds: float = 8.0) -> dict[str, Any]:
    from core.endpoints import http_url
    from ops import launcher
    from training.datasets import prepare

    users = sorted(prepare(s).train)[:500]
    url = f"{http_url(s)}/recommend"
    launcher.up(s)
    # A copy model exported earlier (the copy suite's) loads and warms its cache on ~2 torch threads as the stack
    # comes up; measured during that, the floor and the rows shared the 2 cores with it (the Copy replica burned
    # 4.6-6.9 ms of CPU per no-copy request). Steady state is after it settles.
    if launcher.wait_copy_ready(s, 600.0, poll_s=1.0) is None:
        raise RuntimeError("the copy stage did not settle 600 s after the stack came up")
    floor = against_floor(s, console, users, seconds)  # before the RSS window: the floor is not the serving stack
    _copy_champion(s, console)  # its Ray Train workers are not the serving stack either
    with PeakRSS(own=False) as mem:  # the serving stack, not this driver (load generator, in-process baseline)
        runs = []
        for include_copy in (False, True):
            for c in (1, 8, 32):
                if c == 8 and not include_copy:
                    r, cpu_ms = cpu_per_request(lambda: load(url, users, 8, seconds, False))
                else:  # clients honour Retry-After, as the API asks: past capacity admission refuses some
                    r = load(url, users, c, seconds, include_copy, honour_retry_after=True)
                console.print(f"copy={include_copy} c={c}: {r['rps']} req/s, p50 {r['p50_ms']} ms, "
                              f"p99 {r['p99_ms']} ms, errors {r['errors']}, degraded {r['degraded']}")
                runs.append(r)
        overloaded = overload(s, console, users, seconds)
        soaked = soak(s, console, users)
        baseline = in_process(s, users)
        events = feedback(s, console, seconds)
        deleted = deletions(s, console, sorted(prepare(s).train)[900:910])
        catalogue = catalogue_lifecycle(s, console, sorted(prepare(s).train)[920:940])
        try:  # last: its background fills would load the rows after it; a failure keeps the rest of the suite
            copy_lm = with_copy_lm(s, console, users, sorted(prepare(s).train)[600:640], seconds)
        except Exception as e:
            console.print(f"[red]copy LM rows failed: {one_line(e)}[/red]")
            copy_lm = {"error": one_line(e)}
    cycle = retrain_cycle(s, console)  # outside the RSS window: its Ray Train workers are not the serving stack
    launcher.down(s)
    c1 = next(r for r in runs if r["concurrency"] == 1 and not r["include_copy"])
    return {"runs": runs, "in_process": baseline, "graph_over_in_process_p50": round(c1["p50_ms"] /
            baseline["p50_ms"], 2), "peak_rss_gib": mem.gib, "peak_rss_gib_by_process": mem.by_process(),
            "peak_rss_gib_at_peak": mem.at_peak(),
            "floor": floor, "overload": overloaded, "soak": soaked, "copy_lm": copy_lm, "seconds_per_run": seconds,
            "cpu_ms_per_request_c8": cpu_ms, "feedback": events, "deletions": deleted, "catalogue": catalogue,
            "retrain": cycle}


def run_bench(suites: tuple[str, ...], console: Console) -> Path:
    base = load_settings()
    home = (base.home / "bench").resolve()
    shutil.rmtree(home, ignore_errors=True)
    s = base.model_copy(update={"home": home})
    os.environ["RECSYS_HOME"] = str(home)  # processes started from here (Ray workers, the serving stack) read it
    started = datetime.now(UTC)
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine()}
    seconds: dict[str, float] = {}
    steal: dict[str, float | None] = {}  # the share of CPU time the hypervisor took during each suite

    def run(name: str, fn: Callable[[], Any]) -> None:
        before = cpu_ticks()
        result[name], seconds[name] = _timed(fn)
        steal[name] = steal_share(before, cpu_ticks())

    if {"offline", "quality", "serving", "copy"} & set(suites):
        run("offline", lambda: offline(s, console))
    if "quality" in suites:
        run("quality", lambda: quality(s))
    if "sasrec" in suites:
        run("sasrec", lambda: plain_sasrec_suite(s, console))
    if "transfer" in suites:
        from recsys.bench.transfer import transfer_suite

        run("transfer", lambda: transfer_suite(s, console))
    if "copy" in suites:  # before serving: its rows with the copy LM loaded then use this real adapter
        from recsys.bench.copy_lm import copy_suite

        run("copy", lambda: copy_suite(s, console))
    if "serving" in suites:
        run("serving", lambda: serving(s, console))
    if "scaling" in suites:
        if "offline" not in result:  # the suite alone: its data and features first (not timed)
            from training.steps import build_feature_store, prepare_data

            prepare_data(s)
            build_feature_store(s)
        run("scaling", lambda: training_scaling(s, console))
    if "factuality" in suites:
        from recsys.bench.copy_lm import factuality_suite

        if "copy" in suites:  # its own copy LM run (1,000-copy evaluation) must not replace the copy suite's
            s = s.model_copy(update={"home": home / "factuality"})
            os.environ["RECSYS_HOME"] = str(s.home)
        run("factuality", lambda: factuality_suite(s, console))
    result["suite_seconds"] = {**seconds, "total": round(sum(seconds.values()), 1)}  # `make bench` target: < 1800
    result["cpu_steal"] = steal
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(RESULTS, started.isoformat(), platform.node(), result["machine"]["cpu"])
    result = carry_over(result, latest_results())
    from recsys.bench.plots import draw

    result["plots"] = {k: str(v) for k, v in draw(result).items()}
    path.write_text(json.dumps(result, indent=1, default=str))
    REPORT.write_text(report(result, path))
    if README.exists():
        README.write_text(with_readme_block(README.read_text(), readme_block(result, path)))
    return path
