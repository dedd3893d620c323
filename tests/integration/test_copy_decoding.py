"""The copy LM's decoder on the real SmolLM2-135M-Instruct (fp32, no fine-tuning needed): sharing a viewer's
prompt prefix and verifying drafts must produce exactly the copy Hugging Face's greedy `generate` produces on
the whole prompts, and drafts the model agrees with must save forward passes."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from core.copy_claims import FactTokens, GroundedClaims, claim_tokens, title_ids
from core.copy_decoding import (
    FinishedCopy,
    TitleCopy,
    VocabularyLimit,
    first_line,
    generate,
    greedy,
    prompt_ids,
    sentence_ends,
)
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.copy_phrasings import target_forms
from core.copy_vocabulary import copy_vocabularies

pytestmark = pytest.mark.slow  # loads SmolLM2 and decodes on 2 CPU cores (~50 s)

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
ITEMS = [("Fargo (1996)", 1996, ["Crime", "Drama", "Thriller"]), ("Heat (1995)", 1995, ["Action", "Crime"]),
         ("Usual Suspects, The (1995)", 1995, ["Crime", "Thriller"]), ("Toy Story (1995)", 1995, ["Animation"])]
TASTES = [Taste(("Drama", "Comedy"), ("Se7en", "Twelve Monkeys")), Taste(("Horror",), ("Scream",)), Taste()]
MAX_NEW = 24


@pytest.fixture(scope="module")
def smollm2():
    from core.copy_lm import load_base
    from core.settings import load_settings

    model, tok = load_base(BASE, load_settings().model_cache)
    return model.eval(), tok


def facts() -> list[CopyFacts]:
    """Three viewers (one without any taste), their items interleaved as a request batch would not be."""
    return [CopyFacts(ItemFacts.from_row(i + 1, t, y, g), taste)
            for taste in TASTES for i, (t, y, g) in enumerate(ITEMS)][::-1]


@torch.inference_mode()
def reference(model, tok, batch: list[CopyFacts], vocabulary: bool = False) -> list[str]:
    """Hugging Face's greedy generate over the whole prompts, left-padded: what the copy must equal (`vocabulary`:
    each row limited to its own tokens, as `generate(vocabulary=True)` writes)."""
    rows = [a + b for a, b in (prompt_ids(tok, f) for f in batch)]
    n = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    titles = TitleCopy([title_ids(tok, f) for f in batch], n)  # titles copied whole, as served
    finished = FinishedCopy(sentence_ends(tok), n)  # and no turn ending mid-sentence
    claims = GroundedClaims(claim_tokens(tok), [FactTokens(tok, f) for f in batch], n)  # nor claim off the facts
    limit = [VocabularyLimit(copy_vocabularies(tok, batch, sentence_ends(tok)[1]))] if vocabulary else []
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         logits_processor=LogitsProcessorList([finished, claims, titles, *limit]))
    return [first_line(t) for t in tok.batch_decode(gen[:, n:], skip_special_tokens=True)]


def test_shared_prefixes_and_drafts_decode_exactly_what_generate_does(smollm2) -> None:
    model, tok = smollm2
    batch = facts()
    want = reference(model, tok, batch)
    assert len(set(want)) > len(ITEMS)  # real, varied text: the comparison means something
    assert generate(model, tok, batch, MAX_NEW, batch_size=5) == want  # mixed viewers: system line shared
    assert generate(model, tok, batch, MAX_NEW, batch_size=16, drafts=target_forms) == want


def test_a_copy_limited_to_its_vocabulary_is_what_generate_writes_limited_to_it(smollm2) -> None:
    """Scoring only the batch's tokens and masking each row to its own: exactly Hugging Face's generate with every
    other token refused, whatever the batch (a row's tokens are its own, not its neighbours'); the base model,
    unlimited, writes other words, so the limit changes something."""
    model, tok = smollm2
    batch = facts()
    want = reference(model, tok, batch, vocabulary=True)
    assert len(set(want)) > len(ITEMS)
    assert generate(model, tok, batch, MAX_NEW, batch_size=5, vocabulary=True) == want
    assert generate(model, tok, batch, MAX_NEW, batch_size=16, drafts=target_forms, vocabulary=True) == want
    assert generate(model, tok, batch[::-1], MAX_NEW, batch_size=3, vocabulary=True) == want[::-1]
    assert want != reference(model, tok, batch)
    sampled = generate(model, tok, batch, MAX_NEW, batch_size=16, min_p=0.05, vocabulary=True)
    assert generate(model, tok, batch[::-1], MAX_NEW, batch_size=3, drafts=target_forms, min_p=0.05,
                    vocabulary=True) == sampled[::-1]


def test_sampled_copy_is_fixed_by_its_facts_whatever_the_drafts_and_batches(smollm2) -> None:
    """Min-p sampling draws one uniform per (copy, position): drafts and batch sizes change how a pass is laid
    out, never the text; the same facts always get the same copy; and it is not just greedy decoding."""
    model, tok = smollm2
    batch = facts()
    sampled = generate(model, tok, batch, MAX_NEW, batch_size=16, min_p=0.05)
    assert generate(model, tok, batch, MAX_NEW, batch_size=5, drafts=target_forms, min_p=0.05) == sampled
    assert generate(model, tok, batch[::-1], MAX_NEW, batch_size=3, min_p=0.05) == sampled[::-1]
    assert sampled != reference(model, tok, batch)


def test_drafts_the_model_agrees_with_save_forward_passes(smollm2) -> None:
    model, tok = smollm2
    parts = [prompt_ids(tok, f) for f in facts()[:4]]  # one viewer's items: one shared prefix
    shared, suffixes = parts[0][0], [item for _, item in parts]
    assert all(head == shared for head, _ in parts)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))

    def run(cands):
        calls.clear()
        with torch.inference_mode():
            out = greedy(model, shared, suffixes, MAX_NEW, eos, pad, cands)
        return out, len(calls)

    try:
        plain, n_plain = run(None)
        own, n_own = run([[[*p, eos]] for p in plain])  # drafts the model agrees with throughout
        wrong, n_wrong = run([[[*p[:3], p[3] + 1, *p[4:], eos]] for p in plain])  # it disagrees at token 4
    finally:
        hook.remove()
    assert own == plain and wrong == plain
    assert n_plain >= 10 and n_own <= 5 and n_own < n_wrong < n_plain, (n_plain, n_own, n_wrong)


def test_joined_requests_decode_one_viewer_at_a_time_in_their_order(smollm2, tmp_path) -> None:
    """`@serve.batch` hands the copy model several requests' items at once: each viewer is decoded on its own
    (its prefix shared), and every text goes back to its item."""
    from core.copy_lm import CopyLMConfig, add_lora, load_base, write_copy_folder
    from core.settings import load_settings
    from serving.copy_lm import CopyModel
    from training.models.lora_shards import lora_state

    model, tok = smollm2
    cfg = CopyLMConfig(base_model=BASE, max_new_tokens=MAX_NEW, min_p=0.0)  # greedy: comparable to `reference`
    cache = load_settings().model_cache
    adapter = {k: v * 0 for k, v in lora_state(add_lora(load_base(BASE, cache)[0], cfg)).items()}  # = the base
    copy = CopyModel(write_copy_folder(tmp_path / "1", adapter, cfg, {}), cache, "float32")
    batch = facts()  # three viewers, interleaved
    assert copy.generate(batch) == reference(model, tok, batch, vocabulary=True)  # served: limited to its tokens
