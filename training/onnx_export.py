"""ONNX export of the two serving graphs, with a parity check against torch (max abs diff)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from training.models.ranking import INPUTS, OUTPUTS, Ranker, ServingRanker
from training.models.retrieval import SASRec, UserEncoder

PARITY_TOL = 1e-4  # max |onnx − torch| the export must meet


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], per_request: tuple[str, ...] = (), any_width: tuple[str, ...] = ()) -> Path:
    """Axis 0 is dynamic everywhere; `per_request` inputs name theirs apart (one row per request, not per row);
    `any_width` inputs declare axis 1 dynamic too (one config.pbtxt for graphs of different widths)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    axes = {n: {0: "request" if n in per_request else "batch"} for n in inputs + outputs}
    for n in any_width:
        axes[n][1] = f"{n}_width"
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    return path


def export_user_encoder(model: SASRec, path: Path) -> Path:
    seq = torch.randint(0, model.cfg.n_items, (2, model.cfg.max_len))
    return _export(UserEncoder(model), (seq,), path, ["history"], ["user_vector"])


def ranker_example(model: Ranker, batch: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A random training batch of the ranker's six inputs: one user per row."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    return (
        torch.randint(0, cfg.n_items, (batch, cfg.max_len), generator=g),
        torch.randint(1, cfg.n_items, (batch, 1), generator=g),
        torch.rand(batch, cfg.item_dense_dim, generator=g),
        torch.randn(batch, cfg.content_dim, generator=g) * 0.05,
        torch.rand(batch, 2, generator=g),
        torch.randn(batch, 1, generator=g),
    )


USER_INPUTS = ("history", "user_dense")  # one row per request in the served graph


@torch.no_grad()
def serving_example(model: Ranker, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One request of the exported graph: one user's history and user_dense, `n` candidates, item_content as the
    graph takes it (also the MLflow input example)."""
    rows = [a[:1] if name in USER_INPUTS else a for name, a in zip(INPUTS, ranker_example(model, n, seed),
                                                                   strict=True)]
    rows[INPUTS.index("item_content")] = ServingRanker(model).content_input(rows[INPUTS.index("item_content")])
    return tuple(rows)


def export_ranker(model: Ranker, path: Path) -> Path:
    """A "projected" graph's item_content width is d_model: declared dynamic, so the one config.pbtxt of a canary
    pair admits any width (Triton's onnxruntime backend checks config dims against the graph's fixed ones)."""
    wide = ("item_content",) if model.cfg.serving_content == "projected" else ()
    return _export(ServingRanker(model), serving_example(model, 3), path, list(INPUTS), list(OUTPUTS),
                   per_request=USER_INPUTS, any_width=wide)


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def parity(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> float:
    """Max abs difference between torch and onnxruntime outputs on `args`."""
    module.eval()
    ref = module(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    sess = _session(path)
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    got = sess.run(None, feeds)
    return float(max(np.abs(r.numpy() - g).max() for r, g in zip(ref, got, strict=True)))


def latency_ms(path: Path, args: tuple[torch.Tensor, ...], repeats: int = 50) -> float:
    """Median onnxruntime latency (ms) of one call with `args` (single thread)."""
    sess = _session(path)
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def user_encoder_example(model: SASRec, batch: int = 8, seed: int = 0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, model.cfg.n_items, (batch, model.cfg.max_len), generator=g),)
