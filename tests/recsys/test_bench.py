"""The benchmark report and the closed-loop load generator, against a tiny local HTTP server."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recsys.bench import load, report


class _Fake(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["user_id"] == 13:
            self.send_response(500)
            self.end_headers()
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


def test_load_counts_errors_and_degraded_answers_separately(fake_graph):
    r = load(fake_graph, users=[1, 7, 13], concurrency=3, seconds=0.5, include_copy=False, max_requests=60)
    assert r["requests"] > 0 and r["errors"] > 0  # user 13 always fails and is not counted as answered
    assert r["error_kinds"] == {"500": r["errors"]}  # by HTTP status: load shedding (503) is told apart
    assert 0 < r["degraded"] < r["requests"]
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["stage_p50_ms"] == {"recall": 1.0, "total": 2.0}


def test_report_has_one_table_row_per_measurement():
    result = {
        "started": "2026-11-25T00:00:00+00:00",
        "machine": {"cpu": "cpu", "cores": 2, "ram_gib": 24, "python": "3.11", "commit": "abc", "stack": {"ray": "2"}},
        "scaling": {"workers_1": 100.0, "workers_2": 150.0, "speedup": 1.5, "scaling_efficiency": 0.75, "epochs": 3},
        "quality": [{"model": "mostpop", "hr_at_10": 0.05, "hr_at_10_se": 0.007, "ndcg_at_10": 0.025,
                     "ndcg_at_10_se": 0.004, "mrr": 0.02, "coverage_at_10": 0.01}],
    }
    text = report(result, Path("bench/results/x.json"))
    assert "| 2 × 1 thread (DDP) | 150.0 |" in text
    assert "| mostpop | 0.0500 ± 0.0070 | 0.0250 ± 0.0040 |" in text
    assert "## Serving" not in text  # a suite that did not run gets no table


def test_cpu_per_request_charges_the_process_that_burned_it() -> None:
    import os
    import time

    import psutil

    from recsys.bench import cpu_per_request

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
    from recsys.bench_plots import draw

    files = draw(_result(), tmp_path)
    assert set(files) == {"quality", "throughput", "latency_cdf"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000 for p in files.values())
    bare = _result()
    for run in bare["serving"]["runs"]:
        del run["stage_cdf_ms"]  # an older results file: no CDF to draw, the rest still drawn
    assert set(draw(bare, tmp_path / "old")) == {"quality", "throughput"}


def test_readme_block_replaces_only_the_marked_part():
    from recsys.bench import README_BEGIN, README_END, readme_block, with_readme_block

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
    from recsys.bench import carry_over, readme_block

    old = {**_result(), "copy": {"x": 1}, "started": "2026-11-25T10:00:00+00:00"}
    old["machine"] = {**old["machine"], "commit": "old"}
    new = {"started": "2026-11-26T00:00:00+00:00", "machine": {**_result()["machine"], "commit": "new"},
           "quality": [{**_result()["quality"][0], "model": "ease"}]}
    merged = carry_over(dict(new), old)
    assert merged["quality"][0]["model"] == "ease"  # measured now: never replaced
    assert merged["copy"] == {"x": 1} and merged["serving"] == old["serving"]
    assert merged["carried_from"]["copy"] == {"started": "2026-11-25T10:00:00+00:00", "commit": "old"}
    again = carry_over({"started": "2026-11-27T00:00:00+00:00", "machine": new["machine"]}, merged)
    assert again["carried_from"]["copy"]["commit"] == "old"  # still the run that measured it
    other = {**new, "machine": {**new["machine"], "cpu": "another cpu"}}
    assert "copy" not in carry_over(dict(other), old)  # another machine's numbers are not mixed in
    shown = {k: v for k, v in merged.items() if k != "copy"}
    text = readme_block(shown, Path("x.json"))
    assert "carried over from earlier runs on this machine: serving (2026-11-25T10:00, commit old); copy" in text


def test_suite_groups_expand_in_run_order_and_unknown_names_are_refused() -> None:
    from recsys.bench import SUITES, expand_suites

    assert expand_suites(["all"]) == SUITES
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
