"""One settings object naming every path, URI and port, so the same code runs on a laptop and in a cluster.

Precedence (highest first): explicit overrides → `RECSYS_*` environment variables → the settings file
(`RECSYS_SETTINGS_FILE`, YAML) → the profile file (`core/profiles/<RECSYS_PROFILE>.yaml`) → defaults.
Unknown keys are rejected by name wherever they come from; the Helm chart renders the same YAML file.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import ConfigError
from core.secret_files import load_secret_files

ENV_PREFIX = "RECSYS_"
PROFILES_DIR = Path(__file__).parent / "profiles"
# Variables read outside the model (they choose where settings come from).
# FEAST_DIR is exported for the feast CLI; DEBUG shows tracebacks.
_META_ENV = {"RECSYS_PROFILE", "RECSYS_SETTINGS_FILE", "RECSYS_FEAST_DIR", "RECSYS_DEBUG"}


class Settings(BaseModel):
    """Every key has a default that works on one machine; profiles and env vars override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "dev"  # name of the profile file the values came from
    home: Path = Path(".recsys")  # root of all generated state (data, features, runs, exports)
    data: Path | None = None  # raw MovieLens directory to load; None → shared ML-100K or synthetic
    shared_data: Path = Path("../shared/data/ml-100k")  # fallback raw data when `data` is unset
    min_user_interactions: int = 5  # users with fewer interactions are dropped before the split

    feature_repo: Path = Path("feature_repo")  # Feast repo with the definitions
    feast_project: str = "recsys"  # Feast project name (namespace in registry and stores)
    feast_online_store: dict[str, Any] | None = None  # Feast online_store block; None → SQLite in home
    feast_registry: str | None = None  # Feast registry path/URI; None → file in home
    feature_server_url: str = "http://127.0.0.1:6566"  # Feast feature server (cluster mode)
    feature_read: Literal["sdk", "server"] = "sdk"  # serving reads/pushes via the SDK, or the feature server
    feature_server_timeout_s: float = 2.0  # HTTP timeout of one feature-server call
    sequence_length: int = 50  # most recent item ids kept in the user profile (the model's input)
    # An item reached by any other event type (a purchase, a rating) is never recommended to that user again.
    repeat_event_types: list[Literal["click", "view", "rate", "favorite", "purchase"]] = []  # may repeat, e.g. view
    max_seen_items: int = 10_000  # excluded items kept per user (the most recent), bounding the online row
    content_model: str = "all-MiniLM-L6-v2"  # sentence-transformers model for item text embeddings

    mlflow_tracking_uri: str | None = None  # None → SQLite DB in home; http://… for a server
    mlflow_artifact_root: Path | None = None  # None → home/mlartifacts (server mode: the server's store)
    mlflow_experiment: str = "recsys"  # experiment every run logs to

    ray_address: str | None = None  # None → start an embedded local Ray; "auto"/ray://… in a cluster
    ray_num_cpus: int = 2  # CPUs of the embedded local Ray
    ray_dashboard: bool = True  # Ray dashboard on 127.0.0.1:<ray_dashboard_port> (off in tests)
    ray_dashboard_port: int = 8265  # Ray dashboard (local head started by `recsys serve`)
    ray_head_port: int = 6379  # GCS port of the local Ray head that `recsys serve` starts
    train_workers: int = 2  # Ray Train workers (retrieval: members split between them where they can; else replicas)
    use_gpu: bool = False  # one GPU per Ray Train worker
    retrieval_epochs: int = 100  # epochs of the retrieval model at most (the best validation epoch is kept)
    retrieval_patience: int = 10  # stop after this many epochs without a better validation NDCG@10 (0: never)
    retrieval_plateau: int = 0  # halve the learning rate after this many epochs without one (0: never)
    retrieval_budget_s: float = 0.0  # stop after the epoch that passes this many seconds of training (0: none)
    retrieval_refit_epochs: int = 3  # then this many from the kept weights over the validation targets too, averaged
    retrieval_window_overlap: float = 0.0  # share of a retrieval training window that is context only (0: side by side)
    retrieval_members: int = 2  # independent encoders trained side by side, scores summed (one dot product; 1: single)
    retrieval_member_dim: int = 64  # each member's hidden size; the served user and item vectors: members × this
    retrieval_heads: int = 2  # attention heads in each member's blocks (retrieval_member_dim / this features each)
    retrieval_mask_seen: bool = True  # the training softmax leaves out the items a window shows (never recommended)
    retrieval_mask_prior: int = 0  # with it, also the user's latest this many items before each window (0: none)
    retrieval_average_epochs: float = 2.7  # horizon in epochs of the weight average validation judges (0: raw weights)
    ranking_epochs: int = 4  # epochs of the ranking model
    ranking_refit_epochs: int = 2  # then this many epochs over examples through the validation interactions
    seed: int = 0  # seed for data splits, sampling and initialisation

    copy_base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # any hub causal LM; SmolLM2 also offline (GGUF)
    copy_steps: int = 200  # LoRA optimizer steps of the copy LM (batch 8)
    copy_train_pairs: int = 1000  # (facts, copy) training pairs drawn from the interactions (each step draws 8 of them)
    copy_eval_items: int = 100  # held-out (never trained on) items the copy LM is evaluated on
    copy_parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp: each worker holds the model; fsdp: sharded (big bases)
    model_cache_dir: Path | None = None  # converted base models; None → ~/.cache/recsys-platform/models
    copy_lm: bool = True  # serve the copy LM champion when one is exported (False: template copy only)
    copy_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where the CPU has native bf16
    copy_use_gpu: bool = False  # the copy replica generates on a GPU (cluster)
    copy_threads: int = 2  # torch CPU threads of the copy replica's generation
    copy_cache_size: int = 50_000  # generated copies kept per replica, by (item, taste bucket)
    copy_near_cache_size: int = 10_000  # the copy stage's final copies each Ingress replica keeps, ~1 KB each (0: none)
    copy_max_pending: int = 40  # copies a copy replica generates at once; a miss past it gets the template (0: no cap)
    copy_warm_items: int = 100  # after a copy model loads, the most popular items get copy in the background
    copy_ahead_users: int = 50  # after a copy export, the most active users' lists get copy written ahead (0: none)
    copy_ahead_actors: int = 1  # copy models the copy-ahead job runs at once (one GPU each if use_gpu or copy_use_gpu)

    promotion_policy: Path = Path("mlflow/promotion_policy.yaml")  # the promotion gate, as data
    kserve_inference_service: str | None = None  # set (cluster): promoting the ranker repoints this InferenceService
    kserve_namespace: str | None = None  # its namespace; None → the pod's own namespace (or POD_NAMESPACE)
    kserve_publish_uri: str | None = None  # where promoted rankers are published (s3://bucket/rankers/ranker-v<N>)
    kserve_backend: Literal["python", "onnxruntime"] = "onnxruntime"  # Triton form of the published repository
    kserve_ready_timeout_s: float = 600.0  # rollout waits this long for the InferenceService to be Ready
    kserve_rayservice: str | None = None  # RayService whose ranker route (Ingress) a rollout switches (chart sets it)

    triton_host: str = "127.0.0.1"  # Triton (local process or the KServe predictor host)
    triton_grpc_port: int = 8101  # Triton gRPC (KServe v2 protocol); 9000 behind KServe
    triton_http_port: int = 8100  # Triton HTTP (8100, not Triton's 8000: Ray Serve's HTTP port is 8000)
    triton_metrics_port: int = 8102  # Triton Prometheus metrics
    triton_venv: Path = Path(".venv-triton")  # local tritonserver's own venv (numpy < 2), made by `make install`
    triton_start_timeout_s: float = 60.0  # how long `recsys triton up` waits for readiness
    triton_cache_mb: int = 16  # local Triton's response cache (MiB): a repeated ranker request skips the model; 0: off
    model_repository: Path | None = None  # Triton model repository; None → home/model_repository

    serve_host: str = "127.0.0.1"  # Ray Serve HTTP proxy bind address (0.0.0.0 in a cluster)
    serve_http_port: int = 8000  # Ray Serve HTTP: POST /recommend
    serve_grpc_port: int = 9100  # Ray Serve gRPC proxy: recsys.Recommender
    serve_app_name: str = "recsys"  # Serve application name (RayService serveConfigV2 uses the same)
    serve_replica_cpus: float = 0.0  # CPU reserved per replica: 0 on a 2-core laptop, 1+ in a cluster
    serve_start_timeout_s: float = 300.0  # how long `recsys serve` waits for every replica of the graph to run
    serve_throughput_optimized: bool = True  # Ray's HAProxy ingress + direct gRPC between replicas (≈5× here)
    recall_candidates: int = 200  # N candidates recall hands to ranking
    exact_recall_max_items: int = 20_000  # up to this many items recall scores them all (exact, cheaper than HNSW)
    # 0: the ranker's blend is chosen on recall's candidates alone, and popular ones it never saw there pulled
    # served HR@10 down (ML-100K test 0.176 → 0.156 with 50, README log).
    popular_candidates: int = 0  # popular items added to a known user's candidates (an unknown user's are all popular)
    popularity_half_life_h: float = 72.0  # the popular channel's counts halve this often (events since the rebuild add)
    new_item_candidates: int = 10  # items upserted since the last retrain that recall adds as their own channel
    explore_share: float = 0.1  # share of the k slots given to the best new item, if any (0: no exploration)
    catalogue_poll_s: float = 1.0  # how often replicas read the catalogue log and the events (popularity)
    catalogue_encoder_idle_s: float = 30.0  # the upserts' item encoder is unloaded after this long unused (~60 MB)
    max_per_genre_share: float = 0.5  # diversity rule: at most this share of top-k with the same first genre
    features_timeout_ms: float = 150.0  # per-stage timeouts; past them the stage's degraded answer is used
    recall_timeout_ms: float = 250.0  # past it: popular items, flagged degraded
    ranking_timeout_ms: float = 400.0  # past it: recall's order, flagged degraded
    copy_timeout_ms: float = 800.0  # past it: the grounded template copy, flagged degraded
    breaker_failures: int = 5  # a stage failing this many times in a row is skipped (0: never skipped)...
    breaker_cooldown_s: float = 2.0  # ...for this long, then one request tries it again
    admission_limit: int = 16  # /recommend requests in progress per Ingress replica; more wait (0: no limit)...
    admission_queue: int = 32  # ...at most this many; past it HTTP 503 / gRPC UNAVAILABLE at once (Retry-After)
    admission_wait_ms: float = 100.0  # a waiting request that gets no slot within this long is refused the same way
    copy_budget_ms: float = 600.0  # what copy may add to an answer: past it, template now, the model copy cached later
    copy_hop_ms: float = 40.0  # of that budget, left for the hops to and from the Copy replica (it answers before)
    max_request_bytes: int = 16_384  # larger bodies get HTTP 413
    max_catalogue_request_bytes: int = 1_048_576  # POST /items (catalogue upserts) bodies over it get HTTP 413
    grpc_max_message_bytes: int = 1_048_576  # larger gRPC messages are refused (RESOURCE_EXHAUSTED) by Serve's proxy
    item_cache_ttl_s: float = 300.0  # serving keeps item feature rows this long (0: read Feast every request)
    impression_log_dir: Path | None = None  # impression log (JSON lines per replica); None → home/impressions
    event_log: Path | None = None  # feedback event log (SQLite, WAL, fsync per commit); None → home/events/events.db
    event_log_url: str | None = None  # redis://host:port/db → the log is a Redis stream (replicas on many nodes)
    feedback_replay_s: float = 1.0  # how often unpushed profiles are retried against the online store
    feedback_timeout_ms: float = 3000.0  # POST /feedback stage timeout (durable append + push)
    api_keys: list[str] = []  # keys accepted on write endpoints (Authorization: Bearer KEY); none → writes refused
    api_keys_file: Path | None = None  # more keys, one per line (a mounted Kubernetes Secret in the chart)
    api_key: str | None = None  # the key this machine's CLI sends
    read_requires_key: bool = False  # /recommend (HTTP and gRPC) needs one of the same keys too → 401 without
    write_rate_per_s: float = 200.0  # write requests per second per key and Ingress replica (0: unlimited) → 429
    write_burst: int = 400  # requests a key may send at once before the rate applies

    @property
    def event_log_path(self) -> Path:
        return self.event_log or self.home / "events" / "events.db"

    def accepted_keys(self) -> list[str]:
        """Keys from settings plus the keys file (read each call: a rotated Secret applies without restart)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None and self.api_keys_file.exists():
            keys += [k.strip() for k in self.api_keys_file.read_text().splitlines() if k.strip()]
        return keys

    @cached_property
    def data_dir(self) -> Path:
        """Prepared canonical tables (Parquet)."""
        return self.home / "data"

    @cached_property
    def features_dir(self) -> Path:
        """Feast offline sources, registry and SQLite online store; never in the repository."""
        return self.home / "features"

    @property
    def impressions_dir(self) -> Path:
        """What the graph showed and which model versions chose it (joined with feedback on request_id)."""
        return self.impression_log_dir or self.home / "impressions"

    @cached_property
    def runs_dir(self) -> Path:
        """Ray Train storage: checkpoints survive a crash here and resume from it."""
        return self.home / "ray_results"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.mlflow_artifact_root or self.home / "mlartifacts").resolve()

    @property
    def model_cache(self) -> Path:
        """Outside every home: converting the base model once per machine is enough."""
        return (self.model_cache_dir or Path("~/.cache/recsys-platform/models")).expanduser()

    @property
    def model_repo(self) -> Path:
        return self.model_repository or self.home / "model_repository"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"settings file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"settings file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must be a mapping of keys to values")
    return data


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _META_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in fields:
            raise ConfigError(f"unknown setting {name} (known: {', '.join(sorted(fields))})")
        # YAML parsing gives env vars the same typing as the settings file (true, 3, {type: redis}).
        out[key] = yaml.safe_load(value) if value.strip() else None
    return out


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Merge profile, settings file, environment and overrides into one validated Settings.

    Reading the process environment also loads mounted credentials (`<NAME>_FILE`, see core.secret_files).
    """
    if environ is None:
        load_secret_files()
    env = dict(os.environ if environ is None else environ)
    profile = env.get("RECSYS_PROFILE", "dev")
    profile_file = PROFILES_DIR / f"{profile}.yaml"
    if not profile_file.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown profile {profile!r} (known: {known})")
    values: dict[str, Any] = {**_read_yaml(profile_file), "profile": profile}
    if env.get("RECSYS_SETTINGS_FILE"):
        values.update(_read_yaml(Path(env["RECSYS_SETTINGS_FILE"])))
    values.update(_from_env(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"invalid setting {where}: {err['msg']}") from e

