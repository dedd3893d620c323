"""The floor graph: the platform's request path with its work taken out, the reference its serving speed is
reported against (issue 30).

Same hops as `/recommend` without copy: HTTP (the same proxy, HAProxy in throughput mode) → an ingress replica
(FastAPI) → one Serve hop to a recall replica → one gRPC round trip to a tritonserver python-backend model →
JSON answer. The recall replica returns a fixed candidate list of the platform's size; the Triton model returns
zeros for them; nothing reads features, runs a model or applies a rule. Its model has Triton's response cache on,
as the ranker has (`training.export.RESPONSE_CACHE`): a repeated request is answered by tritonserver alone on both
paths, so the floor skips what the platform skips. It is deployed as a second Serve app (`/floor`) beside the
platform, on the same Ray head, proxy and tritonserver, so both are measured by the same client in the same
sitting, interleaved.
"""

# No `from __future__ import annotations`: FastAPI must see `Request` itself in the route signature under
# Serve's class-based ingress, else it takes `request` for a query parameter and answers 422.
import json
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.settings import Settings, load_settings

FLOOR_APP = "floor"
FLOOR_PREFIX = "/floor"
FLOOR_MODEL = "floor_zeros"

ZERO_MODEL = '''"""Floor model for `make bench` (recsys/bench/floor.py): zeros, one per input row, no work."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, "item").as_numpy().shape[0]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("p_click", np.zeros((n, 1), np.float32))]))
        return out
'''

ZERO_CONFIG = f'''name: "{FLOOR_MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "item" data_type: TYPE_INT64 dims: [ -1, 1 ] }} ]
output [ {{ name: "p_click" data_type: TYPE_FP32 dims: [ -1, 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
response_cache {{ enable: true }}
'''


def write_zero_model(repo: Path) -> Path:
    """The zeros model in the (bench's throwaway) model repository, beside the ranker."""
    root = repo / FLOOR_MODEL
    (root / "1").mkdir(parents=True, exist_ok=True)
    (root / "1" / "model.py").write_text(ZERO_MODEL)
    (root / "config.pbtxt").write_text(ZERO_CONFIG)
    return root


def candidate_count(settings: Settings) -> int:
    """As many candidates as the platform's recall hands to ranking for a known user: the champion ranker's model
    channel (the count it re-orders, chosen on validation; `RankingStage.pool`) and the popular channel."""
    from core.artifacts import model_info, read_route
    from core.names import RANKER
    from serving.ranking import pool_size

    chosen = int(model_info(settings, RANKER, read_route(settings).champion).config.get("candidates", 0))
    return pool_size(settings, chosen) + settings.popular_candidates


api = FastAPI(title="floor")


@serve.deployment(name="FloorRecall", max_ongoing_requests=32)
class FloorRecall:
    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    async def recall(self, user_id: int) -> list[int]:
        return self.ids


@serve.deployment(name="FloorIngress", max_ongoing_requests=64)
@serve.ingress(api)
class FloorIngress:
    def __init__(self, recall: DeploymentHandle, triton_url: str) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.recall, self.url, self.grpc = recall, triton_url, grpcclient
        self.client = None

    @api.post("/recommend")
    async def recommend(self, request: Request) -> Response:
        body = json.loads(await request.body())
        t0 = time.perf_counter()
        ids: list[int] = await self.recall.recall.remote(int(body["user_id"]))
        t1 = time.perf_counter()
        if self.client is None:  # a grpc.aio channel belongs to the loop it was made in
            self.client = self.grpc.InferenceServerClient(self.url)
        t = self.grpc.InferInput("item", [len(ids), 1], "INT64")
        t.set_data_from_numpy(np.asarray(ids, dtype=np.int64)[:, None])
        res = await self.client.infer(FLOOR_MODEL, [t], outputs=[self.grpc.InferRequestedOutput("p_click")])
        scores = res.as_numpy("p_click")[:, 0]
        t2 = time.perf_counter()
        k = int(body.get("k", 10))
        items = [{"item_id": i, "score": float(s)} for i, s in zip(ids[:k], scores[:k], strict=True)]
        # Timed as the platform times its stages (`Ingress._recommend`), so the two stage tables compare.
        timings = {"recall": (t1 - t0) * 1e3, "ranking": (t2 - t1) * 1e3, "total": (time.perf_counter() - t0) * 1e3}
        return Response(json.dumps({"user_id": body["user_id"], "items": items, "degraded": [],
                                    "timings_ms": timings}), media_type="application/json")


def build(settings: Settings):
    opts = {"num_cpus": settings.serve_replica_cpus}
    return FloorIngress.options(ray_actor_options=opts).bind(
        FloorRecall.options(ray_actor_options=opts).bind(candidate_count(settings)), settings.triton_grpc_url)


def app_config(runtime_env: dict) -> dict:
    """The floor as one more application of the platform's Serve deploy config, with the platform's env and its
    request-path replicas' logging (`ops.launcher.REQUEST_PATH_LOGGING`): a framework setting both pay alike."""
    from ops.launcher import REQUEST_PATH_LOGGING

    return {"name": FLOOR_APP, "route_prefix": FLOOR_PREFIX, "import_path": "recsys.bench.floor:app",
            "runtime_env": runtime_env,
            "deployments": [{"name": name, "logging_config": REQUEST_PATH_LOGGING}
                            for name in ("FloorIngress", "FloorRecall")]}


def up(settings: Settings) -> str:
    """Load the zeros model into the running tritonserver and deploy the floor beside the platform's app;
    returns the floor's /recommend URL."""
    from core.endpoints import http_url
    from ops import launcher, triton_server

    write_zero_model(settings.model_repo)
    triton_server.load_model(settings, FLOOR_MODEL)
    cfg = launcher.serve_config(settings)
    cfg["applications"].append(app_config(cfg["applications"][0]["runtime_env"]))
    launcher.apply(settings, cfg, FLOOR_APP)
    return f"{http_url(settings)}{FLOOR_PREFIX}/recommend"


def down(settings: Settings) -> None:
    """The platform's app alone again (a declarative deploy without the floor deletes it), the zeros unloaded."""
    from ray.serve.context import _get_global_client

    from ops import launcher, triton_server

    launcher.deploy(settings)
    client = _get_global_client()
    deadline = time.monotonic() + 60
    while FLOOR_APP in {st.name for st in client.list_serve_statuses()} and time.monotonic() < deadline:
        time.sleep(0.5)  # its replicas shut down after the deploy returns: gone before anything else is measured
    triton_server.unload_model(settings, FLOOR_MODEL, wait_s=30)


app = build(load_settings())

