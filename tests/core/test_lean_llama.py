"""The copy LM served without transformers (`core.lean_llama`, `core.copy_tokenizer`): the same logits as
transformers' Llama through every call the decoder makes, the same tokens and prompts as its tokenizer, and a Copy
model that never imports the library."""

from __future__ import annotations

import copy
import json
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

