"""The graph's own Prometheus metrics (beside Ray Serve's): requests, latency per stage, degraded answers.

Exported through Ray's metrics endpoint (scraped in the cluster; the chart's dashboard plots them).
"""

from __future__ import annotations

from ray.util import metrics

_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


class StageMetrics:
    def __init__(self) -> None:
        self.requests = metrics.Counter("recsys_requests_total", "Recommendation requests answered.")
        self.degraded = metrics.Counter("recsys_degraded_total", "Responses with a degraded stage.",
                                        tag_keys=("stage",))
        self.latency = metrics.Histogram("recsys_stage_latency_ms", "Latency per graph stage (ms).",
                                         boundaries=_BOUNDARIES_MS, tag_keys=("stage",))
        self.copy_answers = metrics.Counter("recsys_copy_answers_total", "Requests' copy by where it came from: "
                                            "the Ingress's near cache or the Copy stage.", tag_keys=("source",))

    def observe(self, stage: str, ms: float) -> None:
        self.latency.observe(ms, tags={"stage": stage})

    def request(self, total_ms: float, degraded_stages: list[str]) -> None:
        self.requests.inc()
        self.latency.observe(total_ms, tags={"stage": "total"})
        for s in degraded_stages:
            self.degraded.inc(tags={"stage": s})
