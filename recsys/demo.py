"""`make demo`: every step in order on the embedded defaults: the offline pipeline and its metrics table, then
the serving graph (Triton + Ray Serve) and real recommendations with their copy."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from core.settings import Settings
from ops.pipeline import Progress, run_offline


class _Steps(Progress):
    """Each step as a titled section with its result and wall time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}
        self._t0 = 0.0

    def start(self, label: str) -> None:
        self.console.rule(f"[bold]{label}")
        self._t0 = time.perf_counter()

    def done(self, label: str, summary: str) -> None:
        if summary:
            self.console.print(summary, markup=False, highlight=False)
        self.seconds[label] = time.perf_counter() - self._t0
        self.console.print(f"[green]✓ {label}[/] in {self.seconds[label]:.1f} s")


def run_demo(settings: Settings, console: Console) -> dict[str, float]:
    from ops import launcher
    from serving.client import recommend_http
    from training.evaluate import evaluation_table

    steps = _Steps(console)
    run_offline(settings, copy=True, progress=steps)
    timings = steps.seconds
    steps.start("evaluate")
    rows = evaluation_table(settings, "champion", baselines=True)
    steps.done("evaluate", "")
    table = Table(title="Test split, full ranking over all items, k=10 (mean ± standard error)")
    for c in ("model", "HR@10", "NDCG@10", "MRR", "coverage@10"):
        table.add_column(c)
    for row in rows:
        table.add_row(row["model"], f"{row['hr_at_10']:.4f} ± {row['hr_at_10_se']:.4f}",
                      f"{row['ndcg_at_10']:.4f} ± {row['ndcg_at_10_se']:.4f}", f"{row['mrr']:.4f}",
                      f"{row['coverage_at_10']:.3f}")
    console.print(table)
    total = sum(timings.values())
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    console.print(f"offline pipeline wall time: {total:.0f} s ({parts})")

    steps.start("serve")
    url = launcher.up(settings)
    steps.done("serve", f"graph on {url}/recommend (Triton gRPC {settings.triton_grpc_url}, Ray dashboard "
                        f"http://127.0.0.1:{settings.ray_dashboard_port})")
    copy_ready(settings, console)
    for user_id in demo_users(settings):
        show_recommendations(console, recommend_http(settings, user_id, k=5))
    time.sleep(3)  # copy that missed its budget is generated in the background meanwhile
    console.print("the same request again: copies that were late now come from the copy cache")
    show_recommendations(console, recommend_http(settings, demo_users(settings)[0], k=5))
    feedback_round(settings, console, demo_users(settings)[0])
    where_next(settings, console, demo_users(settings)[0])
    return timings


def copy_ready(settings: Settings, console: Console, timeout_s: float = 900.0) -> str:
    """Wait for the copy stage's readiness (`GET /readyz/copy`: the copy model loaded, its cache warmed), so the
    tables below show model-written copy; say how long it took. Returns the copy version ("template": none)."""
    from ops.launcher import wait_copy_ready

    t0 = time.perf_counter()
    with console.status("waiting for the copy model to load and warm its cache…"):
        body = wait_copy_ready(settings, timeout_s) or {}
    version = body.get("copy", "template")
    waited = time.perf_counter() - t0
    if version == "template":
        console.print(f"copy: no copy model to serve, grounded templates ({waited:.0f} s)")
    else:
        console.print(f"copy model v{version} loaded and {body.get('warmed', 0)} popular items' copy cached in "
                      f"{waited:.0f} s")
    return version


def where_next(settings: Settings, console: Console, user_id: int) -> None:
    """The demo's last screen: where each part of the running stack can be looked at."""
    http = f"http://127.0.0.1:{settings.serve_http_port}"
    console.print("\n[bold]Where to look next[/] (the graph keeps running)")
    for label, how in (
        ("MLflow UI (runs, metrics, registry)",
         f"mlflow ui --backend-store-uri {settings.tracking_uri}"),
        ("Ray dashboard (Serve replicas, Train jobs)", f"http://127.0.0.1:{settings.ray_dashboard_port}"),
        ("HTTP", f"curl -s {http}/recommend -H 'Content-Type: application/json' "
                 f"-d '{{\"user_id\": {user_id}, \"k\": 5}}'"),
        ("gRPC (CLI)", f"recsys recommend {user_id} -k 5 --grpc"),
        ("gRPC (grpcurl)", f"grpcurl -plaintext -import-path serving/proto -proto recsys.proto -H "
                           f"'application: recsys' -d '{{\"user_id\": {user_id}, \"k\": 5}}' "
                           f"127.0.0.1:{settings.serve_grpc_port} recsys.v1.Recommender/Recommend"),
        ("API docs", f"{http}/docs"),
        ("Triton metrics", f"http://{settings.triton_host}:{settings.triton_metrics_port}/metrics"),
        ("stop everything", "recsys serve --down"),
    ):
        console.print(f"  {label}: {how}", markup=False, highlight=False, soft_wrap=True)


def feedback_round(settings: Settings, console: Console, user_id: int) -> None:
    """The real-time loop on one screen: the user clicks the top three recommendations; the very next
    answer reads the new sequence (those three drop out as seen, the rest follows what was clicked)."""
    from serving.client import feedback_http, recommend_http

    before = recommend_http(settings, user_id, k=5, include_copy=False)
    clicked = [it["item_id"] for it in before["items"][:3]]
    events = [{"user_id": user_id, "item_id": i, "event_type": "click", "request_id": before["request_id"]}
              for i in clicked]
    ack = feedback_http(settings, events)
    titles = ", ".join(it["title"] for it in before["items"][:3])
    console.print(f"feedback: user {user_id} clicked {titles} → {ack['accepted']} events logged, "
                  f"{'pushed to the online store' if ack['pushed'] else 'push pending (replayed later)'}")
    show_recommendations(console, recommend_http(settings, user_id, k=5))


def demo_users(settings: Settings) -> list[int]:
    """The first known user and one id nobody has (cold start)."""
    from training.datasets import prepare

    first = int(min(prepare(settings).train))
    return [first, 10**9]


def show_recommendations(console: Console, resp: dict) -> None:
    table = Table(title=f"user {resp['user_id']} · models {resp['model_versions']} · "
                        f"{resp['timings_ms']['total']:.0f} ms")
    for c in ("rank", "title", "score", "p(click)", "copy", "copy source"):
        table.add_column(c)
    for it in resp["items"]:
        p = (it.get("score_parts") or {}).get("p_click")
        title = (it["title"] or str(it["item_id"])) + (" [new: explored]" if it.get("explore") else "")
        table.add_row(str(it["rank"]), title, f"{it['score']:.3f}", "" if p is None else f"{p:.3f}",
                      it.get("copy") or "", it.get("copy_source", ""))
    console.print(table)
    for d in resp["degraded"]:
        console.print(f"[yellow]degraded {d['stage']}: {d['reason']} → {d['fallback']}[/]")
