"""The two sequences every entry point runs: `run_offline` (data → features → train → promote → export) and
`go_live` (put promoted champions in front of traffic, wherever serving runs). The CLI, `make demo`, the bench,
`recsys retrain` and the cluster's jobs call these instead of repeating the order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import PromotionRefused, RecsysError, one_line
from core.names import COPY_MODEL, RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings

# (key, label): the key names the step in results files, the label is what a person reads.
STEPS = (("data", "data"), ("features", "features"), ("train_retrieval", "train retrieval"),
         ("train_ranking", "train ranking"), ("train_copy", "train copy LM"), ("promote", "promote"),
         ("export", "export"), ("copy_ahead", "write copy ahead"))


class Progress:
    """What `run_offline` reports: a step starts, a step ends with a one-line summary. Silent by default."""

    def start(self, label: str) -> None: ...

    def done(self, label: str, summary: str) -> None: ...


@dataclass
class OfflineRun:
    source: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    ranking: dict[str, Any] = field(default_factory=dict)
    copy: dict[str, Any] | None = None
    decisions: list[str] = field(default_factory=list)  # one line per model the gate judged
    export: Any = None  # training.export.ExportResult
    ahead: Any = None  # serving.copy_ahead.AheadSummary, when a copy model was exported
    seconds: dict[str, float] = field(default_factory=dict)  # step key → wall seconds


def run_offline(settings: Settings, *, copy: bool = True, force: bool = False,
                progress: Progress | None = None) -> OfflineRun:
    """The whole offline pipeline on `settings`. `copy`: also fine-tune and promote the copy LM. `force`: promote
    whatever the gate says (the bench measures the pipeline, not the gate); otherwise a refused challenger leaves
    the previous champion in place and its reason is in `decisions`."""
    from ops.kserve import live_uri, publish_live
    from training.copy_steps import train_copy_step
    from training.export import export_repository
    from training.promotion import promote
    from training.steps import build_feature_store, prepare_data, train_ranking_step, train_retrieval_step

    p = progress or Progress()
    run = OfflineRun()
    labels = dict(STEPS)

    def step(key: str, fn: Callable[[], Any], summary: Callable[[Any], str]) -> Any:
        p.start(labels[key])
        t0 = time.perf_counter()
        out = fn()
        run.seconds[key] = round(time.perf_counter() - t0, 1)
        p.done(labels[key], summary(out))
        return out

    data = step("data", lambda: prepare_data(settings), lambda r: f"{r.manifest['counts']} from {r.source}")
    run.source, run.counts = data.source, data.manifest["counts"]
    run.features = step("features", lambda: build_feature_store(settings), str)
    run.retrieval = step("train_retrieval", lambda: train_retrieval_step(settings),
                         lambda r: f"retrieval v{r['version']}: val NDCG@10 {r['val_ndcg_at_10']:.4f}")
    run.ranking = step("train_ranking", lambda: train_ranking_step(settings), lambda k: (
        f"ranker v{k['version']}: val NDCG@10 {k['val_ndcg_at_10']:.4f} (recall alone "
        f"{k['recall_val_ndcg_at_10']:.4f}), AUC {k['val_auc']:.3f}, rating RMSE {k['val_rating_rmse']:.3f}"))
    models = [RETRIEVAL_MODEL, RANKER_MODEL]
    if copy:
        run.copy = step("train_copy", lambda: train_copy_step(settings), lambda c: (
            f"copy LM v{c['version']} ({settings.copy_base_model} + LoRA, {settings.copy_steps} steps): factuality "
            f"on held-out items {c['base_val_factuality']:.2f} (base) → {c['val_factuality']:.2f}, perplexity "
            f"{c['base_val_perplexity']:.2f} → {c['val_perplexity']:.2f}"))
        models.append(COPY_MODEL)

    def gate() -> list[str]:
        for name in models:
            try:
                d = promote(settings, name, force=force)
                run.decisions.append(f"{name}: champion is now v{d.version}")
            except PromotionRefused as e:
                run.decisions.append(f"{e} (the previous champion stays)")
        return run.decisions

    step("promote", gate, "\n".join)

    def export() -> Any:
        out = export_repository(settings)
        publish_live(settings)  # in a cluster: what the InferenceService loads until the first rollout
        return out

    run.export = step("export", export, lambda ex: (
        f"Triton repository {ex.repository} {ex.versions}; recall index {ex.index_dir}"
        + (f"; ranker published to {live_uri(settings.kserve_publish_uri)}" if settings.kserve_publish_uri else "")))
    if copy and settings.copy_ahead_users > 0 and "copy" in run.export.versions:
        run.ahead = step("copy_ahead", lambda: _best_effort(lambda: write_copy_ahead(
            settings, settings.copy_ahead_users)), lambda a: (
            f"copy LM v{a.version}: {a.copies} copies written ahead for the {a.users} most active users' lists "
            f"({a.model_copies} pass the guard) in {a.seconds:.0f} s → {a.path}") if not isinstance(a, str) else a)
    return run


def _best_effort(fn: Callable[[], Any]) -> Any:
    """Copy written ahead only saves requests a miss: when it fails, the models are still trained, promoted and
    exported, so the pipeline says why and goes on."""
    try:
        return fn()
    except Exception as e:
        return f"copy not written ahead ({one_line(e)}): requests generate it as cache misses"


def write_copy_ahead(settings: Settings, users: int | list[int], k: int = 10) -> Any:
    """`serving.copy_ahead` for these users, or for the `users` most active users of the training data (the
    likeliest to ask next), on the training Ray cluster (in a cluster: the RayJob's, with its GPU workers)."""
    from serving.copy_ahead import copy_ahead
    from training.datasets import prepare
    from training.ray_cluster import ensure_ray

    if isinstance(users, int):
        counts = prepare(settings).ds.interactions["user_id"].value_counts(sort=True)
        users = [int(u) for u in counts.index[:users]]
    ensure_ray(settings)
    return copy_ahead(settings, users, k)


@dataclass
class Live:
    """What going live changed: one line per change, and the KServe rollout when serving runs in a cluster."""

    lines: list[str] = field(default_factory=list)
    rollout: Any = None  # ops.kserve.Rollout


def serving_live(settings: Settings) -> bool:
    """A running Triton or graph on this machine over an exported repository: promotion then swaps in place."""
    from core.artifacts import read_route
    from ops import launcher, triton_server

    try:
        read_route(settings)
    except RecsysError:
        return False  # nothing exported yet: `recsys export` writes the champion
    return triton_server.ready(settings) or launcher.healthy(settings)


def go_live(settings: Settings, promoted: Mapping[str, str]) -> Live:
    """Serve the champions just promoted (registered name → version).

    The ranker is only valid beside the retrieval model it was trained on: when both were promoted, the new
    retrieval files (CURRENT last) go out first and the ranker route moves with them; a ranker alone moves only
    the route. In a cluster (settings name a KServe InferenceService) through `ops.kserve.rollout_ranker`;
    locally through `ops.rollout.promote_live` when Triton or the graph runs, else an export for the next
    `recsys serve` (both models) or nothing (a ranker alone: `recsys export` when wanted). A promoted copy LM is
    exported and the running graph reconfigured onto it.
    """
    from ops import launcher
    from ops.rollout import promote_live
    from training.copy_steps import export_copy
    from training.export import export_repository, export_retrieval

    live = Live()
    ranker = promoted.get(RANKER_MODEL)
    both = ranker is not None and RETRIEVAL_MODEL in promoted
    if ranker is not None and settings.kserve_inference_service:
        from ops.kserve import rollout_ranker

        retrieval = export_retrieval(settings)[1] if both else None  # onto the state volume Recall reads
        r = live.rollout = rollout_ranker(settings, ranker, retrieval=retrieval)
        graph = (f"RayService {r.rayservice}: ranker {r.route_after}, Recall v{r.retrieval}" if r.route_after
                 else "no kserve_rayservice: the graph was not switched")
        live.lines.append(f"serving: cluster: InferenceService {r.name} serves {r.storage_uri} (Ready); {graph}")
    elif ranker is not None and serving_live(settings):
        retrieval = export_retrieval(settings)[1] if both else None
        res = promote_live(settings, ranker)
        live.lines.append("serving: " + (f"retrieval v{retrieval} and " if retrieval else "")
                          + f"ranker v{res.before.champion} → v{res.after.champion} live "
                          f"(triton {'switched' if res.triton else 'not running'}, "
                          f"graph {'reconfigured' if res.graph else 'not running'})")
    elif both:
        export_repository(settings)
        live.lines.append("serving: exported; the next `recsys serve` starts with the new champions")
    if COPY_MODEL in promoted:
        version = export_copy(settings)
        loading = serving_live(settings) and launcher.reconfigure(settings)
        live.lines.append(f"copy LM v{version} exported" + (" and loading in the running graph" if loading else ""))
    return live
