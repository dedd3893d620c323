"""The item text encoder as an ONNX graph, for serving: a catalogue upsert embeds with ONNX Runtime and `tokenizers`
instead of torch and sentence-transformers, which stayed resident in the Feedback replica after its first upsert
(its RSS 0.28 → 0.78 GiB, the largest share of the serving stack after the copy model).

Built once per model cache from the sentence-transformers model (`core.content`: torch, where the data set's items
are embedded anyway, `recsys features`), and only for the pipeline it reproduces exactly: transformer → mean of
the tokens → (L2 normalisation). Another pipeline gets no graph and upserts embed with sentence-transformers as
before. Tests check the two give the same vectors.

The weights sit beside the graph (`WEIGHTS`), which ONNX Runtime maps rather than reads: an upsert's few items touch
a few hundred rows of the word-embedding table, over half of the weights, so the rest never becomes the replica's
memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.content import encoder as content_encoder
from core.content import item_text

GRAPH, WEIGHTS, TOKENIZER, PIPELINE = "encoder.onnx", "encoder.weights", "tokenizer.json", "pipeline.json"


def graph_dir(model_name: str, cache: Path) -> Path:
    return cache / ("content-onnx-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name))


def build(model_name: str, out: Path) -> bool:
    """Export `model_name`'s encoder to `out` (torch); False, with nothing written, when its pipeline is not
    transformer → mean pooling → optional normalisation."""
    import torch

    st = content_encoder(model_name)  # the model `recsys features` just embedded the items with (loaded once)
    kinds = [type(m).__name__ for m in st]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or not _mean(st[1]):
        return False
    hf, tok = st[0].auto_model.eval(), st[0].tokenizer
    sample = tok(["a first item. Genres: Drama.", "b"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf  # a submodule, so its weights export as initializers

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.hf(**dict(zip(names, args, strict=True))).last_hidden_state

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}
        torch.onnx.export(Hidden(), tuple(sample[n] for n in names), str(out / GRAPH), input_names=names,
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    weights_apart(out / GRAPH)
    tok.backend_tokenizer.save(str(out / TOKENIZER))
    (out / PIPELINE).write_text(json.dumps({"model": model_name, "inputs": names, "max_length": st.max_seq_length,
                                            "normalize": kinds[-1] == "Normalize",
                                            "pad_id": tok.pad_token_id, "pad_token": tok.pad_token}))
    return True


def weights_apart(graph: Path) -> None:
    """Move the graph's initializers into `WEIGHTS` beside it (ONNX Runtime then maps them, `mmap`, and reads the
    pages an inference touches)."""
    import onnx

    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS,
                    size_threshold=1024)


def _mean(pooling) -> bool:
    """Mean of the tokens and nothing else (sentence-transformers 6 says `pooling_mode`, older ones flags)."""
    cfg = pooling.get_config_dict()
    if "pooling_mode" in cfg:
        return cfg["pooling_mode"] == "mean"
    flags = {k: v for k, v in cfg.items() if k.startswith("pooling_mode_")}
    return flags.pop("pooling_mode_mean_tokens", False) and not any(flags.values())


class OnnxEncoder:
    """`embed_items`'s vectors from the exported graph: one ONNX Runtime session, on one thread unless told (an
    upsert is a handful of items; the replica's other work keeps the other core)."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.pipeline = json.loads((folder / PIPELINE).read_text())
        self.tok = Tokenizer.from_file(str(folder / TOKENIZER))
        self.tok.enable_truncation(int(self.pipeline["max_length"]))
        self.tok.enable_padding(pad_id=int(self.pipeline["pad_id"]), pad_token=str(self.pipeline["pad_token"]))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        self.session = ort.InferenceSession(str(folder / GRAPH), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Batches of similar length, as sentence-transformers forms them (less padding to compute), in `texts`' order
        on return."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tok.encode_batch([texts[i] for i in order[start:start + batch_size]])
            cols = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            hidden = self.session.run(["hidden"], {n: cols[n] for n in self.pipeline["inputs"]})[0]
            mask = cols["attention_mask"][..., None].astype(np.float32)
            vec = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            if self.pipeline["normalize"]:
                vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
            out.append(vec.astype(np.float32))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(out)
        return vectors

    def embed_items(self, items: pd.DataFrame) -> np.ndarray:
        return self.encode(item_text(items))


def encoder(model_name: str, cache: Path, threads: int = 1) -> OnnxEncoder | None:
    """The graph's encoder when it was built for this model (`ensure`), else None (embed with torch)."""
    folder = graph_dir(model_name, cache)
    return OnnxEncoder(folder, threads) if (folder / PIPELINE).is_file() else None


def ensure(model_name: str, cache: Path) -> bool:
    """Build the graph into the cache unless it is there (atomic: a reader never sees half); True if it exists. A
    graph built with its weights inside (before `WEIGHTS`) gets them moved out, without torch."""
    folder = graph_dir(model_name, cache)
    if (folder / PIPELINE).is_file():
        if not (folder / WEIGHTS).is_file():
            _move_weights_out(folder, cache)
        return True
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=folder.name + ".tmp"))
    try:
        if not build(model_name, tmp):
            return False
        with contextlib.suppress(OSError):  # another process built it first
            tmp.rename(folder)
        return (folder / PIPELINE).is_file()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_weights_out(folder: Path, cache: Path) -> None:
    """Convert in the folder itself, never moving it (a replica may be loading from it, or have its weights mapped):
    the new graph and its weights are made aside, the weights linked in (only one converter's link succeeds; the
    others stop), then the graph replaced in one rename. A reader meets the old graph, whole with its weights, or
    the new one with its weights already there."""
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=folder.name + ".tmp"))
    try:
        shutil.copyfile(folder / GRAPH, tmp / GRAPH)
        weights_apart(tmp / GRAPH)
        try:
            os.link(tmp / WEIGHTS, folder / WEIGHTS)
        except FileExistsError:
            return
        os.replace(tmp / GRAPH, folder / GRAPH)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
