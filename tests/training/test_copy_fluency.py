"""The fluency metric: the judge's own loss on each text (padding and batching change nothing), and on the real
base model it must rank word salad below the same words in order."""

from __future__ import annotations

import math
import random

import pytest
import torch

from core.copy_lm import TINY, load_base
from training.copy_fluency import fluency, perplexities

TEXTS = ["Fargo (1996) is a crime drama worth your evening.",
         "Heat (1995): an action thriller with a crime story at its heart, for a viewer who likes drama.",
         "Toy Story (1995) is an animated comedy."]


@pytest.fixture(scope="module")
def cache():
    from core.settings import load_settings

    return load_settings().model_cache


def test_each_text_scores_as_the_judge_scores_it_alone(cache) -> None:
    model, tok = load_base(TINY, cache)
    model.eval()
    got = perplexities(model, tok, TEXTS, batch_size=2)  # padded batches of unequal lengths
    for text, ppl in zip(TEXTS, got, strict=True):
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss  # HF's mean NLL over every token after the first
        assert ppl == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert perplexities(model, tok, [""]) == [math.inf]


@pytest.mark.slow  # loads SmolLM2 (~10 s)
def test_word_salad_reads_worse_than_the_same_words_in_order(cache) -> None:
    model, tok = load_base("HuggingFaceTB/SmolLM2-135M-Instruct", cache)
    model.eval()
    rng = random.Random(0)
    salad = [" ".join(rng.sample(t.split(), len(t.split()))) for t in TEXTS]
    ordered, shuffled = perplexities(model, tok, TEXTS), perplexities(model, tok, salad)
    assert all(s > 2 * o for o, s in zip(ordered, shuffled, strict=True)), (ordered, shuffled)
    assert fluency(model, tok, salad) > 2 * fluency(model, tok, TEXTS)
