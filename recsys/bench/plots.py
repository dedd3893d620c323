"""The benchmark plots README embeds, drawn from one results file (never typed by hand).

latency CDF per stage (concurrency 8, no copy), throughput and p99 against concurrency, quality bars with
standard errors beside the published reference points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = Path("bench") / "plots"
GRU4REC_ML100K_HR10 = 0.110  # RecBole's GRU4Rec quick-start on ML-100K (published, not run here)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(serving: dict[str, Any], path: Path, concurrency: int = 8) -> Path | None:
    run = next((r for r in serving["runs"] if r["concurrency"] == concurrency and not r["include_copy"]), None)
    if run is None or not run.get("stage_cdf_ms"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for stage, values in run["stage_cdf_ms"].items():
        qs = [100 * i / (len(values) - 1) for i in range(len(values))]
        ax.plot(values, qs, label=stage, linewidth=2 if stage == "total" else 1.2)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("percentile of requests")
    ax.set_title(f"/recommend k=10, concurrency {concurrency}, no copy: latency per stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput(serving: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    for copy in (False, True):
        runs = sorted((r for r in serving["runs"] if r["include_copy"] == copy), key=lambda r: r["concurrency"])
        label = "with copy" if copy else "no copy"
        a.plot([r["concurrency"] for r in runs], [r["rps"] for r in runs], marker="o", label=label)
        b.plot([r["concurrency"] for r in runs], [r["p99_ms"] for r in runs], marker="o", label=label)
    a.set_xlabel("concurrent clients")
    a.set_ylabel("requests/s")
    b.set_xlabel("concurrent clients")
    b.set_ylabel("p99 latency (ms)")
    b.axhline(100, color="grey", linestyle="--", linewidth=1, label="target at 8 clients")
    levels = sorted({r["concurrency"] for r in serving["runs"]})
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("/recommend k=10, closed loop on 127.0.0.1")
    return _save(fig, path)


def quality(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    names = [r["model"] for r in rows]
    xs = range(len(rows))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], [r["hr_at_10"] for r in rows], w, yerr=[r["hr_at_10_se"] for r in rows],
           label="HR@10", capsize=3)
    ax.bar([x + w / 2 for x in xs], [r["ndcg_at_10"] for r in rows], w, yerr=[r["ndcg_at_10_se"] for r in rows],
           label="NDCG@10", capsize=3)
    ax.axhline(GRU4REC_ML100K_HR10, color="grey", linestyle="--", linewidth=1,
               label="GRU4Rec HR@10, RecBole (published)")
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test split, full ranking (± SE)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def draw(result: dict[str, Any], folder: Path = PLOTS) -> dict[str, Path]:
    """Every plot the result has data for; name → file."""
    out: dict[str, Path] = {}
    if "quality" in result:
        out["quality"] = quality(result["quality"], folder / "quality.png")
    if "serving" in result:
        out["throughput"] = throughput(result["serving"], folder / "throughput.png")
        cdf = latency_cdf(result["serving"], folder / "latency_cdf.png")
        if cdf is not None:
            out["latency_cdf"] = cdf
    return out
