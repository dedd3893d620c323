"""The copy stage's model half: the exported champion copy LM, a copy cache, the guard, and a budget.

`CopyWriter.write` answers within `budget_s`: cached copies at once, misses generated in one batched call;
when generation is late, the misses get the grounded template (`copy_source: "template"`) and generation
goes on in the background to fill the cache, so the next request for that (item, taste) gets model copy.
Every generated copy passes the guard or is replaced by the template (`copy_source: "template_guard"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from core.copy_guard import PROMPT_FORMAT, CopyFacts, Guard, Taste, template_text
from core.copy_phrasings import target_forms
from serving.contracts import Copy, CopyResult
from serving.heap import trim_heap

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ray.serve")  # the replica log, as the stage writes


def pick_dtype(setting: str) -> torch.dtype:
    """auto: bf16 only where the CPU computes it natively (avx512_bf16/amx) or on a GPU; fp32 otherwise."""
    import torch

    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "float32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """Generation's attention kernels: on a GPU, any but cuDNN's; on the CPU, PyTorch's choice. cuDNN attention,
    PyTorch's first choice on Hopper, builds an execution plan for each exact shape, and decoding meets a new key
    length at every step: on an H200 one k=10 miss spent 51 % of its host time in `_cudnn_attention_forward`
    (1.5 ms a call) while the GPU was busy 6 % of the miss. Flash and memory-efficient attention keep no plan per
    shape."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class CopyModel:
    """Base + the champion's LoRA adapter, merged (no adapter cost per token), in eval mode.

    All of its torch work (loading, every generate) runs on one thread the model owns. Each thread that runs
    torch ops gets its own OpenMP team; with two teams on a 2-core machine libgomp stops spinning between
    parallel regions and parks its threads on futexes instead, and a k=10 generate took ~1.5 s instead of
    ~1.0 s (~100k context switches per dozen requests instead of ~1k). Callers on other threads (the event
    loop, `asyncio.to_thread`) hand work to that thread: `generate` waits for it, `agenerate` awaits it."""

    def __init__(self, folder: Path, cache_dir: Path, dtype: str = "auto", use_gpu: bool = False,
                 threads: int | None = None) -> None:
        self.version = folder.name
        self.generations = 0  # generates finished; with the two below, touched on the model's thread only
        self._checked = self._trimmed = 0  # `generations` at the last pause check and at the last trim
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"copy-lm-v{self.version}")
        try:
            self.worker.submit(self._load, folder, cache_dir, dtype, use_gpu, threads).result()
        except BaseException:
            self.worker.shutdown(wait=False)
            raise

    def _load(self, folder: Path, cache_dir: Path, dtype: str, use_gpu: bool, threads: int | None) -> None:
        # oneDNN keeps up to 1,024 matmul primitives by default, one per shape, and decoding meets a new shape at
        # most steps: 16 kept 60-90 MB less in a loaded copy model after 80 copies, at the same speed (none: 2x
        # slower). Read at the first matmul, so setting it here still counts; an operator's own value wins.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
        # PyTorch's ideep layer keeps its own cache of oneDNN matmul descriptors, 1,024 per thread by default
        # (LRU_CACHE_CAPACITY), and the attention's bf16 matmuls meet a new key length at every step: ~0.22 MB each,
        # so a Copy replica grew ~30 MB a miss to ~1.2 GB with a weakly tuned adapter's long caches (heaptrack:
        # ideep::utils::computation_cache::fetch_or_create). 16: flat after the first miss, and no slower.
        os.environ.setdefault("LRU_CACHE_CAPACITY", "16")
        import torch  # here, not at import: every replica imports this module (serving.app), few load a model

        from core.copy_lm import merged, read_copy_folder

        self.thread_id = threading.get_ident()
        if threads:
            torch.set_num_threads(threads)  # a Ray replica with num_cpus 0 starts with one
        self.cfg, adapter = read_copy_folder(folder)
        if self.cfg.prompt != PROMPT_FORMAT:  # it would be served prompts it never saw
            raise ValueError(f"copy model v{self.version} was trained on prompt format {self.cfg.prompt!r}, this "
                             f"code writes {PROMPT_FORMAT!r}: retrain it (recsys train copy) and promote")
        self.dtype = pick_dtype(dtype)
        self.folder, self.cache_dir = folder, cache_dir
        # A plain Llama base (SmolLM2) is served by core.lean_llama without importing transformers; others through it.
        model, self.tok = merged(self.cfg.base_model, cache_dir, self.cfg, adapter, self.dtype, lean=True)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        if hasattr(self.model, "pack"):
            self.model.pack()  # oneDNN's weight layout on the CPU (core.lean_llama.LeanLlama.pack)
        trim_heap()

    def generate(self, facts: list[CopyFacts]) -> list[str]:
        """Blocking; one generate at a time per model (its one thread)."""
        if threading.get_ident() == self.thread_id:  # already on it: waiting for itself would never end
            return self._generate(facts)
        return self.worker.submit(self._generate, facts).result()

    async def agenerate(self, facts: list[CopyFacts]) -> list[str]:
        return await asyncio.wrap_future(self.worker.submit(self._generate, facts))

    def close(self) -> None:
        """Let queued generations finish, then end the model's thread (a replaced model's)."""
        self.worker.shutdown(wait=False)

    def trim_if_paused(self) -> Future:
        """Called periodically: true (done) once no generate has finished since the previous call while some had
        before, having given the decodes' freed buffers back to the machine (`trim_heap`, on the model's thread, so
        after anything queued). glibc keeps them for reuse, ~95 MB after a k=10 miss here; trimming after every miss
        would pay their page faults again on the next one (a burst of misses slower), trimming after a pause
        leaves a burst alone and an idle replica smaller."""
        return self.worker.submit(self._trim_if_paused)

    def _trim_if_paused(self) -> bool:
        n = self.generations
        paused, self._checked = n == self._checked and n != self._trimmed, n
        if paused:
            trim_heap()
            self._trimmed = n
        return paused

    def _generate(self, facts: list[CopyFacts]) -> list[str]:
        """One decode per viewer (requests joined by `@serve.batch` may be several): a viewer's items share
        their prompt up to the movie, so that prefix runs once; mixed viewers would share the system line."""
        from core.copy_decoding import generate

        groups: dict[Taste, list[int]] = {}
        for i, f in enumerate(facts):
            groups.setdefault(f.taste, []).append(i)
        out = [""] * len(facts)
        for rows in groups.values():
            with attention_kernels(self.device):
                texts = generate(self.model, self.tok, [facts[i] for i in rows], self.cfg.max_new_tokens,
                                 batch_size=len(rows), drafts=target_forms, min_p=self.cfg.min_p, vocabulary=True)
            for i, text in zip(rows, texts, strict=True):
                out[i] = text
        self.generations += 1
        return out


class CopyCache:
    """LRU of what a generation served, by (item, taste bucket): the model copy, or the template the guard put in
    its place. Decoding is fixed by the facts (greedy, or sampling seeded by this key), so generating a rejected
    copy again would write the same rejected text: under
    load that was a miss on every request for the same items, and generation never caught up."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: OrderedDict[tuple[int, str], Copy] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, facts: CopyFacts) -> Copy | None:
        key = (facts.item.item_id, facts.taste.bucket())
        copy = self.rows.get(key)
        if copy is None:
            self.misses += 1
            return None
        self.hits += 1
        self.rows.move_to_end(key)
        return copy

    def put(self, facts: CopyFacts, copy: Copy) -> None:
        key = (facts.item.item_id, facts.taste.bucket())
        self.rows[key] = copy
        self.rows.move_to_end(key)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)


class CopyWriter:
    def __init__(self, model: CopyModel | None, guard: Guard, cache_size: int,
                 generate: Callable[[list[CopyFacts]], Awaitable[list[str]]] | None = None,
                 max_pending: int = 0) -> None:
        """`generate`: how texts are produced; the Serve deployment passes its `@serve.batch` method, which
        joins concurrent requests' misses into one call; by default one call per request. `max_pending`: copies
        generated at once at most (0: no bound); a miss past it gets the template and is not queued, so a burst
        of new users cannot queue minutes of generation that would hold the CPU long after they left."""
        self.model, self.max_pending = model, max_pending
        self.guard = guard
        self.generate_texts = generate or self._direct
        self.cache = CopyCache(cache_size)
        self.pending: dict[tuple[int, str], asyncio.Future] = {}  # misses being generated (shared by requests)

    def _finish(self, facts: list[CopyFacts], texts: list[str]) -> list[Copy]:
        out = []
        for f, text in zip(facts, texts, strict=True):
            copy = (Copy(text=text, source="model") if self.guard.factual(text, f)
                    else Copy(text=template_text(f), source="template_guard"))
            self.cache.put(f, copy)
            out.append(copy)
        return out

    async def _direct(self, facts: list[CopyFacts]) -> list[str]:
        assert self.model is not None
        return await self.model.agenerate(facts)

    async def _generate(self, facts: list[CopyFacts]) -> list[Copy]:
        return self._finish(facts, await self.generate_texts(facts))

    async def write(self, facts: list[CopyFacts], budget_s: float) -> CopyResult:
        if self.model is None:
            return CopyResult(copies=[Copy(text=template_text(f), source="template") for f in facts],
                              version="template", budget_ms=budget_s * 1e3)
        copies: list[Copy | None] = [None] * len(facts)
        keys: dict[int, tuple[int, str]] = {}
        rejected = 0
        for i, f in enumerate(facts):
            cached = self.cache.get(f)
            if cached is not None:
                copies[i] = cached
                rejected += cached.source == "template_guard"
            else:
                keys[i] = (f.item.item_id, f.taste.bucket())
        late = busy = 0
        error = ""
        new = list({k: i for i, k in keys.items() if k not in self.pending}.values())
        if new and self.max_pending > 0:
            room = max(0, self.max_pending - len(self.pending))
            dropped = {keys[i] for i in new[room:]}
            new = new[:room]
            for i, k in list(keys.items()):
                if k in dropped:  # not generated at all: the template, said as such (not late: nothing follows)
                    copies[i] = Copy(text=template_text(facts[i]), source="template")
                    del keys[i]
                    busy += 1
        if keys:
            if new:  # one generation per (item, taste), shared by every request waiting for it
                task = asyncio.ensure_future(self._generate([facts[i] for i in new]))
                for j, i in enumerate(new):
                    fut = asyncio.get_running_loop().create_future()
                    self.pending[keys[i]] = fut
                    task.add_done_callback(_resolver(fut, j))
                task.add_done_callback(lambda _t, ks=[keys[i] for i in new]: self._clear(ks))
            waits = {i: self.pending[k] for i, k in keys.items()}
            done, _ = await asyncio.wait(set(waits.values()), timeout=budget_s)
            for i, fut in waits.items():
                if fut in done and not fut.cancelled() and fut.exception() is None:
                    copies[i] = fut.result()
                    rejected += copies[i].source == "template_guard"
                    continue
                copies[i] = Copy(text=template_text(facts[i]), source="template")
                if fut in done:  # failed: said as such, not as late
                    why = "cancelled" if fut.cancelled() else type(fut.exception()).__name__
                    error = error or f"copy generation failed: {why}"
                else:  # late: the template now, the cache later
                    late += 1
        return CopyResult(copies=[c for c in copies if c is not None], version=self.model.version, late=late,
                          rejected=rejected, busy=busy, error=error, budget_ms=budget_s * 1e3)

    def _clear(self, keys: list[tuple[int, str]]) -> None:
        for k in keys:
            self.pending.pop(k, None)

    def seed(self, written: list[tuple[CopyFacts, str]]) -> int:
        """Copies written ahead (`serving.copy_ahead`) into the cache, each through this writer's guard (the
        catalogue may have grown since they were written): a failing one is cached as its template, as a
        generated one would be. Returns how many were cached."""
        if self.model is None:
            return 0
        return len(self._finish([f for f, _ in written], [t for _, t in written]))

    async def warm(self, facts: list[CopyFacts], chunk: int = 10) -> int:
        """Fill the cache for these (e.g. the most popular items, no taste) in small background batches."""
        done = 0
        for i in range(0, len(facts), chunk):
            batch = [f for f in facts[i : i + chunk] if self.cache.get(f) is None]
            if batch and self.model is not None:
                try:
                    await self._generate(batch)
                except Exception as e:  # warming is best effort: the next batch may still work
                    log.warning("copy cache warm-up: a batch of %d failed: %s", len(batch), e)
                    continue
                done += len(batch)
        return done


def _resolver(fut: asyncio.Future, j: int):
    def resolve(task: asyncio.Task) -> None:
        if fut.done():
            return
        if task.cancelled():
            fut.cancel()
        elif task.exception() is not None:
            fut.set_exception(task.exception())
        else:
            fut.set_result(task.result()[j])

    return resolve
