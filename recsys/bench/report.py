"""The bench's outputs: results files (a partial run carries the other suites over), BENCHMARKS.md and the
README block, with every speed beside the reference it is a ratio of."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from recsys.bench.catalogue import OPT_IN

RESULTS = Path("bench/results")
GPU_RESULTS = RESULTS / "gpu"  # `python -m recsys.bench.gpu` where a GPU is lent: its own runs, its own machine
README_BEGIN, README_END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"


REPORT = Path("BENCHMARKS.md")


README = Path("README.md")


SECTIONS = ("offline", "quality", "sasrec", "transfer", "serving", "scaling", "copy", "factuality")


def latest_results(folder: Path = RESULTS) -> dict[str, Any] | None:
    """The most recently started run's results (by their own `started`: a fresh clone's file times say nothing)."""
    runs = []
    for f in folder.glob("*.json"):
        try:
            runs.append(json.loads(f.read_text()))
        except ValueError:
            continue
    runs = [r for r in runs if isinstance(r, dict) and "started" in r]
    return max(runs, key=lambda r: r["started"]) if runs else None


def results_path(folder: Path, started: str, node: str, cpu: str) -> Path:
    """`<date>-<node>.json`, or `-2`, `-3`… when that name holds another machine's run of the same day (a VM's
    host name stays when its CPU changes): one machine's runs of a day share a file, another's is never
    overwritten."""
    for n in range(1, 100):
        path = folder / f"{started[:10]}-{node}{'' if n == 1 else f'-{n}'}.json"
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):
            return path
        if held.get("machine", {}).get("cpu") == cpu:
            return path
    raise RuntimeError(f"no free results file name for {started[:10]} in {folder}")


def carry_over(result: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Sections this run did not measure, kept from the previous results file and labelled with that run (and its
    machine's CPU when it was another: this VM's host changes between days; the speed rows compare within
    their own run, as ratios), so re-running one suite does not drop the report's other tables."""
    if not previous:
        return result
    origin = previous.get("carried_from", {})
    cpu = previous["machine"].get("cpu", "")
    for key in SECTIONS:
        if key not in result and key in previous:
            result[key] = previous[key]
            result.setdefault("carried_from", {})[key] = {"cpu": cpu, **origin.get(key, {
                "started": previous["started"], "commit": previous["machine"]["commit"]})}  # older: same machine
    return result


def _carried_note(r: dict[str, Any]) -> list[str]:
    carried = r.get("carried_from", {})
    if not carried:
        return []
    cpu = r.get("machine", {}).get("cpu", "")

    def where(v: dict[str, Any]) -> str:
        return "" if v.get("cpu", cpu) == cpu else f", on another machine: {v['cpu']}"

    parts = [f"{k} ({v['started'][:16]}, commit {v['commit']}{where(v)})" for k, v in carried.items()]
    return [f"Not re-measured in this run, carried over from earlier runs: {'; '.join(parts)}.", ""]


def with_readme_block(text: str, block: str, begin: str = README_BEGIN, end_marker: str = README_END) -> str:
    """README with the text between two markers replaced; unchanged if the markers are missing."""
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        return text
    return text[: start + len(begin)] + "\n" + block + "\n" + text[end:]


def _mrr(q: dict[str, Any]) -> str:
    """A served list has no rank beyond its k items, so no MRR."""
    return "–" if q.get("mrr") is None else f"{q['mrr']:.4f}"


def quality_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality table: the platform's models and served list, the plain SASRec (its own opt-in suite, maybe
    carried over from an earlier run), then the classic baselines."""
    rows = list(r.get("quality", []))
    if "sasrec" in r and rows:
        at = next((i for i, q in enumerate(rows) if "already_had_share" in q), len(rows) - 1) + 1
        rows.insert(at, r["sasrec"])
    return rows


def _steal(r: dict[str, Any]) -> str:
    """Each suite's share of CPU time stolen by the hypervisor ("" for results from before it was recorded)."""
    return ", ".join(f"{k} {v:.0%}" for k, v in r.get("cpu_steal", {}).items() if v is not None)


def readme_block(r: dict[str, Any], path: Path) -> str:
    """The README's summary of the latest run: the headline numbers and the plots, nothing typed by hand."""
    m = r["machine"]
    lines = [f"Latest `make bench` ({r['started'][:10]}, commit {m['commit']}, {m['cpu']}, {m['cores']} cores, no "
             f"GPU); full tables in [BENCHMARKS.md](BENCHMARKS.md), raw numbers in `{path}`.", "",
             *_carried_note(r), "| what | result |", "|---|---|"]
    if stolen := _steal(r):
        lines.append(f"| CPU time the hypervisor took (steal), by suite | {stolen} |")
    if "offline" in r:
        o = r["offline"]
        steps = ", ".join(f"{k} {v}" for k, v in o["steps_s"].items())
        lines.append(f"| offline pipeline on {o['counts'].get('interactions', '?')} interactions | {o['total_s']} s "
                     f"({steps}); peak RSS {o['peak_rss_gib']} GiB |")
    for q in quality_rows(r):
        lines.append(f"| test HR@10 / NDCG@10, {q['model']} | {q['hr_at_10']:.3f} ± {q['hr_at_10_se']:.3f} / "
                     f"{q['ndcg_at_10']:.3f} ± {q['ndcg_at_10_se']:.3f} |")
    for kind, x in r.get("transfer", {}).items():
        lines.append(f"| test NDCG@10 on the derived `{kind}` set (opt-in transfer suite): served list / plain SASRec "
                     f"/ EASE | {x['served']['ndcg_at_10']:.3f} / {x['plain_sasrec']['ndcg_at_10']:.3f} / "
                     f"{x['ease']['ndcg_at_10']:.3f} |")
    if "serving" in r:
        for x in r["serving"]["runs"]:
            if not x["include_copy"]:
                lines.append(f"| `/recommend` k=10, no copy, concurrency {x['concurrency']} | p50 {x['p50_ms']} / "
                             f"p99 {x['p99_ms']} ms, {x['rps']} req/s, {x['errors']} errors |")
        if r["serving"].get("floor"):
            q = r["serving"]["floor"]["floor_ratio"]
            lines.append(f"| `/recommend` against its floor graph (same run, interleaved) | {q['rps_c8']} of the "
                         f"floor's req/s at concurrency 8, p99 {q['p99_c8']}×, concurrency-1 p50 {q['p50_c1']}× |")
        if r["serving"].get("overload"):
            ov = r["serving"]["overload"]
            lines.append(f"| `/recommend` past capacity (admission control, up to 128 clients) | "
                         f"{ov['held_rps_within_budget']} req/s admitted with p99 within the {ov['budget_ms']:g} ms "
                         "stage budgets |")
        if r["serving"].get("copy_lm") and "error" not in r["serving"]["copy_lm"]:
            cl = r["serving"]["copy_lm"]
            lines.append(f"| `/recommend` with the copy LM loaded: warm p99 / no-copy p99; cold copy stage max | "
                         f"{cl['warm_p99_ratio']}×; {cl['cold_copy_max_ms']} ms "
                         f"(budget {cl['copy_budget_ms']:g}, timeout {cl['copy_timeout_ms']:g}) |")
    if "scaling" in r:
        sc = r["scaling"]
        lines.append(f"| Ray Train retrieval, 1 worker ({sc.get('reference', '1 × 2 threads')}) → 2 workers | "
                     f"{sc['speedup']}× samples/s, scaling efficiency {sc['scaling_efficiency']} |")
    if "copy" in r:
        q, g = r["copy"]["quality"], r["copy"]["generation"]
        lines.append(f"| copy LM factuality, base → fine-tuned ({r['copy']['eval_items']} held-out items) | "
                     f"{q['base_val_factuality']:.3f} → {q['val_factuality']:.3f} |")
        lines.append(f"| copy k=10, cache miss / hit p50 | {g['miss_p50_ms']} / {g['hit_p50_ms']} ms |")
        if r["copy"].get("ahead"):
            a = r["copy"]["ahead"]
            lines.append(f"| copy cache hit rate, Zipf stream ({a['users']} most active users' copy written ahead; "
                         f"ahead only → with the cache's own fill) | {a['hit_rate_ahead_only']:.3f} → "
                         f"{a['hit_rate_served']:.3f} |")
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
        total = (f"; total {counted / 60:.1f} min without the opt-in suites (target: `make bench` under 30 min)"
                 if any(k not in ("total", *OPT_IN) for k in t) else "; only opt-in suites ran")
        lines += ["Wall time of this run by suite (s): " + ", ".join(f"{k} {v}" for k, v in t.items() if k != "total")
                  + total + ".", ""]
    if stolen := _steal(r):
        lines += ["CPU time the hypervisor took from this VM during each suite (steal; the speed rows above and below "
                  f"compare within their run): {stolen}.", ""]
    if "offline" in r:
        o = r["offline"]
        lines += ["## Offline pipeline", "", f"Data: {o['source']} {o['counts']}; epochs {o['epochs']}; "
                  f"{o.get('workers', 2)} Ray Train workers (CPU; retrieval: "
                  f"{o.get('retrieval_layout', '2 data-parallel replicas')}; ranking: data-parallel).", "",
                  "| step | seconds |", "|---|---|"]
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
                  f"| {sc.get('reference', '1 × 2 threads')} | {with_spread(sc['workers_1'])} |",
                  f"| 2 × 1 thread ({sc.get('layout_2', 'data-parallel')}) | {with_spread(sc['workers_2'])} |", "",
                  f"Speed-up {sc['speedup']}× (medians), scaling efficiency {sc['scaling_efficiency']}; epochs "
                  f"{sc['epochs']} ({sc.get('order', 'the 2-worker epochs from the offline run')}).", ""]
    if "quality" in r:
        lines += ["## Quality (test split, full ranking over all items, k=10, mean ± SE)", "",
                  "Protocol: every rating an implicit interaction; users with < 5 interactions dropped; "
                  "leave-last-out by time; the user's earlier items excluded, never the target; seeded ties.", "",
                  "| model | HR@10 | NDCG@10 | MRR | coverage@10 |", "|---|---|---|---|---|"]
        lines += [f"| {q['model']} | {q['hr_at_10']:.4f} ± {q['hr_at_10_se']:.4f} | {q['ndcg_at_10']:.4f} ± "
                  f"{q['ndcg_at_10_se']:.4f} | {_mrr(q)} | {q['coverage_at_10']:.3f} |" for q in quality_rows(r)]
        lines += [f"\nServed list: {q['already_had_share']:.1%} of the answered slots were items the user already "
                  f"had; {q['short_lists']} of {q['n_users']} lists shorter than 10." for q in r["quality"]
                  if "already_had_share" in q]
        if "sasrec" in r:
            b = r["sasrec"]
            lines += [f"\nPlain SASRec (`--suite sasrec`, trained in the bench's process on the same split): "
                      f"validation NDCG@10 by dropout {b['valid_ndcg_by_dropout']}, kept epoch {b['kept_epoch']}, "
                      f"{b['train_seconds']:.0f} s for the grid; stopped by "
                      f"{b.get('stopped_by_dropout', 'not recorded (an earlier run)')}."]
        lines += ["", "Published reference points (not run here): RecBole GRU4Rec on ML-100K HR@10 0.110 / "
                  "NDCG@10 0.051; on ML-1M SASRec NDCG@10 0.134 (BCE), 0.182 (full-softmax CE, Klenitskiy & Vasilev, "
                  "RecSys'23), gSASRec 0.173 (Petrov & Macdonald, RecSys'23); rating RMSE of SVD on ML-100K 0.934 "
                  "(Surprise).", ""]
    if "transfer" in r:
        lines += transfer_report(r["transfer"])
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
        by_proc, at_peak = sv.get("peak_rss_gib_by_process"), sv.get("peak_rss_gib_at_peak")
        lines += ["", "Features → recall → ranking in one process (no Serve hops, no copy): "
                  f"p50 {ip['p50_ms']} ms, p99 {ip['p99_ms']} ms; "
                  f"graph / in-process p50 at concurrency 1 = {sv['graph_over_in_process_p50']}×. Peak RSS of the "
                  f"serving stack (Ray, its replicas, Triton, HAProxy; not the bench's own process, which "
                  f"generates the load): {sv['peak_rss_gib']} GiB (target ≤ 3 GiB)"
                  + ("; by process (GiB, each at its own peak): " + ", ".join(f"{k} {v}" for k, v in by_proc.items())
                     if by_proc else "")
                  + ("; in the sample where the sum peaked: " + ", ".join(f"{k} {v}" for k, v in at_peak.items())
                     if at_peak else "") + ".", ""]
        lines += floor_report(sv)
        lines += overload_report(sv)
        lines += copy_lm_serving_report(sv)
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
        if sv.get("deletions"):
            d = sv["deletions"]
            lines += [f"User deletion (`DELETE /users/{{id}}`: events erased, online rows blanked, impression lines "
                      f"redacted) over {d['users']} users: p50 {d['p50_ms']} ms, max {d['max_ms']} ms to the answer; "
                      f"{d['new_user_after']} of {d['users']} answered as new users by the very next `/recommend`.",
                      ""]
        if sv.get("catalogue"):
            c = sv["catalogue"]
            lines += [f"Catalogue lifecycle over {c['items']} items (`POST /items` → the user's `/recommend` shows "
                      f"it in the exploration slot; `DELETE /items/{{id}}` → gone): upsert acknowledged p50 "
                      f"{c['upsert_ack']['p50_ms']} ms; shown p50 {c['to_shown']['p50_ms']} / p99 "
                      f"{c['to_shown']['p99_ms']} ms (target p99 ≤ 5000 ms; {c['not_shown_within_s']['count']} not "
                      f"within {c['not_shown_within_s']['limit_s']:g} s); retired → gone p50 "
                      f"{c['retire_to_gone']['p50_ms']} / p99 {c['retire_to_gone']['p99_ms']} ms. The first upsert "
                      f"loads the item encoder: {c['first_upsert_ms']} ms.", ""]
        if sv.get("retrain"):
            rt = sv["retrain"]
            after = f"live swap ({rt['live']})" if rt.get("promoted", True) else "champions kept"
            lines += [f"Retrain cycle while the graph serves (`recsys retrain`, no `--force`): {rt['seconds']} s for "
                      f"{rt['events']} logged events ({rt['added']} new interactions) → features → challengers "
                      f"warm-started from the champions ({rt['retrieval_epochs']} retrieval, {rt['ranking_epochs']} "
                      f"ranking epoch) → gate → {after}."
                      f" Gate: {'; '.join(rt['decisions'])}.", ""]
        if sv.get("cpu_ms_per_request_c8"):
            cpu = ", ".join(f"{k} {v}" for k, v in sv["cpu_ms_per_request_c8"].items())
            lines += [f"CPU per request at concurrency 8, no copy (ms, by process): {cpu}. On 2 cores the "
                      "throughput ceiling is 2000 / (their sum) req/s.", ""]
    if "copy" in r:
        lines += copy_report(r["copy"])
    if "factuality" in r:
        lines += factuality_report(r["factuality"])
    gpu = latest_results(GPU_RESULTS)
    if gpu is not None:
        lines += gpu_report(gpu)
    if r.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({Path(p).as_posix()})" for name, p in r["plots"].items()] + [""]
    return "\n".join(lines)


def transfer_report(t: dict[str, Any]) -> list[str]:
    """The transfer suite's table: per derived data set, the served list beside EASE and the plain SASRec."""
    from recsys.bench.transfer import DERIVED

    lines = ["## Transfer: the same code, untuned, on derived data sets (`--suite transfer`, opt-in)", "",
             "Each set is derived from the configured MovieLens data, written as ml-latest CSVs and run through "
             "`recsys data --data DIR` → features → retrieval → ranking → promote → export with the defaults; "
             "test split, same protocol (`recsys/bench/transfer.py`).", "",
             "| data set | users / items / interactions | model | HR@10 | NDCG@10 |", "|---|---|---|---|---|"]
    for kind, x in t.items():
        d = x["derived"]
        size = f"{d['users']} / {d['items']} / {d['interactions']}"
        rows = [("served list", x["served"]), ("retrieval", x["retrieval"]), ("→ ranker", x["ranker"]),
                (f"plain SASRec (dropout {x['plain_sasrec']['dropout']})", x["plain_sasrec"]), ("EASE", x["ease"]),
                ("mostpop", x["mostpop"])]
        for i, (name, q) in enumerate(rows):
            lines.append(f"| {kind if i == 0 else ''} | {size if i == 0 else ''} | {name} | {q['hr_at_10']:.4f} ± "
                         f"{q['hr_at_10_se']:.4f} | {q['ndcg_at_10']:.4f} ± {q['ndcg_at_10_se']:.4f} |")
    for kind, x in t.items():
        s = x["served"]
        beat = all(s["ndcg_at_10"] > x[b]["ndcg_at_10"] for b in ("ease", "plain_sasrec"))
        lines.append(f"\n{kind} ({DERIVED.get(kind, x.get('rule'))}): served list {'above' if beat else 'NOT above'} "
                     f"EASE and the plain SASRec on NDCG@10; {s['already_had_share']:.1%} of its slots were items the "
                     f"user already had; pipeline {x['pipeline_s']} s; plain SASRec stopped by "
                     f"{x['plain_sasrec']['stopped_by_dropout']}.")
    return [*lines, ""]


def _slices(x: dict[str, Any]) -> str:
    """A pooled load's slices (`recsys.bench.load.pooled`) as min–max of their req/s and p99."""
    each = x.get("slices") or []
    if not each:
        return ""
    rps, p99 = [r["rps"] for r in each], [r["p99_ms"] for r in each]
    return f" | {min(rps)}–{max(rps)} | {min(p99)}–{max(p99)}"


def _pair_spread(values: list[float]) -> str:
    return f"per pair {min(values)}–{max(values)}, median {statistics.median(values):.3f}"


def floor_report(sv: dict[str, Any]) -> list[str]:
    """The platform against its floor graph, measured interleaved in the same run (`suites.against_floor`)."""
    fl = sv.get("floor")
    if not fl:
        return []
    q = fl["floor_ratio"]
    lines = ["## Serving against its framework floor (same run, same client, interleaved)", "",
             "Floor: the same hops as `/recommend` without copy (HTTP → ingress replica → one Serve hop to a recall "
             f"replica → one gRPC call to a tritonserver model returning zeros for {fl['candidates']} candidates), "
             "doing no work (`recsys/bench/floor.py`). Both warmed first (one request per bench user each, not "
             "measured); " + (f"then at each concurrency {fl['pairs']} pairs of {fl['slice_s']:g} s slices in mirrored "
                              "order (platform, floor; floor, platform; …), each graph's slices pooled "
                              "(`recsys/bench/interleave.py`)." if q.get("pooled")
                              else "each row is one run; rows alternate platform, floor."), ""]
    if q.get("pooled"):
        lines += ["| graph | concurrency | req/s | p50 ms | p99 ms | errors | req/s per slice | p99 ms per slice |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in ("8", "1"):
            for name in ("platform", "floor"):
                x = fl["runs"][name][c]
                lines.append(f"| {name} | {c} | {x['rps']} | {x['p50_ms']} | {x['p99_ms']} | {x['errors']}"
                             f"{_slices(x)} |")
        pairs = q["per_pair"]
        stages = "; ".join(f"{name} " + ", ".join(f"{k} {v}" for k, v in fl["runs"][name]["1"]["stage_p50_ms"].items())
                           + f" of {fl['runs'][name]['1']['p50_ms']} end to end" for name in ("platform", "floor"))
        lines += ["", f"Platform as a share of the floor (ratio of the pools): **{q['rps_c8']} of its req/s at "
                  f"concurrency 8** (target ≥ 0.6; {_pair_spread(pairs['rps_c8'])}), p99 {q['p99_c8']}× the "
                  f"floor's (target ≤ 1.3; {_pair_spread(pairs['p99_c8'])}), concurrency-1 p50 {q['p50_c1']}× "
                  f"(target ≤ 1.5; {_pair_spread(pairs['p50_c1'])}).", "",
                  f"Where a concurrency-1 request's time goes (p50 ms; `total` is inside the ingress handler, the "
                  f"rest is HTTP and the proxy): {stages}.", ""]
    else:  # results written before session 65: a few long runs a side, the median of the pair ratios
        lines += ["| graph | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
        for c in ("8", "1"):
            for pair in zip(fl["runs"]["platform"][c], fl["runs"]["floor"][c], strict=True):
                for name, x in zip(("platform", "floor"), pair, strict=True):
                    lines.append(f"| {name} | {c} | {x['rps']} | {x['p50_ms']} | {x['p99_ms']} | {x['errors']} |")
        pairs = q.get("per_pair", {"rps_c8": q["rps_c8_per_pair"]})
        each = {k: f"; per pair {pairs[k]}" if k in pairs else "" for k in ("rps_c8", "p99_c8", "p50_c1")}
        how = "median of the per-pair ratios" if "per_pair" in q else "medians of the runs"
        lines += ["", f"Platform as a share of the floor ({how}): **{q['rps_c8']} of its req/s at concurrency 8** "
                  f"(target ≥ 0.6{each['rps_c8']}), p99 {q['p99_c8']}× the floor's (target ≤ 1.3{each['p99_c8']}), "
                  f"concurrency-1 p50 {q['p50_c1']}× (target ≤ 1.5{each['p50_c1']}).", ""]
    over = " (all concurrency-8 slices)" if q.get("pooled") else ""
    for name, cpu in fl.get("cpu_ms_per_request_c8", {}).items():
        lines.append(f"CPU per request, {name}, concurrency 8{over} (ms, by process): "
                     + ", ".join(f"{k} {v}" for k, v in cpu.items()) + f"; sum {sum(cpu.values()):.2f}.")
    if fl.get("triton_cache"):
        lines += ["", "Triton's response cache over the measured runs (both models enable it; the bench's users repeat "
                  "with unchanged profiles): " + "; ".join(
                      f"{name} {c['hits']} hits, {c['misses']} misses, {c['executions']} model executions"
                      for name, c in fl["triton_cache"].items()) + "."]
    return [*lines, ""]


def overload_report(sv: dict[str, Any]) -> list[str]:
    """`/recommend` past capacity with admission control (`suites.overload`)."""
    ov = sv.get("overload")
    if not ov:
        return []
    a = ov["admission"]
    lines = ["## Overload: admission control (`serving.admission`)", "",
             f"Each Ingress replica runs at most {a['limit']} requests, lets {a['queue']} more wait up to "
             f"{a['wait_ms']:g} ms for a slot, and answers the rest 503 with Retry-After. Admitted answers are "
             f"within the stage budgets when their p99 ≤ {ov['budget_ms']:g} ms (features + recall + ranking "
             "timeouts) with at most 1 % degraded.", "",
             "| clients | on a 503 | admitted req/s | p50 ms | p99 ms | degraded | refused | refusal p99 ms | "
             "within budget |", "|---|---|---|---|---|---|---|---|---|"]
    for x in ov["runs"]:
        lines.append(f"| {x['concurrency']} | {'wait Retry-After' if x['honour_retry_after'] else 'retry at once'} "
                     f"| {x['rps']} | {x['p50_ms']} | {x['p99_ms']} | {x['degraded']} | {x['refused']} | "
                     f"{x['refused_p99_ms'] if x['refused_p99_ms'] is not None else '–'} | "
                     f"{'yes' if x['within_budget'] else 'no'} |")
    lines += ["", f"Load held within the stage budgets: **{ov['held_rps_within_budget']} req/s** admitted.", ""]
    sk = sv.get("soak")
    if sk:
        series = "; ".join(f"{label} {' → '.join(f'{v:g}' for v in vals)}" for label, vals in sk["rss_mib"].items())
        lines += [f"Triton memory under sustained load ({sk['rounds']} × {sk['seconds_per_round']:g} s at concurrency "
                  f"8, {sk['requests']} requests; RSS MiB before and after each round): {series}. "
                  + ("Levelled off (the last round added ≤ 2 %)." if sk["levelled_off"]
                     else "**Still rising** in the last round (> 2 %)."), ""]
    return lines


def _copy_ready(seconds: float) -> str:
    """How long the Copy replica took to report the model ready after the bench deployed the stack; under a
    second means it had loaded the exported adapter when the stack started, so the load was not timed here."""
    if seconds < 1.0:
        return (f"The Copy replica reported the model ready {seconds} s after the deploy: it had loaded the "
                "exported adapter when the stack started, so its load time is not in this run.")
    return f"The Copy replica loaded the model and reported it ready {seconds} s after the deploy."


def _over(ms: float | None, bound: float) -> str:
    return " (**over it**)" if (ms or 0) > bound else ""


def copy_lm_serving_report(sv: dict[str, Any]) -> list[str]:
    """`/recommend` with the copy LM loaded (`suites.with_copy_lm`)."""
    cl = sv.get("copy_lm")
    if not cl:
        return []
    if "error" in cl:
        return ["## Serving with the copy LM loaded", "", f"Not measured: {cl['error']}", ""]
    warm = ", ".join(f"{w['degraded']}/{w['requests']}" for w in cl["warm_up"])
    sitting = f" (measured in a sitting of its own at commit {cl['measured_at']})" if cl.get("measured_at") else ""
    steps = cl.get("adapter_steps")
    adapter = "" if steps is None else (f"Adapter: {steps} LoRA steps" + (
        " (a stand-in: `--suite serving` ran without the copy suite, whose adapter these rows are meant to use; "
        "its misses cost several times a tuned one's)" if steps < 50 else "") + ". ")
    pooled = isinstance(cl["runs"]["copy"], dict)
    how = (f"{cl['pairs']} mirrored pairs of {cl['slice_s']:g} s slices (off, copy; copy, off; …), each side's slices "
           "pooled" if pooled else "interleaved")
    lines = [f"## Serving with the copy LM loaded (v{cl['version']}){sitting}", "",
             f"{adapter}{_copy_ready(cl['ready_s'])} Warm: a Zipf "
             f"stream over 20 users, warmed at 2 clients until at most 1 % of answers had a late copy (degraded / "
             f"answered per warm-up round: {warm}); then without and with copy, {how}, concurrency 8.", "",
             "| copy | req/s | p50 ms | p99 ms | degraded |" + (" req/s per slice | p99 ms per slice |" if pooled
                                                                 else ""),
             "|---|---|---|---|---|" + ("---|---|" if pooled else "")]
    if pooled:
        for key, name in (("no_copy", "off"), ("copy", "model copy")):
            x = cl["runs"][key]
            lines.append(f"| {name} | {x['rps']} | {x['p50_ms']} | {x['p99_ms']} | {x['degraded']}{_slices(x)} |")
    else:
        for pair in zip(cl["runs"]["no_copy"], cl["runs"]["copy"], strict=True):
            for name, x in zip(("off", "model copy"), pair, strict=True):
                lines.append(f"| {name} | {x['rps']} | {x['p50_ms']} | {x['p99_ms']} | {x['degraded']} |")
    c = cl["cold"]
    each = f"; {_pair_spread(cl['warm_p99_per_pair'])}" if cl.get("warm_p99_per_pair") else ""
    lines += ["", f"Warm p99 with copy / without: **{cl['warm_p99_ratio']}×** (target ≤ 1.2{each}).", "",
              f"Cold (users never asked for, one at a time, every copy a miss): {c['requests']} answers, p50 "
              f"{c['p50_ms']} / p99 {c['p99_ms']} ms; copy stage p95 {cl['cold_copy_p95_ms']} / max "
              f"{cl['cold_copy_max_ms']} ms against the budget {cl['copy_budget_ms']:g} ms (templates now, model copy "
              f"filled in the background)" + _over(cl["cold_copy_max_ms"], cl["copy_budget_ms"])
              + f" and the stage timeout {cl['copy_timeout_ms']:g} ms"
              + _over(cl["cold_copy_max_ms"], cl["copy_timeout_ms"]) + ".", ""]
    if cl.get("peak_rss_gib") is not None:
        lines += [f"Serving stack peak RSS with the copy LM loaded: {cl['peak_rss_gib']} GiB (target ≤ 3); by process "
                  "(GiB): " + ", ".join(f"{k} {v}" for k, v in cl["peak_rss_gib_by_process"].items()) + ".", ""]
    return lines


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
            "| model | factuality (grounding check, before the guard) | distinct-1 | distinct-2 | verbatim training "
            "target (same shape) | the composition its style names | fluency (base-model perplexity, median; "
            "lower reads better) |", "|---|---|---|---|---|---|---|",
            *[f"| {name} | {f[f'{key}_factuality']:.3f} | {f.get(f'{key}_distinct_1', float('nan')):.3f} | "
              f"{f[f'{key}_distinct_2']:.3f} | {f.get(f'{key}_verbatim_share', float('nan')):.3f} | "
              f"{f.get(f'{key}_in_grammar_share', float('nan')):.3f} | {f.get(f'{key}_fluency_ppl', '–')} |"
              for name, key in (("base", "base"), ("fine-tuned", "tuned"))], "",
            f"Served (after the guard): {served}; templates passing the guard {f['templates_factual']:.3f}. "
            f"Suite time {f['seconds'] / 60:.1f} min (training + both evaluations, "
            f"{f['generate_seconds_per_item']} s per generated copy, batched). Target: fine-tuned ≥ 0.99 before "
            "the guard, 1.00 after. Fluency compares like with like only between fine-tuned runs: the base row is "
            "the base model scoring its own greedy text, low by construction.", ""]


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
            f"| cache hit | {g['hit_p50_ms']} | {g['hit_p99_ms']} | {' / '.join(map(str, g.get('hit_ms', [])))} |",
            *([f"| reference: the same prompts through Hugging Face `generate`, decoding as served (interleaved) | "
               f"{g['hf_generate_p50_ms']} | – | {' / '.join(map(str, g['hf_generate_ms']))} |", "",
               f"Cache miss p50 / the reference's: **{g['miss_vs_hf_generate_ratio']}×** (target ≤ 0.3)."]
              if "hf_generate_p50_ms" in g else []), "",
            f"Generation {g['tokens_per_s']} tokens/s; cache hit rate under a repeat-heavy stream ({g['stream']} "
            f"requests over {g['shapes']} request shapes, Zipf-like): {g['repeat_hit_rate']}. Targets here: miss p50 "
            "≤ 1500 ms, hit ≤ 5 ms.",
            "", *ahead_report(c.get("ahead"))]


def gpu_report(g: dict[str, Any]) -> list[str]:
    """The GPU paths' run (`recsys.bench.gpu`): another machine and day than the tables above, so each speed is
    given against its own run's reference."""
    m, ct, cg = g["machine"], g["copy_training_gpu"], g["copy_generation_gpu"]
    lines = [f"## GPU paths (`python -m recsys.bench.gpu`, {g['started'][:10]}, commit {g['commit']})", "",
             f"One {m['gpu']} ({m['gpu_memory_gib']} GiB), {m['cpus']} CPU cores; that machine's own image (torch "
             f"{m['torch']}, CUDA {m['cuda']}, Python {m['python']}) with Ray, pydantic and gguf carried as wheels. "
             "The real Ray Train jobs with `use_gpu` (one GPU worker, bf16 autocast) and the Copy stage's model on "
             "the GPU; no Feast, MLflow or Triton there (the item content matrix was read through Feast here).", "",
             "| path | result | reference, same run | ratio |", "|---|---|---|---|"]
    if "retrieval_gpu" in g:
        rg, rc = g["retrieval_gpu"], g["retrieval_cpu"]
        lines.append(f"| retrieval job, {rg['epochs']} epochs + refit, 1 GPU worker | {rg['samples_per_second']} "
                     f"samples/s ({rg['train_seconds']} s) | {rc['workers']} CPU workers on that machine: "
                     f"{rc['samples_per_second']} samples/s ({rc['train_seconds']} s) | "
                     f"{g['retrieval_gpu_vs_cpu_samples_ratio']}× |")
    tps = sorted(ct["tokens_per_second_per_epoch"])
    lines += [f"| copy LoRA job, {ct['steps']} steps, 1 GPU worker | {tps[len(tps) // 2]:.0f} tokens/s per epoch "
              f"(median; {tps[0]:.0f}–{tps[-1]:.0f}), loss {ct['first_loss']} → {ct['final_loss']}, "
              f"{ct['train_seconds']} s | – | – |",
              f"| copy k=10 cache miss ({cg['dtype']}, {cg['device']}) | p50 {cg['miss_p50_ms']} ms, p99 "
              f"{cg['miss_p99_ms']} ms | Hugging Face `generate`, same prompts: p50 {cg['hf_generate_p50_ms']} ms | "
              f"{cg['miss_vs_hf_generate_ratio']}× |",
              f"| copy k=10 cache hit | p50 {cg['hit_p50_ms']} ms | – | – |", "",
              f"Copy miss target on a GPU, p50 ≤ 150 ms: {'met' if cg['miss_p50_ms'] <= 150 else 'not met'}."]
    if "profile" in cg:
        p = cg["profile"]
        lines[-1] += (f" One miss under the PyTorch profiler: {p['ms']} ms of wall time, {p['forward_passes']} "
                      f"forward passes, {p['kernel_launches']} kernel launches, the GPU busy {p['device_busy_ms']} ms"
                      " of it: bound by the host (launches and Python), not by the model.")
    return [*lines, ""]


def ahead_report(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return []
    return [f"Copy written ahead (`recsys copy-ahead`, the Ray Data job `recsys pipeline` runs after the export): "
            f"{a['copies']} copies for the top-{a['k']} lists of the {a['users']} most active users in "
            f"{a['seconds']} s "
            f"({a['seconds_per_copy']} s a copy; {a['model_copies']} pass the guard). A Zipf stream of "
            f"{a['requests']} requests over all users in activity order (s = {a['zipf_s']}; {a['users_asked']} "
            f"distinct users asked, {a['stream_share_of_ahead_users']:.0%} of requests from users written ahead): "
            f"**{a['hit_rate_ahead_only']:.3f}** of the copies asked for were written ahead; "
            f"**{a['hit_rate_served']:.3f}** were cache hits once each miss is generated once and cached.", ""]

