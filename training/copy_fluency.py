"""Fluency of copy: how natural a text reads to the base language model, as its perplexity with no prompt.

The grounding check says whether each claim is supported by the facts, not whether the sentence is English (the
true facts as word salad pass it). The untuned base model (the judge for every model
compared, so a fine-tuned model is not judged by itself) scores each copy standing alone: its tokens' mean
negative log-likelihood after the first, exponentiated. Lower reads more naturally; word salad scores far higher
than the same words in order (`tests/training/test_copy_fluency.py`). What it does not see: one odd word in an
otherwise ordinary sentence ("... for a viewer who enjoys no particular sidescreen." 65 vs "Fargo (1996) is a
crime drama worth your evening." 68 under SmolLM2), and repetition (predictable, so it scores well; the
grounding check's n-gram limit catches it).
"""

from __future__ import annotations

import math
import statistics

import torch


@torch.inference_mode()
def perplexities(judge, tok, texts: list[str], batch_size: int = 32) -> list[float]:
    """Per text, the judge's perplexity of it alone (BOS first when the tokenizer has one); inf for empty text."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    rows = [bos + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        n = max(map(len, chunk))
        ids = torch.tensor([r + [pad] * (n - len(r)) for r in chunk])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in chunk])
        logp = judge(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        for j, r in enumerate(chunk):
            scored = len(r) - 1  # every token after the first (without a BOS the first text token has no context)
            out.append(math.exp(float(nll[j, :scored].sum()) / scored) if scored > 0 else math.inf)
    return out


def fluency(judge, tok, texts: list[str]) -> float:
    """Median perplexity over the texts (a few broken copies do not swamp it; the median is what most read)."""
    values = [p for p in perplexities(judge, tok, texts) if math.isfinite(p)]
    return round(statistics.median(values), 2) if values else math.inf
