"""`recsys`: one sub-command per pipeline step. Each parses → calls one library function → renders.

Every failure exits non-zero with one readable line (set RECSYS_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core.errors import MissingStepError, RecsysError
from core.quiet import quiet_third_party
from core.settings import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Offline pipeline: data → features → train → evaluate → promote → export.")
console = Console()
err = Console(stderr=True)


def settings() -> Settings:
    return load_settings()


@app.callback()
def main_options(
    profile: Annotated[str | None, typer.Option(help="Settings profile: dev, ci, gpu.")] = None,
    home: Annotated[Path | None, typer.Option(help="Root of generated state (default .recsys).")] = None,
    settings_file: Annotated[Path | None, typer.Option(help="YAML settings file (the chart renders one).")] = None,
) -> None:
    # Options become env vars so every process started from here (Ray workers, the serving stack) sees one config.
    for name, value in (("RECSYS_PROFILE", profile), ("RECSYS_HOME", home), ("RECSYS_SETTINGS_FILE", settings_file)):
        if value is not None:
            os.environ[name] = str(value)
    load_settings()  # fail fast on bad settings, before any work


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[_fmt(r.get(c, "")) for c in columns])
    return t


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


class Download(StrEnum):
    ml_100k = "ml-100k"
    ml_latest_small = "ml-latest-small"


@app.command()
def data(
    source: Annotated[Path | None, typer.Option("--data", "--source", help="MovieLens directory (ML-100K or "
                                                "ml-latest format).")] = None,
    download: Annotated[Download | None, typer.Option(help="Download from GroupLens (needs network).")] = None,
    synthetic: Annotated[bool, typer.Option(help="Generate synthetic data with planted structure.")] = False,
) -> None:
    """Load interaction logs into the canonical Parquet tables."""
    from training.steps import prepare_data

    if sum(x is not None and x is not False for x in (source, download, synthetic)) > 1:
        raise typer.BadParameter("choose one of --data, --download, --synthetic")
    with console.status("loading data"):
        res = prepare_data(settings(), source, download.value if download else None, synthetic)
    m = res.manifest
    console.print(f"data: {m['counts']} from {res.source} → {settings().data_dir}")


@app.command()
def features() -> None:
    """Build the Feast offline sources, `feast apply`, and materialize into the online store."""
    from training.steps import build_feature_store, require_data

    s = settings()
    require_data(s)
    with console.status("building features (content embeddings, apply, materialize)"):
        stats = build_feature_store(s)
    console.print(f"features: {stats} → {s.features_dir}")


class Model(StrEnum):
    retrieval = "retrieval"
    ranking = "ranking"
    copy = "copy"
    all = "all"


@app.command()
def train(
    model: Annotated[Model, typer.Argument(help="Which model to train.")] = Model.all,
    resume: Annotated[bool, typer.Option(help="Resume the interrupted run from its latest checkpoint.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the epochs of the chosen model.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="One GPU per worker.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Copy LM: LoRA optimizer steps.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Copy LM: base model (hub name or local path).")] = None,
) -> None:
    """Train on Ray Train, log to MLflow, register the new versions as `challenger` (`all` = retrieval, ranking
    and the copy LM)."""
    from training.steps import train_ranking_step, train_retrieval_step

    if workers is not None:
        os.environ["RECSYS_TRAIN_WORKERS"] = str(workers)
    if gpu is not None:
        os.environ["RECSYS_USE_GPU"] = str(gpu).lower()
    if epochs is not None and model in (Model.all, Model.copy):
        raise typer.BadParameter("--epochs needs retrieval or ranking (the copy LM takes --steps)")
    if (steps is not None or base_model is not None) and model != Model.copy:
        raise typer.BadParameter("--steps and --base-model are for `recsys train copy`")
    if base_model is not None:
        os.environ["RECSYS_COPY_BASE_MODEL"] = base_model
    s = settings()
    overrides = {"epochs": epochs} if epochs is not None else {}
    rows = []
    if model in (Model.retrieval, Model.all):
        console.print("training retrieval (Ray Train, MLflow)…")
        rows.append(train_retrieval_step(s, resume=resume, **overrides))
    if model in (Model.ranking, Model.all):
        console.print("training ranking (Ray Train, MLflow)…")
        rows.append(train_ranking_step(s, resume=resume and model == Model.ranking, **overrides))
    if rows:
        console.print(_table("trained (registered as challenger)", rows,
                             ["model", "version", "val_hr_at_10", "val_ndcg_at_10", "test_hr_at_10",
                              "test_ndcg_at_10", "train_seconds"]))
    if model in (Model.copy, Model.all):
        from training.copy_steps import train_copy_step

        console.print(f"fine-tuning the copy LM ({s.copy_base_model}, LoRA, Ray Train, MLflow)…")
        c = train_copy_step(s, resume=resume and model == Model.copy, **({"steps": steps} if steps else {}))
        console.print(_table("copy LM on held-out items (registered as challenger)", [
            {"model": "base", "factuality": c["base_val_factuality"], "perplexity": c["base_val_perplexity"],
             "distinct_2": c["base_val_distinct_2"]},
            {"model": f"{c['model']} v{c['version']}", "factuality": c["val_factuality"],
             "perplexity": c["val_perplexity"], "distinct_2": c["val_distinct_2"],
             "train_seconds": c["train_seconds"]}], ["model", "factuality", "perplexity", "distinct_2",
                                                    "train_seconds"]))


@app.command()
def evaluate(
    alias: Annotated[str, typer.Option(help="Registry alias to evaluate: champion or challenger.")] = "challenger",
    baselines: Annotated[bool, typer.Option(help="Also run MostPop, item-kNN, EASE, BPR-MF.")] = True,
) -> None:
    """Full-ranking HR@10 / NDCG@10 / MRR (± SE) of the registered models beside baselines."""
    from training.evaluate import evaluation_table

    with console.status("evaluating"):
        rows = evaluation_table(settings(), alias, baselines)
    console.print(_table(f"test split, full ranking, k=10 ({alias})", rows,
                         ["model", "hr_at_10", "hr_at_10_se", "ndcg_at_10", "ndcg_at_10_se", "mrr", "coverage_at_10"]))


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="recsys-retrieval, recsys-ranker, recsys-copy (or retrieval, ranking, "
                                        "copy, all).")],
    force: Annotated[bool, typer.Option(help="Promote even if the policy fails (recorded as forced).")] = False,
    to_version: Annotated[str | None, typer.Option(help="Roll back: point champion at this version.")] = None,
) -> None:
    """Move the `champion` alias if the promotion policy (mlflow/promotion_policy.yaml) passes."""
    from core.names import COPY_MODEL, MODELS
    from ops.pipeline import go_live
    from training.promotion import promote as run_promotion

    known = [*MODELS, COPY_MODEL]
    names = {"retrieval": ["recsys-retrieval"], "ranking": ["recsys-ranker"], "copy": [COPY_MODEL],
             "all": known}.get(model, [model])
    if any(n not in known for n in names):
        raise typer.BadParameter(f"unknown model {model!r}: use one of {', '.join(known)}, retrieval, ranking, copy, "
                                 "all")
    if to_version and len(names) > 1:
        raise typer.BadParameter("--to-version needs one model")
    s = settings()
    promoted: dict[str, str] = {}
    for name in names:
        try:
            d = run_promotion(s, name, force=force, to_version=to_version)
        except MissingStepError:
            if model != "all" or name != COPY_MODEL:
                raise
            console.print(f"{name}: no challenger (`recsys train copy`); the graph serves template copy")
            continue
        verb = "rolled back to" if to_version else ("force-promoted" if d.forced else "promoted")
        console.print(f"{name}: {verb} v{d.version} (previous champion: {d.previous_champion or 'none'})")
        promoted[name] = str(d.version)
    live = go_live(s, promoted)
    if live.rollout is not None:
        _print_rollout(live.rollout)
    else:
        for line in live.lines:
            console.print(line, markup=False)


def _print_rollout(r) -> None:
    where = f"InferenceService {r.namespace}/{r.name}"
    graph = f"RayService {r.namespace}/{r.rayservice}" if r.rayservice else None
    if not r.applied:
        console.print(f"dry run: would publish ranker v{r.version} (with the graph's routed versions) to "
                      f"{r.storage_uri}, patch {where}, wait for it to be Ready"
                      + (f", then set the ranker route of {graph} to {json.dumps(r.route_after)}" if graph else "")
                      + "; the InferenceService patch:", markup=False)
        console.print(json.dumps(r.patch), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"cluster: ranker versions {', '.join(r.versions)} published to {r.storage_uri}; {where} "
                  f"storageUri {r.previous_uri or '(none)'} → {r.storage_uri}, Ready", markup=False)
    if graph:
        console.print(f"cluster: {graph} ranker route {json.dumps(r.route_before)} → {json.dumps(r.route_after)}",
                      markup=False)
    else:
        console.print("cluster: no kserve_rayservice set: the graph's route was not changed", markup=False)


@app.command()
def rollout(
    version: Annotated[str | None, typer.Option(help="Ranker version; default: recsys-ranker@champion.")] = None,
    canary: Annotated[float | None, typer.Option(min=0, max=100, help="Share of users (by user hash) the graph "
                                                 "sends to this version beside its current champion; 100 or "
                                                 "none: all users.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the target and the patch; change nothing.")]
    = False,
) -> None:
    """Cluster: publish a ranker version, point the KServe InferenceService at it, then switch the graph's route
    (promote does this too)."""
    from ops.kserve import rollout_ranker

    s = settings()
    if version is None:
        from core.names import CHAMPION, RANKER_MODEL
        from training.registry import version_by_alias

        version = str(version_by_alias(s, RANKER_MODEL, CHAMPION).version)
    _print_rollout(rollout_ranker(s, version, canary_percent=canary, dry_run=dry_run))


@app.command()
def canary(
    percent: Annotated[float, typer.Argument(min=0, max=100, help="Share of users (by user hash) for the "
                                             "challenger; 0 ends the canary.")],
    version: Annotated[str | None, typer.Option(help="Ranker version; default: recsys-ranker@challenger.")] = None,
) -> None:
    """Serve the ranker's challenger to a share of users beside the champion (live if serving is up)."""
    from ops.rollout import canary as run_canary

    s = settings()
    if percent > 0 and version is None:
        from core.names import CHALLENGER, RANKER_MODEL
        from training.registry import version_by_alias

        version = str(version_by_alias(s, RANKER_MODEL, CHALLENGER).version)
    r = run_canary(s, version, percent)
    if r.after.challenger:
        console.print(f"ranker canary: v{r.after.challenger} for {r.after.percent:g}% of users, "
                      f"v{r.after.champion} for the rest")
    else:
        console.print(f"ranker canary off: v{r.after.champion} for all users")


@app.command()
def export(
    backend: Annotated[str, typer.Option(help="python (local tritonserver) or onnxruntime (stock Triton).")] = "python",
) -> None:
    """Write the Triton model repository and the recall index from the champion versions."""
    from training.export import export_repository

    if backend not in ("python", "onnxruntime"):
        raise typer.BadParameter("backend must be python or onnxruntime")
    res = export_repository(settings(), backend)  # type: ignore[arg-type]
    console.print(f"exported {res.versions} → {res.repository} (index: {res.index_dir})")


triton_app = typer.Typer(no_args_is_help=True, help="The local tritonserver serving the exported model repository.")
app.add_typer(triton_app, name="triton")
users_app = typer.Typer(no_args_is_help=True, help="The people the platform holds data about.")
app.add_typer(users_app, name="users")


@users_app.command("delete")
def users_delete(
    user_id: Annotated[int, typer.Argument(min=0, max=2**62, help="The user to erase.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Erase a user everywhere this home keeps them: logged events, online features, impression lines, the
    prepared data and Feast's offline sources; a tombstone keeps them out of later data loads. Needs no graph."""

    from serving.feedback import FeedbackWriter
    from training.tombstones import purge_deleted_users

    s = settings()
    writer = FeedbackWriter(s)
    try:
        out = writer.delete_user(user_id, s.impressions_dir)
    finally:
        writer.log.close()
    out["offline_rows"] = purge_deleted_users(s)
    if as_json:
        print(json.dumps(out))
        return
    offline = out["offline_rows"] or "none"
    console.print(f"user {user_id} deleted: {out['events_deleted']} events, online rows {out['online_rows']}, "
                  f"{out['impressions_redacted']} impression lines redacted, offline rows {offline}; a tombstone "
                  "keeps them out of later training sets")


items_app = typer.Typer(no_args_is_help=True, help="The live catalogue: add, change and retire items while serving.")
app.add_typer(items_app, name="items")


@items_app.command("upsert")
def items_upsert(
    path: Annotated[Path, typer.Argument(help="A .csv (item_id,title,genres,year,text; genres '|'-separated) or "
                                               ".jsonl file (one object a line, the same fields).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Add or change items: each gets its content embedding, its online row and a place in recall within
    `catalogue_poll_s` of a running graph (no restart); the next retrain learns the new ids. Safe to repeat."""

    from core.catalogue import read_items_file
    from serving.catalogue import CatalogueWriter

    s = settings()
    items = read_items_file(path)
    with CatalogueWriter(s) as writer:
        out = writer.upsert(items)
    if as_json:
        print(json.dumps(out))
        return
    console.print(f"{out['upserted']} items upserted: {len(out['new'])} new, {len(out['updated'])} updated; "
                  f"serving picks them up within {s.catalogue_poll_s:g} s")


@items_app.command("retire")
def items_retire(
    item_ids: Annotated[list[int], typer.Argument(min=1, max=2**62, help="The items to retire.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Retire items: they leave every answer within `catalogue_poll_s` (their history stays training data). An
    unknown id refuses the whole call."""

    from serving.catalogue import CatalogueWriter

    s = settings()
    with CatalogueWriter(s) as writer:
        out = writer.retire(item_ids)
    if as_json:
        print(json.dumps(out))
        return
    console.print(f"retired {out['retired']}; serving drops them within {s.catalogue_poll_s:g} s")


@triton_app.command("up")
def triton_up() -> None:
    """Start tritonserver on the exported repository (explicit model control) and wait until ready."""
    from ops import triton_server

    s = settings()
    with console.status("starting tritonserver"):
        pid = triton_server.up(s)
    console.print(f"triton ready (pid {pid}): gRPC {s.triton_grpc_url}, HTTP {s.triton_http_url}, "
                  f"metrics :{s.triton_metrics_port}; log {triton_server.log_file(s)}")


@triton_app.command("down")
def triton_down() -> None:
    """Stop the tritonserver this project started."""
    from ops import triton_server

    console.print("triton stopped" if triton_server.down(settings()) else "triton was not running")


@triton_app.command("status")
def triton_status() -> None:
    """Process, readiness and model states; exits 1 when not ready."""
    from ops import triton_server

    st = triton_server.status(settings())
    models = ", ".join(f"{k}={v}" for k, v in sorted(st.models.items())) or "none"
    console.print(f"triton pid={st.pid or '-'} ready={st.ready} url={st.url} models: {models}")
    if not st.ready:
        raise typer.Exit(1)


@app.command()
def serve(
    down: Annotated[bool, typer.Option("--down", help="Stop the graph, the local Ray head and Triton.")] = False,
) -> None:
    """Start Triton (if needed) and deploy the Ray Serve graph; `--down` stops both."""
    from ops import launcher

    s = settings()
    if down:
        stopped = launcher.down(s)
        console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    with console.status("starting triton, ray and the serve graph"):
        url = launcher.up(s)
    console.print(f"serving on {url}/recommend (docs {url}/docs); Ray dashboard "
                  f"http://127.0.0.1:{s.ray_dashboard_port}; stop with `recsys serve --down`")


@app.command()
def recommend(
    user_id: Annotated[int | None, typer.Argument(help="User to recommend for.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Number of items.")] = 10,
    copy: Annotated[bool, typer.Option("--copy/--no-copy", help="Generate copy for each item.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")] = False,
    use_grpc: Annotated[bool, typer.Option("--grpc", help="Call Recommender.Recommend over gRPC, not HTTP.")] = False,
    batch: Annotated[Path | None, typer.Option(help="Users file (one id per line): score them all offline through "
                                               "recall → ranking, no running graph needed.")] = None,
    out: Annotated[Path, typer.Option(help="With --batch: JSON lines output (user_id, items, …).")] = Path(
        "recs.jsonl"),
) -> None:
    """Ask the running graph for recommendations (start it with `recsys serve`), or score a users file."""
    if batch is not None:
        from serving.batch import read_users, score_users

        users = read_users(batch)
        with console.status(f"scoring {len(users)} users"):
            r = score_users(settings(), users, k, out)
        console.print(f"{r.users} users ({r.cold_start} cold-start, {r.degraded} degraded) in {r.seconds:.1f} s "
                      f"→ {r.out}")
        return
    if user_id is None:
        raise typer.BadParameter("give a USER_ID, or --batch FILE")
    from serving.client import recommend_grpc, recommend_http

    resp = (recommend_grpc if use_grpc else recommend_http)(settings(), user_id, k, copy)
    if as_json:
        console.print_json(data=resp)
        return
    from recsys.demo import show_recommendations

    show_recommendations(console, resp)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in resp["timings_ms"].items())
    console.print(f"request {resp['request_id']}; timings (ms): {stages}")


@app.command("copy-ahead")
def copy_ahead(
    users: Annotated[int | None, typer.Option(min=1, help="The N most active users of the training data "
                                              "(default: the copy_ahead_users setting).")] = None,
    users_file: Annotated[Path | None, typer.Option(help="Users file (one id per line), instead of --users.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Items per user.")] = 10,
) -> None:
    """Write the copy of these users' top-k lists ahead with the exported copy model (a Ray Data job); a Copy
    replica loading that version starts with them in its cache. `recsys pipeline` runs it after the export."""
    from ops.pipeline import write_copy_ahead
    from serving.batch import read_users

    s = settings()
    who: int | list[int] = read_users(users_file) if users_file is not None else (users or s.copy_ahead_users)
    with console.status("writing copy ahead"):
        a = write_copy_ahead(s, who, k)
    console.print(f"copy LM v{a.version}: {a.copies} copies for {a.users} users' top {k} ({a.model_copies} pass the "
                  f"guard; the rest are served as their template) in {a.seconds:.0f} s → {a.path}")


@app.command()
def feedback(
    user_id: Annotated[int, typer.Argument(help="The user who acted.")],
    item_id: Annotated[int, typer.Argument(help="The item acted on.")],
    event_type: Annotated[str, typer.Option("--type", help="click, view, rate, favorite or purchase.")] = "click",
    value: Annotated[float | None, typer.Option(help="The rating (rate events, 0.5-5).")] = None,
    event_id: Annotated[str | None, typer.Option(help="Id that makes a retry idempotent.")] = None,
    request_id: Annotated[str | None, typer.Option(help="The recommendation this answers.")] = None,
    use_grpc: Annotated[bool, typer.Option("--grpc", help="Call Recommender.Feedback over gRPC, not HTTP.")] = False,
) -> None:
    """Send one feedback event to the running graph (needs `api_key` in the settings)."""
    from serving.client import feedback_grpc, feedback_http

    event = {k: v for k, v in {"user_id": user_id, "item_id": item_id, "event_type": event_type, "value": value,
                               "event_id": event_id, "request_id": request_id}.items() if v is not None}
    resp = (feedback_grpc if use_grpc else feedback_http)(settings(), [event])
    state = "in the online store" if resp["pushed"] else f"logged; online push pending ({resp.get('push_error')})"
    what = "stored" if resp["accepted"] else "already stored (duplicate)"
    console.print(f"event {resp['event_ids'][0]} {what}; {state}")


@app.command()
def retrain(
    force: Annotated[bool, typer.Option(help="Promote even if the policy refuses (recorded as forced).")] = False,
    retrieval_epochs: Annotated[int | None, typer.Option(min=1, help="Epochs for retrieval (default: settings).")
                                ] = None,
    ranking_epochs: Annotated[int | None, typer.Option(min=1, help="Epochs for the ranker (default: settings).")
                              ] = None,
    every: Annotated[float | None, typer.Option(min=1, help="Repeat every N minutes (a local schedule; the chart "
                                                       "runs a CronJob).")] = None,
    cold: Annotated[bool, typer.Option(help="Train the challengers from scratch, not from the champions' weights "
                                            "(after a change to the model's shape).")] = False,
) -> None:
    """Logged feedback → training set → warm-started challengers → promotion gate → live swap if serving."""
    import time

    from ops.retrain import retrain as run_retrain

    while True:
        res = run_retrain(settings(), console, force, retrieval_epochs, ranking_epochs, warm=not cold)
        console.print(f"retrain cycle: {'promoted' if res.promoted else 'champions kept'} in {res.seconds} s")
        if every is None:
            return  # a refusal is a normal outcome: the reasons are printed and recorded in MLflow
        time.sleep(every * 60)


@app.command()
def report(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Online CTR and conversion per model version (impressions ⋈ feedback) beside offline metrics."""
    from rich.table import Table

    from core.events import has_event_log, open_event_log
    from serving.impressions import read_impressions
    from serving.report import OFFLINE, online_rates, with_offline

    s = settings()
    events = open_event_log(s).events() if has_event_log(s) else []
    rows = with_offline(online_rates(read_impressions(s.impressions_dir), events), s.tracking_uri)
    if as_json:
        console.print_json(data=rows)
        return
    if not rows:
        console.print(f"no impressions yet in {s.impressions_dir}: serve and call /recommend first")
        return
    table = Table(title=f"online (impressions ⋈ {len(events)} feedback events) and offline metrics")
    cols = ["model", "version", "impressions", "clicks", "ctr", "conversions", "conversion_rate", *OFFLINE]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    console.print(table)


@app.command()
def bench(
    suite: Annotated[list[str] | None, typer.Option(help="offline, scaling, quality, sasrec (opt-in: the "
                                                         "plain SASRec row, ~20 min), serving, copy, factuality "
                                                         "(opt-in: 1,000 copies, about an hour), or the groups "
                                                         "training, freshness, all (repeatable); default "
                                                         "all.")] = None,
) -> None:
    """Measure the pipeline, training scaling, quality, serving, feedback freshness and the copy LM."""
    from recsys.bench.catalogue import expand_suites
    from recsys.bench.suites import run_bench

    try:
        chosen = expand_suites(suite or ["all"])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    path = run_bench(chosen, console)
    console.print(f"results: {path} and BENCHMARKS.md")


@app.command()
def pipeline(
    copy: Annotated[bool, typer.Option(help="Also fine-tune and promote the copy LM.")] = True,
    force: Annotated[bool, typer.Option(help="Promote even if the policy refuses (recorded as forced).")] = False,
) -> None:
    """The whole offline pipeline as one command: data → features → train → promote → export (the chart's RayJob
    runs this; re-running it is safe)."""
    from ops.pipeline import Progress, run_offline

    class Lines(Progress):
        def start(self, label: str) -> None:
            console.print(f"{label}…")

        def done(self, label: str, summary: str) -> None:
            console.print(summary, markup=False, highlight=False)

    run = run_offline(settings(), copy=copy, force=force, progress=Lines())
    console.print(f"offline pipeline: {sum(run.seconds.values()):.0f} s {run.seconds}")


@app.command()
def demo() -> None:
    """Everything end to end: data → features → train → promote → export → metrics → serve → recommend."""
    from recsys.demo import run_demo

    run_demo(settings(), console)


def main() -> None:
    quiet_third_party()
    try:
        app(standalone_mode=False)
    except RecsysError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        # typer >= 0.16 vendors click (typer._click): its usage errors are TyperException, not click's classes.
        if isinstance(e, click.exceptions.ClickException | typer.TyperException) and hasattr(e, "show"):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("RECSYS_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err.print(f"error: {type(e).__name__}: {first} (RECSYS_DEBUG=1 shows the traceback)", markup=False,
                  highlight=False, soft_wrap=True)
        sys.exit(2)
