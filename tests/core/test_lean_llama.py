"""The copy LM served without transformers (`core.lean_llama`, `core.copy_tokenizer`): the same logits as
transformers' Llama through every call the decoder makes, the same tokens and prompts as its tokenizer, and a Copy
model that never imports the library."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.copy_decoding import prompt_text
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.copy_lm import SMOLLM2, TINY, lean_reason, load_base, resolve_base
from core.copy_tokenizer import LeanTokenizer
from core.lean_llama import LeanLlama, read_config, supports

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache() -> Path:
    from core.settings import load_settings

    return load_settings().model_cache


@pytest.fixture(scope="module")
def pair(cache: Path):
    """(transformers' tiny random Llama — 2 layers, 4 query heads over 2 key/value heads —, the lean one with its
    weights), fp32, with random norms so a misplaced weight shows."""
    torch.manual_seed(0)
    hf, _ = load_base(TINY, cache)
    for n, p in hf.named_parameters():
        if "norm" in n:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    where = resolve_base(TINY, cache)
    lean = LeanLlama.from_weights(read_config(where), {k: v.clone() for k, v in hf.state_dict().items()})
    return hf.eval(), lean


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-4 * a.abs().max())


def test_the_same_logits_as_transformers_through_padding_a_cache_and_masked_draft_slots(pair) -> None:
    """The decoder's calls: a left-padded batch with its own positions, then steps on its KV cache of several
    tokens each with some slots masked for good (rejected drafts), rows selected and repeated."""
    from transformers import DynamicCache

    hf, lean = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kh, kl = DynamicCache(config=hf.config), lean.new_cache()
    with torch.inference_mode():
        a = hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kh, use_cache=True).logits
        b = lean(ids, attention_mask=mask, position_ids=pos, past_key_values=kl, use_cache=True).logits
        assert close(a[0, 4:], b[0, 4:]) and close(a[1:], b[1:])
        nxt = pos[:, -1] + 1
        for step in range(3):
            w = 3
            new = torch.randint(3, 1000, (len(nxt), w), generator=g)
            mask = torch.cat([mask, torch.ones(len(nxt), w, dtype=torch.long)], dim=1)
            at = nxt[:, None] + torch.arange(w)
            a = hf(input_ids=new, attention_mask=mask, position_ids=at, past_key_values=kh, use_cache=True).logits
            b = lean(new, attention_mask=mask, position_ids=at, past_key_values=kl, use_cache=True).logits
            assert close(a, b), step
            mask[0, -1] = 0  # a rejected draft slot, never attended again
            nxt = nxt + w - 1
            if step == 1:
                rows = torch.tensor([0, 2])
                for kv in (kh, kl):
                    kv.batch_select_indices(rows)
                mask, nxt = mask[rows], nxt[rows]
        assert close(hf.model(input_ids=ids[1:]).last_hidden_state, lean.get_decoder()(ids[1:]).last_hidden_state)
        keep = torch.tensor([8])
        assert close(hf(input_ids=ids, logits_to_keep=keep).logits, lean(ids, logits_to_keep=keep).logits)
        one = copy.deepcopy(kl)
        one.batch_repeat_interleave(2)
        assert one.length() == kl.length() and one.keys[0].shape[0] == 2 * kl.keys[0].shape[0]


def test_a_pass_naming_its_live_positions_computes_only_them_with_the_same_logits_and_cache(pair) -> None:
    """A batch's padding (left of a short prompt, right of a short draft) skips the projections and the MLP: the
    live positions' logits, and the next pass over the cache, are those of the pass that computes everything."""
    _, lean = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 1000, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :4] = mask[1, 7:] = mask[2, :2] = 0
    mask[2, 9:] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = []
    layer = lean.model.layers[0]
    linear = layer.linear
    layer.linear = lambda x, w: rows.append(x.shape[:-1].numel()) or linear(x, w)
    full, part = lean.new_cache(), lean.new_cache()
    try:
        with torch.inference_mode():
            a = lean(ids, attention_mask=mask, position_ids=pos, past_key_values=full).logits
            computed = rows[:]
            rows.clear()
            b = lean(ids, attention_mask=mask, position_ids=pos, past_key_values=part, live=mask.bool()).logits
            assert close(a[mask.bool()], b[mask.bool()])
            assert computed == [30] * 4 and rows == [int(mask.sum())] * 4 and rows[0] < 30  # the layer's 4 projections
            step, nxt = torch.randint(3, 1000, (3, 2), generator=g), pos[:, -1:] + 1 + torch.arange(2)
            more = torch.cat([mask, torch.ones(3, 2, dtype=torch.long)], 1)
            a = lean(step, attention_mask=more, position_ids=nxt, past_key_values=full).logits
            b = lean(step, attention_mask=more, position_ids=nxt, past_key_values=part).logits
    finally:
        layer.linear = linear
    assert close(a, b)


def test_rejected_draft_slots_are_dropped_from_the_cache_and_the_tokens_stay(pair, monkeypatch) -> None:
    """Every pass keeps its whole draft's cache slots; drafts the model rejects at once (here: always) leave most
    slots dead. `core.copy_decoding.compact` drops them, so the cache stays near its live length, and the copy is
    the one plain greedy decoding writes, without drafts and through transformers' model."""
    import core.copy_decoding as cd
    from core.lean_llama import KVCache

    hf, lean = pair
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(3, 1000, (6,), generator=g).tolist()
    suffixes = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (3, 5, 4)]
    new, eos = 20, 1
    with torch.inference_mode():
        want = cd.greedy(hf, shared, suffixes, new, eos, 0)
    assert len({tuple(w) for w in want}) == 3 and min(map(len, want)) > 10  # real, varied decoding
    # at each point of the right copy, a draft of 12 wrong tokens: one accepted token a pass, 12 dead slots
    cands = [[[*w[:j], *((t + 1 + j) % 1000 + 3 for t in range(12))] for j in range(len(w))] for w in want]
    longest, gathers = [0], []
    update, gather = KVCache.update, KVCache.gather_positions
    monkeypatch.setattr(KVCache, "update", lambda self, *a: longest.append(self.length()) or update(self, *a))
    monkeypatch.setattr(KVCache, "gather_positions", lambda self, i: gathers.append(1) or gather(self, i))

    def run(at: int) -> list[list[int]]:
        monkeypatch.setattr(cd, "COMPACT_AT", at)
        longest[:], gathers[:] = [0], []
        with torch.inference_mode():
            return cd.greedy(lean, shared, suffixes, new, eos, 0, cands)

    kept = run(10**9)
    assert kept == want and not gathers and max(longest) > 12 * 15  # nothing dropped: the dead slots pile up
    assert run(0) == want and gathers and max(longest) < len(shared) + 5 + 3 * new, max(longest)

    # and the next pass's logits over a compacted cache are those over the whole one (rows of unequal dead slots)
    ids = torch.randint(3, 1000, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :4] = mask[1, 1::2] = mask[2, 5:] = 0  # live 4, 4, 5: rows 0 and 1 keep one masked slot each
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    whole = lean.new_cache()
    with torch.inference_mode():
        lean(ids, attention_mask=mask, position_ids=pos, past_key_values=whole)
        small = copy.deepcopy(whole)
        squeezed = cd.compact(small, mask)
        assert small.length() == squeezed.shape[1] == 5 < whole.length()
        step, nxt = torch.randint(3, 1000, (3, 2), generator=g), pos[:, -1:] + 1 + torch.arange(2)
        ones = torch.ones(3, 2, dtype=torch.long)
        a = lean(step, attention_mask=torch.cat([mask, ones], 1), position_ids=nxt, past_key_values=whole).logits
        b = lean(step, attention_mask=torch.cat([squeezed, ones], 1), position_ids=nxt, past_key_values=small).logits
    assert close(a, b)


def test_packed_projections_give_the_same_logits(cache: Path, pair) -> None:
    """oneDNN's weight layout (`LeanLlama.pack`) changes the matmul's speed, not its numbers (in fp32 oneDNN's and
    MKL's products differ in rounding only)."""
    hf, _ = pair
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    lean = LeanLlama.from_weights(read_config(resolve_base(TINY, cache)), state)
    ids = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        plain = lean(ids).logits
        if not lean.pack():
            pytest.skip("this PyTorch build has no oneDNN on this CPU: nothing is packed (pack answered False)")
        assert not isinstance(lean.model.layers[0].qkv, torch.nn.Parameter)  # the packed tensor is in use
        packed = lean(ids).logits
        assert close(plain, packed) and torch.equal(packed.argmax(-1), plain.argmax(-1))


def test_a_pass_is_one_embedding_lookup_as_the_bench_profile_counts_it(pair) -> None:
    """`recsys.bench.copy_lm.profile_miss` counts a miss's forward passes by `aten::embedding`."""
    from torch.profiler import profile

    _, lean = pair
    with torch.inference_mode(), profile() as prof:
        for _ in range(3):
            lean(torch.randint(3, 1000, (2, 5)))
    assert sum(e.count for e in prof.key_averages() if e.key == "aten::embedding") == 3


def test_every_weight_is_placed_and_a_foreign_or_unsupported_checkpoint_is_refused(pair, cache: Path) -> None:
    hf, lean = pair
    assert sum(p.numel() for p in lean.parameters()) == sum(p.numel() for p in hf.parameters())
    assert lean.get_output_embeddings().weight is lean.get_decoder().embed  # tied, as the checkpoint
    where = resolve_base(TINY, cache)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state.pop("model.layers.1.mlp.down_proj.weight")
    with pytest.raises(ValueError, match=r"no model\.layers\.1\.mlp\.down_proj\.weight"):
        LeanLlama.from_weights(read_config(where), state)
    config = read_config(where)
    assert supports(config) is None and lean_reason(where) is None
    assert "attention_bias" in supports({**config, "attention_bias": True})
    assert "rope type" in supports({**config, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    assert "model_type" in supports({**config, "model_type": "qwen2"})


@pytest.fixture(scope="module")
def tokenizers(cache: Path):
    from transformers import AutoTokenizer

    where = resolve_base(SMOLLM2, cache)
    return AutoTokenizer.from_pretrained(where), LeanTokenizer(where)


def test_the_same_tokens_texts_and_prompts_as_transformers_tokenizer(tokenizers) -> None:
    from core.copy_claims import token_texts

    hf, lean = tokenizers
    assert len(lean) == len(hf) and token_texts(lean) == token_texts(hf)  # every token's text, one by one
    assert (lean.eos_token, lean.eos_token_id, lean.pad_token_id) == (hf.eos_token, hf.eos_token_id, hf.pad_token_id)
    texts = [" Amélie (2001)", "Nikita (La Femme Nikita)", "8 1/2", "Tonight's pick:  the 1963 drama\n",
             "<|im_start|>user\nhi<|im_end|>", ""]
    assert lean(texts)["input_ids"] == hf(texts, add_special_tokens=False)["input_ids"]
    assert all(lean(t)["input_ids"] == hf(t, add_special_tokens=False)["input_ids"] for t in texts)
    facts = CopyFacts(ItemFacts.from_row(1, "Amélie (2001)", 2001, ["Comedy", "Romance"]),
                      Taste(("Drama",), ("Seven (Se7en)", "Heat")))
    prompt = prompt_text(lean, facts)
    assert prompt == prompt_text(hf, facts) and prompt.startswith("<|im_start|>system\n")
    ids = hf(prompt, add_special_tokens=False)["input_ids"]
    for skip in (False, True):
        assert lean.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_a_copy_model_serves_without_importing_transformers(tmp_path: Path) -> None:
    """The Copy replica's process: a loaded copy model and a generation, and transformers (with what it imports:
    accelerate, torch._dynamo) never loaded. Fails when either the model or the tokenizer comes from transformers."""
    from core.copy_lm import CopyLMConfig, write_copy_folder

    folder = write_copy_folder(tmp_path / "1", {}, CopyLMConfig(base_model=TINY, max_new_tokens=6), {})
    code = f"""
import sys
from pathlib import Path
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.settings import load_settings
from serving.copy_lm import CopyModel
m = CopyModel(Path({str(folder)!r}), load_settings().model_cache, "float32")
f = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime"]), Taste(("Drama",), ("Heat",)))
print(type(m.model).__name__, type(m.tok).__name__, len(m.generate([f])))
print(sorted(n for n in ("transformers", "accelerate", "torch._dynamo", "sympy") if n in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["LeanLlama LeanTokenizer 1", "[]"], out.stdout


def test_a_copy_models_heap_stays_flat_over_decoding_steps_of_new_lengths(tmp_path: Path) -> None:
    """Each decoding step's attention is a bf16 matmul of a new key length; PyTorch's ideep layer caches a oneDNN
    descriptor per shape (1,024 per thread by default), which grew a live Copy replica by ~30 MB a miss. The
    CopyModel bounds it (LRU_CACHE_CAPACITY): malloc's bytes in use after 300 more steps of a bf16 decode. The
    same run with the default capacity forced back must grow, or the measure shows nothing."""
    from core.copy_lm import CopyLMConfig, write_copy_folder

    folder = write_copy_folder(tmp_path / "1", {}, CopyLMConfig(base_model=TINY, max_new_tokens=6), {})
    code = f"""
import ctypes, torch
from pathlib import Path
from core.settings import load_settings
from serving.copy_lm import CopyModel
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
m = CopyModel(Path({str(folder)!r}), load_settings().model_cache, "bfloat16")
def decode(steps):
    with torch.inference_mode():
        kv = m.model.new_cache()
        m.model(torch.full((4, 8), 5), past_key_values=kv)
        for _ in range(steps):
            m.model(torch.full((4, 1), 5), past_key_values=kv)
def grown():
    decode(20)
    before = libc.mallinfo2().uordblks
    decode(300)
    return (libc.mallinfo2().uordblks - before) / 2**20
print(m.worker.submit(grown).result())
"""

    def grown(env: dict[str, str]) -> float:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in os.environ.items() if k != "LRU_CACHE_CAPACITY"} | env)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    bounded, default = grown({}), grown({"LRU_CACHE_CAPACITY": "1024"})
    assert bounded < 5 and default > 30, (bounded, default)


def test_a_base_the_lean_decoder_cannot_compute_is_served_through_transformers(tmp_path: Path, cache: Path) -> None:
    """A Llama whose config asks for what the lean decoder does not compute (here attention biases) is loaded by
    transformers, whatever `lean` asks."""
    import shutil
    import warnings

    from core.copy_lm import CopyLMConfig, merged

    src = Path(resolve_base(TINY, cache))
    base = tmp_path / "biased"
    shutil.copytree(src, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    assert "attention_bias" in (lean_reason(str(base)) or "")
    with warnings.catch_warnings():  # transformers says the biases it adds are newly initialised: expected here
        warnings.simplefilter("ignore")
        model, tok = merged(str(base), cache, CopyLMConfig(base_model=str(base)), None, lean=True)
    assert type(model).__name__ == "LlamaForCausalLM" and type(tok).__name__ != "LeanTokenizer"

