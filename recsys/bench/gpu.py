"""The GPU paths, run once where a GPU is lent: the Ray Train jobs on a GPU worker and the copy LM on the GPU.

It needs only what a bare CUDA machine with PyTorch has, plus Ray, pydantic and gguf carried as wheels: no Feast,
MLflow or Triton. The inputs are a prepared data home (`recsys data`) and the item content matrix read through Feast
(`python -m recsys.bench.gpu --export-content HOME FILE` writes it where Feast runs).

Each speed is reported beside a reference measured in the same run on the same machine: the retrieval job on
GPU against the same job on CPU workers (same epochs), the copy miss against plain Hugging Face `generate` on the
same prompts and model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from core.settings import Settings, load_settings
from recsys.bench.processes import commit

if TYPE_CHECKING:
    from training.datasets import Prepared


def machine() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return out


def retrieval(s: Settings, prepared: Prepared, content: np.ndarray, epochs: int) -> dict[str, Any]:
    """The retrieval Ray Train job (`train_retrieval`) with `epochs` epochs and no early stop: its epoch time is
    what is compared, GPU against CPU workers."""
    from training.jobs.retrieval import train_retrieval
    from training.steps import retrieval_config

    cfg = retrieval_config(s, prepared, epochs=epochs, patience=epochs, budget_s=3600.0)
    t0 = time.perf_counter()
    out = train_retrieval(s, prepared, content, cfg)
    return {"workers": s.train_workers, "use_gpu": s.use_gpu, "epochs": out.epochs,
            "train_seconds": round(out.train_seconds, 1), "samples_per_second": round(out.samples_per_second, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1), "kept_epoch": out.best_epoch,
            "valid": out.valid.as_dict(), "test": out.test.as_dict()}


def copy_training(s: Settings, prepared: Prepared) -> tuple[dict[str, Any], Any, Any]:
    """The copy LM's LoRA Ray Train job on this machine's settings (GPU worker when `use_gpu`), training only."""
    from training.copy_data import build_pairs
    from training.copy_steps import copy_config, guard_for
    from training.jobs.copy import train_copy

    cfg = copy_config(s)
    pairs = build_pairs(prepared.split.train, prepared.ds.items, s.copy_train_pairs, s.copy_eval_items, seed=s.seed)
    out = train_copy(s, cfg, pairs.train, pairs.held_out, guard_for(prepared), evaluate=False)
    return ({"use_gpu": s.use_gpu, "steps": cfg.steps, "train_seconds": round(out.train_seconds, 1),
             "tokens_per_second_per_epoch": [round(x, 1) for x in out.epoch_tokens_per_second],
             "first_loss": round(out.first_loss, 4), "final_loss": round(out.losses[-1], 4)}, out.adapter, cfg)


def run(home: Path, content: np.ndarray, out_file: Path, epochs: int, cpu_workers: int,
        dry: bool = False, skip_retrieval: bool = False) -> dict[str, Any]:
    from core.copy_lm import write_copy_folder
    from recsys.bench.copy_lm import generation_here
    from training.datasets import prepare

    console = Console()
    base = {"home": str(home), "ray_dashboard": False, "ray_num_cpus": 8}
    gpu = load_settings({**base, "use_gpu": not dry, "copy_use_gpu": not dry, "train_workers": 1,
                         "copy_steps": 4 if dry else None})
    cpu = load_settings({**base, "use_gpu": False, "train_workers": cpu_workers})
    prepared = prepare(gpu)  # the same home for both settings
    res: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit(),
                           "machine": machine()}

    def save() -> None:
        out_file.write_text(json.dumps(res, indent=1))

    res["copy_training_gpu"], adapter, cfg = copy_training(gpu, prepared)
    console.print("copy training", res["copy_training_gpu"])
    save()
    write_copy_folder(gpu.model_repo / "copy" / "1", adapter, cfg, {})
    res["copy_generation_gpu"] = generation_here(gpu, "1", profile=True)
    console.print("copy generation", res["copy_generation_gpu"])
    save()
    if not skip_retrieval:
        for name, step in (("retrieval_gpu", lambda: retrieval(gpu, prepared, content, epochs)),
                           ("retrieval_cpu", lambda: retrieval(cpu, prepared, content, epochs))):
            res[name] = step()
            console.print(name, res[name])
            save()
        g, c = res["retrieval_gpu"], res["retrieval_cpu"]
        res["retrieval_gpu_vs_cpu_samples_ratio"] = round(g["samples_per_second"] / c["samples_per_second"], 2)
        save()
    return res


def export_content(home: Path, out: Path) -> None:
    """Where Feast runs: the content matrix the retrieval job reads, in the prepared data's index order."""
    from training.datasets import prepare
    from training.steps import content_matrix

    s = load_settings({"home": str(home)})
    np.save(out, content_matrix(s, prepare(s)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("home", type=Path)
    p.add_argument("content", type=Path, help="the .npy content matrix")
    p.add_argument("--out", type=Path, default=Path("gpu.json"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--cpu-workers", type=int, default=2)
    p.add_argument("--export-content", action="store_true", help="write CONTENT from HOME's features and stop")
    p.add_argument("--skip-retrieval", action="store_true", help="the copy LM only")
    p.add_argument("--dry", action="store_true", help="the same steps on the CPU, briefly: a check of the script")
    a = p.parse_args(argv)
    if a.export_content:
        export_content(a.home, a.content)
        return 0
    run(a.home, np.load(a.content), a.out, 1 if a.dry else a.epochs, a.cpu_workers, a.dry, a.skip_retrieval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
