"""The benchmark report and the closed-loop load generator, against a tiny local HTTP server."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from recsys.bench.load import feedback_load, load, spread, window_spread
from recsys.bench.report import report, with_spread


class _Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open, as Serve's uvicorn does
    ports: ClassVar[set[int]] = set()

    def _send(self, status: int, body: dict) -> None:
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_POST(self):
        self.ports.add(self.client_address[1])
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/feedback"):
            if self.headers.get("Authorization") != "Bearer k":
                return self._send(401, {"error": "missing or invalid API key"})
            return self._send(200, {"accepted": len(body["events"])})
        if body["user_id"] == 21:  # admission control's refusal (serving.admission)
            out = json.dumps({"error": "overloaded: 16 requests in progress; retry after 1 s"}).encode()
            self.send_response(503)
            self.send_header("Retry-After", "0.2")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if body["user_id"] in (13, 14):
            out = json.dumps({"error": "internal error (KeyError)"}).encode() if body["user_id"] == 14 else \
                b"Internal Server Error"
            self.send_response(500)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        out = json.dumps({"degraded": [{"stage": "copy"}] if body["user_id"] == 7 else [],
                          "timings_ms": {"recall": 1.0, "total": 2.0}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_graph():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/recommend"
    server.shutdown()


def test_clients_keep_their_connection_and_feedback_counts_refusals(fake_graph):
    _Fake.ports.clear()
    r = load(fake_graph, users=[1], concurrency=2, seconds=0.3, include_copy=False, max_requests=40)
    assert r["requests"] >= 10 and r["errors"] == 0
    assert len(_Fake.ports) == 2  # one TCP connection per client for all its requests
    base = fake_graph.removesuffix("/recommend")
    ok = feedback_load(base, "k", users=[1, 2], items=[5, 6], concurrency=2, seconds=0.3, batch=3)
    assert ok["errors"] == 0 and ok["events_per_s"] > 0
    refused = feedback_load(base, "wrong", users=[1], items=[5], concurrency=1, seconds=0.2)
    assert refused["events_per_s"] == 0 and refused["errors"] > 0


def test_load_counts_errors_and_degraded_answers_separately(fake_graph):
    r = load(fake_graph, users=[1, 7, 13, 14], concurrency=4, seconds=0.5, include_copy=False, max_requests=60)
    assert r["requests"] > 0 and r["errors"] > 0  # users 13, 14 always fail and are not counted as answered
    # by HTTP status (load shedding, 503, is told apart) and the platform's error line where there is one
    assert set(r["error_kinds"]) == {"500 Internal Server Error", "500 internal error (KeyError)"}
    assert sum(r["error_kinds"].values()) == r["errors"]
    assert 0 < r["degraded"] < r["requests"]
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["stage_p50_ms"] == {"recall": 1.0, "total": 2.0}


def test_refusals_are_timed_apart_and_a_client_that_honours_retry_after_waits_it_out(fake_graph):
    eager = load(fake_graph, users=[21], concurrency=1, seconds=1.0, include_copy=False)
    patient = load(fake_graph, users=[21], concurrency=1, seconds=1.0, include_copy=False, honour_retry_after=True)
    assert eager["refused"] == eager["errors"] and eager["requests"] == 0 and eager["refused_p99_ms"] is not None
    assert 1 <= patient["refused"] <= 5  # each refusal is followed by its 0.2 s Retry-After
    assert eager["refused"] >= 3 * patient["refused"]
    mixed = load(fake_graph, users=[21, 1], concurrency=1, seconds=0.3, include_copy=False)
    assert mixed["requests"] > 0 and mixed["refused"] > 0 and mixed["error_kinds"] == {
        "503 overloaded: 16 requests in progress; retry after 1 s": mixed["refused"]}
    assert load(fake_graph, users=[1], concurrency=1, seconds=0.1, include_copy=False)["refused_p99_ms"] is None


def test_the_overload_section_says_which_rows_held_within_the_budgets():
    from recsys.bench.report import overload_report

    def run(c: int, honour: bool, rps: float, p99: float, within: bool) -> dict:
        return {"concurrency": c, "honour_retry_after": honour, "rps": rps, "p50_ms": p99 / 2, "p99_ms": p99,
                "degraded": 0, "refused": 40, "refused_p99_ms": 120.0, "within_budget": within, "requests": 900}

    ov = {"runs": [run(32, True, 200.0, 210.0, True), run(64, False, 90.0, 900.0, False)], "budget_ms": 800.0,
          "held_rps_within_budget": 200.0, "admission": {"limit": 16, "queue": 32, "wait_ms": 100.0}}
    text = "\n".join(overload_report({"overload": ov}))
    assert "| 32 | wait Retry-After | 200.0 | 105.0 | 210.0 | 0 | 40 | 120.0 | yes |" in text
    assert "| 64 | retry at once | 90.0 | 450.0 | 900.0 | 0 | 40 | 120.0 | no |" in text
    assert "**200.0 req/s** admitted" in text and "p99 ≤ 800 ms" in text
    assert overload_report({}) == []
    soak = {"rounds": 2, "seconds_per_round": 30.0, "requests": 9000, "levelled_off": False,
            "rss_mib": {"tritonserver": [58.0, 88.0, 103.0], "triton python model ranker": [150.0, 151.0, 151.0]}}
    text = "\n".join(overload_report({"overload": ov, "soak": soak}))
    assert "tritonserver 58 → 88 → 103; triton python model ranker 150 → 151 → 151. **Still rising**" in text
    from recsys.bench.suites import levelled_off

    assert not levelled_off([58.0, 88.0, 103.0]) and levelled_off([58.0, 88.0, 89.5]) and levelled_off([500, 509])
    assert not levelled_off([500.0, 511.0]) and not levelled_off([100.0])
    assert "Levelled off" in "\n".join(overload_report({"overload": ov, "soak": {**soak, "levelled_off": True}}))


def test_the_copy_lm_section_pairs_the_warm_runs_and_flags_a_cold_copy_past_its_budget_or_timeout():
    from recsys.bench.report import copy_lm_serving_report

    def run(p99: float) -> dict:
        return {"rps": 100.0, "p50_ms": p99 / 2, "p99_ms": p99, "degraded": 0}

    cl = {"version": "3", "ready_s": 41.0, "warm_up": [{"requests": 800, "degraded": 300},
                                                       {"requests": 900, "degraded": 5}],
          "runs": {"no_copy": [run(80.0), run(84.0)], "copy": [run(90.0), run(92.0)]}, "warm_p99_ratio": 1.1,
          "cold": {"requests": 12, "p50_ms": 640.0, "p99_ms": 700.0}, "cold_copy_p95_ms": 610.0,
          "cold_copy_max_ms": 590.0, "copy_budget_ms": 600.0, "copy_timeout_ms": 800.0}
    text = "\n".join(copy_lm_serving_report({"copy_lm": cl}))
    rows = [ln for ln in text.splitlines() if ln.startswith(("| off", "| model copy"))]
    assert rows == ["| off | 100.0 | 40.0 | 80.0 | 0 |", "| model copy | 100.0 | 45.0 | 90.0 | 0 |",
                    "| off | 100.0 | 42.0 | 84.0 | 0 |", "| model copy | 100.0 | 46.0 | 92.0 | 0 |"]
    assert "round: 300/800, 5/900" in text and "**1.1×** (target ≤ 1.2)" in text and "over it" not in text
    assert "over it" not in "\n".join(copy_lm_serving_report({"copy_lm": {**cl, "cold_copy_max_ms": 600.0}}))
    over_budget = "\n".join(copy_lm_serving_report({"copy_lm": {**cl, "cold_copy_max_ms": 615.0}}))
    assert "background) (**over it**) and the stage timeout 800 ms." in over_budget
    assert "(**over it**) and the stage timeout 800 ms (**over it**)." in \
        "\n".join(copy_lm_serving_report({"copy_lm": {**cl, "cold_copy_max_ms": 801.0}}))
    assert copy_lm_serving_report({}) == []
    alone = "\n".join(copy_lm_serving_report({"copy_lm": {**cl, "measured_at": "abc1234", "peak_rss_gib": 3.4,
                                                            "peak_rss_gib_by_process": {"Copy": 1.2}}}))
    assert "(measured in a sitting of its own at commit abc1234)" in alone
    assert "Adapter" not in text  # results written before the steps were recorded
    tuned, stand_in = ({"copy_lm": {**cl, "adapter_steps": n}} for n in (200, 8))
    assert "Adapter: 200 LoRA steps. The Copy" in "\n".join(copy_lm_serving_report(tuned))
    assert "a stand-in" in "\n".join(copy_lm_serving_report(stand_in))
    assert "loaded the model and reported it ready 41.0 s after the deploy" in text
    preloaded = "\n".join(copy_lm_serving_report({"copy_lm": {**cl, "ready_s": 0.0}}))
    assert "had loaded the exported adapter when the stack started" in preloaded
    assert "loaded the model and" not in preloaded
    assert "copy LM loaded: 3.4 GiB (target ≤ 3); by process (GiB): Copy 1.2." in alone


def test_report_has_one_table_row_per_measurement():
    result = {
        "started": "2026-11-25T00:00:00+00:00",
        "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 24, "python": "3.11", "commit": "abc", "stack": {"ray": "2"}},
        "scaling": {"workers_1": [90.0, 100.0, 104.0], "workers_2": [140.0, 150.0, 151.0], "speedup": 1.5,
                    "scaling_efficiency": 0.75, "epochs": {"1": 3, "2": 40}},
        "quality": [{"model": "mostpop", "hr_at_10": 0.05, "hr_at_10_se": 0.007, "ndcg_at_10": 0.025,
                     "ndcg_at_10_se": 0.004, "mrr": 0.02, "coverage_at_10": 0.01}],
    }
    text = report(result, Path("bench/results/x.json"))
    assert "| 2 × 1 thread (data-parallel) | 150.0 (140.0–151.0) |" in text  # median (min–max) over epochs
    result["scaling"]["layout_2"] = "each of 2 workers trains 1 of the 2 members (no gradient exchange)"
    assert "| 2 × 1 thread (each of 2 workers trains 1 of the 2 members (no gradient exchange)) |" in report(
        result, Path("bench/results/x.json"))  # a run that records its layout says it
    assert "| mostpop | 0.0500 ± 0.0070 | 0.0250 ± 0.0040 |" in text
    assert "## Serving" not in text  # a suite that did not run gets no table


def test_cpu_per_request_charges_the_process_that_burned_it() -> None:
    import os
    import time

    import psutil

    from recsys.bench.processes import cpu_per_request

    def busy() -> dict:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return {"requests": 10}

    result, per = cpu_per_request(busy)
    assert result == {"requests": 10}
    me = psutil.Process(os.getpid()).cmdline()[0]
    label = os.path.basename(me)
    assert per.get(label, 0) >= 25  # ≥ 0.25 s over 10 requests, charged to this process


def test_load_keeps_a_monotone_latency_cdf_per_stage(fake_graph):
    r = load(fake_graph, users=[1, 7], concurrency=2, seconds=0.3, include_copy=False, max_requests=30)
    cdf = r["stage_cdf_ms"]
    assert set(cdf) == {"recall", "total"} and all(len(v) == 21 for v in cdf.values())
    assert all(a <= b for v in cdf.values() for a, b in itertools.pairwise(v))


def _result() -> dict:
    runs = [{"concurrency": c, "include_copy": copy, "rps": 10.0 / c, "p50_ms": 20.0 * c, "p95_ms": 30.0 * c,
             "p99_ms": 40.0 * c, "errors": 0, "degraded": 0, "stage_p50_ms": {"recall": 1.0},
             "stage_cdf_ms": {"recall": [float(i) for i in range(21)], "total": [2.0 * i + 1 for i in range(21)]}}
            for c in (1, 8) for copy in (False, True)]
    return {"started": "2026-11-26T00:00:00+00:00",
            "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 24, "python": "3.11", "commit": "abc", "stack": {}},
            "quality": [{"model": "mostpop", "hr_at_10": 0.05, "hr_at_10_se": 0.007, "ndcg_at_10": 0.025,
                         "ndcg_at_10_se": 0.004, "mrr": 0.02, "coverage_at_10": 0.01}],
            "serving": {"runs": runs}}


def test_plots_are_drawn_from_the_results_and_skip_what_is_missing(tmp_path):
    from recsys.bench.plots import draw

    files = draw(_result(), tmp_path)
    assert set(files) == {"quality", "throughput", "latency_cdf"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000 for p in files.values())
    bare = _result()
    for run in bare["serving"]["runs"]:
        del run["stage_cdf_ms"]  # an older results file: no CDF to draw, the rest still drawn
    assert set(draw(bare, tmp_path / "old")) == {"quality", "throughput"}


def test_readme_block_replaces_only_the_marked_part():
    from recsys.bench.report import README_BEGIN, README_END, readme_block, with_readme_block

    r = {**_result(), "plots": {"quality": "bench/plots/quality.png"}}
    block = readme_block(r, Path("bench/results/x.json"))
    assert "| test HR@10 / NDCG@10, mostpop | 0.050 ± 0.007 / 0.025 ± 0.004 |" in block
    assert "| `/recommend` k=10, no copy, concurrency 8 | p50 160.0 / p99 320.0 ms, 1.25 req/s, 0 errors |" in block
    assert "![quality](bench/plots/quality.png)" in block and "commit abc" in block
    text = f"intro\n{README_BEGIN}\nold numbers\n{README_END}\noutro\n"
    new = with_readme_block(text, block)
    assert new.startswith(f"intro\n{README_BEGIN}\n") and new.endswith(f"{README_END}\noutro\n")
    assert "old numbers" not in new and block in new
    assert with_readme_block("no markers here\n", block) == "no markers here\n"


def test_a_partial_run_keeps_the_other_sections_labelled_with_their_run():
    from recsys.bench.report import carry_over, readme_block

    old = {**_result(), "copy": {"x": 1}, "started": "2026-11-25T10:00:00+00:00"}
    old["machine"] = {**old["machine"], "commit": "old"}
    new = {"started": "2026-11-26T00:00:00+00:00", "machine": {**_result()["machine"], "commit": "new"},
           "quality": [{**_result()["quality"][0], "model": "ease"}]}
    merged = carry_over(dict(new), old)
    assert merged["quality"][0]["model"] == "ease"  # measured now: never replaced
    assert merged["copy"] == {"x": 1} and merged["serving"] == old["serving"]
    assert merged["carried_from"]["copy"] == {"started": "2026-11-25T10:00:00+00:00", "commit": "old", "cpu": "cpu"}
    again = carry_over({"started": "2026-11-27T00:00:00+00:00", "machine": new["machine"]}, merged)
    assert again["carried_from"]["copy"]["commit"] == "old"  # still the run that measured it
    shown = {k: v for k, v in merged.items() if k != "copy"}
    text = readme_block(shown, Path("x.json"))
    assert "carried over from earlier runs: serving (2026-11-25T10:00, commit old); copy" in text
    # Another machine's sections are carried too, and said to be: this VM's host changes between days.
    other = carry_over({**new, "machine": {**new["machine"], "cpu": "another cpu"}}, old)
    assert other["copy"] == {"x": 1} and "serving (2026-11-25T10:00, commit old, on another machine: cpu)" in \
        readme_block({k: v for k, v in other.items() if k != "copy"}, Path("x.json"))


def test_a_run_on_another_machine_never_overwrites_that_days_file_and_the_latest_run_is_by_its_start(tmp_path):
    from recsys.bench.report import latest_results, results_path

    first = results_path(tmp_path, "2026-12-02T11:00:00", "vm", "AMD")
    assert first.name == "2026-12-02-vm.json"
    first.write_text(json.dumps({"started": "2026-12-02T11:00:00", "machine": {"cpu": "AMD"}}))
    assert results_path(tmp_path, "2026-12-02T15:00:00", "vm", "AMD") == first  # the same machine's day
    second = results_path(tmp_path, "2026-12-02T21:00:00", "vm", "Xeon")
    assert second.name == "2026-12-02-vm-2.json"
    second.write_text(json.dumps({"started": "2026-12-02T21:00:00", "machine": {"cpu": "Xeon"}}))
    (tmp_path / "2026-12-03-vm.json").write_text("{not json")
    import os

    os.utime(first, (2e9, 2e9))  # the newest file time, the older run: a fresh clone's times say nothing
    assert latest_results(tmp_path)["machine"]["cpu"] == "Xeon"


def test_suite_groups_expand_in_run_order_and_unknown_names_are_refused() -> None:
    from recsys.bench.catalogue import SUITES, expand_suites

    # opt-in, outside `all`: factuality (~27 min here) and the plain SASRec row (~20 min)
    assert expand_suites(["all"]) == tuple(x for x in SUITES if x not in ("factuality", "sasrec", "transfer"))
    assert expand_suites(["factuality"]) == ("factuality",)
    assert expand_suites(["sasrec", "quality"]) == ("quality", "sasrec")
    assert expand_suites(["serving", "training"]) == ("offline", "scaling", "serving")
    assert expand_suites(["freshness"]) == ("serving",)
    with pytest.raises(ValueError, match="unknown suite 'latency'"):
        expand_suites(["latency"])


def test_report_states_the_wall_time_of_each_suite():
    result = {
        "started": "2026-11-25T00:00:00+00:00",
        "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 24, "python": "3.11", "commit": "abc", "stack": {}},
        "suite_seconds": {"offline": 600.0, "copy": 660.0, "total": 1260.0},
    }
    text = report(result, Path("bench/results/x.json"))
    assert "offline 600.0, copy 660.0; total 21.0 min" in text
    assert "steal" not in text  # results from before it was recorded
    stolen = report({**result, "cpu_steal": {"offline": 0.441, "copy": None}}, Path("bench/results/x.json"))
    assert "during each suite (steal; the speed rows above and below compare within their run): offline 44%." \
        in stolen
    from recsys.bench.report import readme_block

    assert "| CPU time the hypervisor took (steal), by suite | offline 44% |" in readme_block(
        {**result, "cpu_steal": {"offline": 0.441}}, Path("x.json"))


def test_steal_share_reads_the_stolen_part_of_the_cpu_time_between_two_readings():
    from recsys.bench.processes import cpu_ticks, steal_share

    assert steal_share((100, 1000), (400, 2000)) == 0.3  # 300 of 1,000 ticks stolen
    assert steal_share((0, 1000), (0, 1000)) is None and steal_share(None, (1, 2)) is None
    now = cpu_ticks()
    assert now is not None and 0 <= now[0] <= now[1]  # Linux: /proc/stat is there
    share = steal_share(now, (now[0], now[1] + 100))
    assert share == 0.0


def test_spreads_are_min_median_max_and_windows_split_one_run_by_answer_time():
    assert spread([3.0, 1.0, 10.0, 2.0]) == [1.0, 2.5, 10.0] and spread([]) == []
    assert with_spread([1.0, 2.5, 10.0]) == "2.5 (1.0–10.0)" and with_spread(7.0) == "7.0"
    # 3 s run: 4 answers in the first second (10 ms), 1 in the second (50 ms), 2 in the third (30, 40 ms)
    done = [0.1, 0.2, 0.3, 0.4, 1.5, 2.5, 2.9]
    lat = [10.0, 10.0, 10.0, 10.0, 50.0, 30.0, 40.0]
    w = window_spread(0.0, 3.0, done, lat)
    assert w["rps"] == [1.0, 2.0, 4.0]
    assert w["p50_ms"] == [10.0, 35.0, 50.0]


def test_epoch_rates_read_each_epoch_of_a_tracked_run(tmp_path: Path) -> None:
    import mlflow
    from core.settings import load_settings
    from recsys.bench.suites import epoch_rates
    from training.tracking import setup_mlflow

    s = load_settings(environ={"RECSYS_HOME": str(tmp_path), "RECSYS_PROFILE": "ci"})
    setup_mlflow(s)
    with mlflow.start_run() as run:
        for epoch, secs in ((1, 2.0), (2, 4.0), (3, 5.0)):
            mlflow.log_metrics({"samples": 100.0, "epoch_seconds": secs}, step=epoch)
    assert epoch_rates(s, run.info.run_id) == [50.0, 25.0, 20.0]


def test_factuality_report_says_served_copy_is_factual_only_when_every_template_passed():
    from recsys.bench.report import factuality_report

    f = {"copies": 1000, "held_out_items": 160, "base_factuality": 0.571, "tuned_factuality": 0.991,
         "base_distinct_2": 0.28, "tuned_distinct_2": 0.3, "templates_factual": 1.0, "served_factuality": 1.0,
         "seconds": 1200.0, "generate_seconds_per_item": 0.3, "steps": 60, "base_model": "m",
         "base_distinct_1": 0.2, "tuned_distinct_1": 0.1, "base_verbatim_share": 0.0, "tuned_verbatim_share": 0.42}
    text = "\n".join(factuality_report(f))
    assert "| fine-tuned | 0.991 | 0.100 | 0.300 | 0.420 |" in text and "Served (after the guard): 1.000" in text
    older = {k: v for k, v in f.items() if "distinct_1" not in k and "verbatim" not in k}  # results before them
    assert "| fine-tuned | 0.991 | nan | 0.300 | nan |" in "\n".join(factuality_report(older))
    failed = "\n".join(factuality_report({**f, "templates_factual": 0.998, "served_factuality": None}))
    assert "1.000" not in failed.split("Served")[1] and "a template failed the guard" in failed

    from recsys.bench.report import readme_block, report

    r = {"started": "2026-11-26T00:00:00+00:00", "factuality": f, "suite_seconds": {"factuality": 1200.0,
         "serving": 300.0, "total": 1500.0},
         "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 24, "python": "3.11", "commit": "abc", "stack": {}}}
    assert "| copy LM factuality on 1000 held-out copies (opt-in suite), base → fine-tuned → served after the " \
           "guard | 0.571 → 0.991 → 1.000 |" in readme_block(r, Path("x.json"))
    assert "total 5.0 min without the opt-in suites" in report(r, Path("x.json"))  # 300 s: factuality not counted
    alone = report({**r, "suite_seconds": {"factuality": 1200.0, "total": 1200.0}}, Path("x.json"))
    assert "factuality 1200.0; only opt-in suites ran." in alone and "total 0.0 min" not in alone


def test_the_floor_section_shows_each_interleaved_run_and_the_share_of_the_floor():
    from recsys.bench.report import floor_report

    def run(rps: float, p50: float, p99: float) -> dict:
        return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0}

    floor = {"runs": {"platform": {"8": [run(150, 50, 90), run(140, 52, 95)], "1": [run(70, 12, 25), run(72, 12, 24)]},
                      "floor": {"8": [run(400, 18, 40), run(380, 19, 42)], "1": [run(200, 4, 12), run(190, 4, 13)]}},
             "candidates": 250, "cpu_ms_per_request_c8": {"platform": {"Ingress": 4.0, "Recall": 2.5},
                                                          "floor": {"FloorIngress": 1.5}},
             "floor_ratio": {"rps_c8": 0.37, "p99_c8": 2.2, "p50_c1": 3.0, "rps_c8_per_pair": [0.375, 0.368]}}
    lines = floor_report({"floor": floor})
    rows = [ln for ln in lines if ln.startswith(("| platform", "| floor"))]
    assert rows[:2] == ["| platform | 8 | 150 | 50 | 90 | 0 |", "| floor | 8 | 400 | 18 | 40 | 0 |"]  # interleaved
    assert len(rows) == 8
    text = "\n".join(lines)
    assert "**0.37 of its req/s at concurrency 8** (target ≥ 0.6" in text
    assert "CPU per request, platform, concurrency 8 (ms, by process): Ingress 4.0, Recall 2.5; sum 6.50." in text
    assert floor_report({}) == []  # a serving run without the floor (older results) renders nothing


def _slice(lat_ms: list[float], wall_s: float = 1.0, c: int = 8) -> dict:
    """One `load(..., raw=True)` result as the load generator writes it: its summary and its samples (one latency
    per answered request over `wall_s`)."""
    import numpy as np

    from recsys.bench.load import RAW

    return {"concurrency": c, "include_copy": False, "requests": len(lat_ms), "errors": 0, "error_kinds": {},
            "degraded": 0, "rps": round(len(lat_ms) / wall_s, 1), "p50_ms": float(np.median(lat_ms)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "windows": {}, "stage_cdf_ms": {}, "stage_p50_ms": {},
            RAW: {"lat": lat_ms, "stages": {"total": lat_ms}, "refused": [], "wall_s": wall_s}}


def test_the_copy_lm_section_shows_pooled_slices_and_the_spread_of_the_pair_ratios():
    from recsys.bench.load import pooled
    from recsys.bench.report import copy_lm_serving_report

    runs = {"no_copy": pooled([_slice([20.0] * 290 + [40.0] * 10) for _ in range(4)]),
            "copy": pooled([_slice([22.0] * 270 + [46.0] * 10) for _ in range(4)])}
    cl = {"version": "3", "ready_s": 0.5, "warm_up": [{"requests": 900, "degraded": 5}], "runs": runs, "pairs": 4,
          "slice_s": 3.0, "warm_p99_ratio": 1.15, "warm_p99_per_pair": [1.15, 1.1, 1.2, 1.15],
          "cold": {"requests": 12, "p50_ms": 640.0, "p99_ms": 700.0}, "cold_copy_p95_ms": 610.0,
          "cold_copy_max_ms": 590.0, "copy_budget_ms": 600.0, "copy_timeout_ms": 800.0}
    text = "\n".join(copy_lm_serving_report({"copy_lm": cl}))
    assert "4 mirrored pairs of 3 s slices (off, copy; copy, off; …), each side's slices pooled" in text
    assert "| off | 300.0 | 20.0 | 40.0 | 0 | 300.0–300.0 | 40.0–40.0 |" in text
    assert "| model copy | 280.0 | 22.0 | 46.0 | 0 | 280.0–280.0 | 46.0–46.0 |" in text
    assert "**1.15×** (target ≤ 1.2; per pair 1.1–1.2, median 1.150)" in text


def test_pooled_slices_count_each_request_once_and_mirrored_pairs_cancel_a_steady_drift():
    """The VM slows steadily while two loads alternate (the platform does 0.6 of the floor's req/s at every moment).
    In the order A B A B … the later arm of each pair always runs slower, so a pooled ratio reads 0.6 as less; the
    mirrored order (A B, B A, …) gives 0.6 exactly. Pooling weights a slice by its requests, not one vote each."""
    from recsys.bench.interleave import interleaved, mirrored, pair_ratios
    from recsys.bench.load import pooled

    assert mirrored(4) == [(0, 1), (1, 0), (0, 1), (1, 0)]
    clock = itertools.count()

    def arm(share: float):
        def one() -> dict:
            speed = 1.0 - 0.05 * next(clock)  # each slice 5 % slower than the one before, whichever arm
            return _slice([10.0 / (share * speed)] * round(1000 * share * speed))
        return one

    got = interleaved({"platform": arm(0.6), "floor": arm(1.0)}, 4)
    assert [r["rps"] for r in got["platform"]["slices"]] == [600.0, 510.0, 480.0, 390.0]  # slices 0, 3, 4, 7
    assert round(got["platform"]["rps"] / got["floor"]["rps"], 6) == 0.6
    assert pair_ratios(got["platform"], got["floor"], "rps") == [0.632, 0.567, 0.64, 0.557]  # drift within pairs
    clock = itertools.count()
    naive = {"platform": [], "floor": []}
    for _ in range(4):  # A B A B: the floor always second, always slower
        naive["platform"].append(arm(0.6)())
        naive["floor"].append(arm(1.0)())
    assert pooled(naive["platform"])["rps"] / pooled(naive["floor"])["rps"] > 0.62
    # pooled percentiles are over every request: one slow slice of 2 requests does not make a p50
    mixed = pooled([_slice([5.0] * 100), _slice([50.0, 50.0])])
    assert mixed["requests"] == 102 and mixed["p50_ms"] == 5.0 and mixed["rps"] == 51.0  # 102 over 2 s
    assert mixed["windows"]["rps"] == [2.0, 51.0, 100.0] and "raw" not in mixed and len(mixed["slices"]) == 2
    assert "raw" not in mixed["slices"][0] and mixed["stage_p50_ms"] == {"total": 5.0}
    with pytest.raises(ValueError, match="two arms"):
        interleaved({"a": arm(1.0)}, 2)


def test_floor_ratios_are_between_the_pools_with_each_pair_as_the_spread():
    """A VM stall in one slice (the floor's third, 4x its p99) moves that pair's p99 ratio; the pooled p99 is read
    over all requests of each graph, so one stalled slice of eight is below the pool's 99th percentile."""
    from recsys.bench.load import pooled
    from recsys.bench.report import floor_report
    from recsys.bench.suites import floor_ratios

    plat = pooled([_slice([20.0] * 290 + [40.0] * 10) for _ in range(8)])
    flo = pooled([_slice([12.0] * 490 + ([30.0] * 10 if i != 2 else [120.0] * 10)) for i in range(8)])
    c1 = {name: pooled([_slice([ms] * n, c=1) for _ in range(8)]) for name, n, ms in (("platform", 150, 6.0),
                                                                                    ("floor", 250, 4.0))}
    c1["platform"]["stage_p50_ms"] = {"recall": 2.5, "total": 4.5}  # as the two ingresses time their stages
    q = floor_ratios({"platform": {8: plat, 1: c1["platform"]}, "floor": {8: flo, 1: c1["floor"]}})
    assert (q["rps_c8"], q["p50_c1"]) == (0.6, 1.5)
    assert q["per_pair"]["p99_c8"][2] == 0.333 and q["p99_c8"] == 1.333  # the stalled pair alone reads it fast
    assert q["pooled"] and len(q["per_pair"]["rps_c8"]) == 8
    runs = {"platform": {"8": plat, "1": c1["platform"]}, "floor": {"8": flo, "1": c1["floor"]}}
    text = "\n".join(floor_report({"floor": {"runs": runs, "candidates": 25, "pairs": 8, "slice_s": 3.0,
                                              "cpu_ms_per_request_c8": {"platform": {"Ingress": 2.0}},
                                              "floor_ratio": q}}))
    assert "8 pairs of 3 s slices in mirrored order" in text and "(ratio of the pools)" in text
    assert "| platform | 8 | 300.0 | 20.0 | 40.0 | 0 | 300.0–300.0 | 40.0–40.0 |" in text
    assert "**0.6 of its req/s at concurrency 8** (target ≥ 0.6; per pair 0.6–0.6, median 0.600)" in text
    assert "concurrency 8 (all concurrency-8 slices) (ms, by process): Ingress 2.0" in text
    assert "platform recall 2.5, total 4.5 of 6.0 end to end; floor total 4.0 of 4.0 end to end." in text


def test_the_copy_ahead_line_states_both_hit_rates_and_is_absent_from_older_results():
    from recsys.bench.report import ahead_report

    a = {"k": 10, "users": 50, "copies": 500, "model_copies": 496, "seconds": 61.0, "seconds_per_copy": 0.122,
         "requests": 5000, "zipf_s": 1.0, "users_asked": 700, "stream_share_of_ahead_users": 0.61,
         "hit_rate_ahead_only": 0.598, "hit_rate_served": 0.87}
    text = "\n".join(ahead_report(a))
    assert "500 copies for the top-10 lists of the 50 most active users in 61.0 s" in text
    assert "61% of requests from users written ahead" in text
    assert "**0.598** of the copies asked for were written ahead; **0.870** were cache hits" in text
    assert ahead_report(None) == [] and ahead_report({}) == []  # results from before the copy-ahead job


def test_the_gpu_section_gives_each_speed_against_its_own_runs_reference_and_says_when_the_target_is_missed(
        tmp_path: Path) -> None:
    from recsys.bench.report import gpu_report, latest_results

    gen = {"miss_p50_ms": 704.4, "miss_p99_ms": 6153.2, "hf_generate_p50_ms": 2122.8,
           "miss_vs_hf_generate_ratio": 0.332, "hit_p50_ms": 0.1, "dtype": "torch.bfloat16", "device": "cuda",
           "profile": {"ms": 1551.6, "forward_passes": 15, "kernel_launches": 21633, "device_busy_ms": 96.7}}
    run = {"started": "2026-12-04T15:39:00+00:00", "commit": "abc1234",
           "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "cpus": 16, "torch": "2.11.0", "cuda": "13.0",
                       "python": "3.12.3"},
           "copy_training_gpu": {"steps": 200, "tokens_per_second_per_epoch": [5599.5, 7265.8, 6555.5],
                                 "first_loss": 2.742, "final_loss": 0.0244, "train_seconds": 80.1},
           "copy_generation_gpu": gen,
           "retrieval_gpu": {"epochs": 6, "samples_per_second": 476.5, "train_seconds": 40.6},
           "retrieval_cpu": {"workers": 2, "samples_per_second": 338.5, "train_seconds": 57.1},
           "retrieval_gpu_vs_cpu_samples_ratio": 1.41}
    text = "\n".join(gpu_report(run))
    assert "| 476.5 samples/s (40.6 s) | 2 CPU workers on that machine: 338.5 samples/s (57.1 s) | 1.41× |" in text
    assert "6556 tokens/s per epoch (median; 5600–7266)" in text
    assert "p50 704.4 ms" in text and "0.332× |" in text and "p50 ≤ 150 ms: not met" in text
    assert "21633 kernel launches, the GPU busy 96.7 ms" in text
    assert "p50 ≤ 150 ms: met" in "\n".join(gpu_report({**run, "copy_generation_gpu": {**gen, "miss_p50_ms": 140}}))
    # A GPU run lives in its own folder: the VM bench's latest run (and what it carries over) never reads it.
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "g.json").write_text(json.dumps(run))
    assert latest_results(tmp_path) is None and latest_results(tmp_path / "gpu")["commit"] == "abc1234"
