"""The tokens a copy is written in: those of the phrasings' compositions (`core.copy_phrasings`) of its facts.

The decoder scores only these (`core.copy_decoding.greedy`, `vocabulary=True`). A grounded copy names the movie,
its year and genres, a watched title and the viewer's genres in the phrasings' words; any other token opens a
claim the facts do not hold or a word no training target had. Over a viewer's k=10 items that is a few hundred
of SmolLM2's 49,152 tokens, and the full LM head was ~15 % of a decode pass's time and, with the
(rows, positions, vocabulary) logits and masks it feeds, most of a decode's working set.

Tokens come from tokenizing compositions, as training targets are tokenized (`copy_ids`: titles on their own),
so a word's pieces and its punctuation ("),", ")." ) are those the model was trained to write. A tokenizer's
pre-tokenizer never joins text across a space before a word, so a piece's tokens depend only on the piece and the
punctuation at its edges: the fixed pieces come from every style of two probe facts, once per tokenizer; a
copy's own values (title, year, genre and taste phrases, watched title) from each naming and each reason its
facts allow.
"""

from __future__ import annotations

import functools
import re

import torch

from core.copy_claims import FactTokens
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.copy_phrasings import compose, covering_styles, styles

# Two viewers and movies that between them open every piece: a year and none, watched titles and a taste the
# movie shares (the taste reasons), titles ending in punctuation ("Airplane!") and in a bracket.
_PROBES = (CopyFacts(ItemFacts(1, "Heat", 1995, ("Action", "Crime", "Thriller")),
                     Taste(("Crime", "Comedy"), ("Airplane!", "The Bride (La Sposa)"))),
           CopyFacts(ItemFacts(2, "Airplane!", -1, ("Comedy", "Romance")), Taste(("Comedy",), ("Heat",))))


def segments(text: str, facts: CopyFacts) -> list[str]:
    """The pieces `core.copy_decoding.copy_ids` tokenizes one by one: the text between the facts' titles, and
    each title with the space before it."""
    titles = sorted({t for t in (facts.item.title, *facts.taste.liked) if t}, key=len, reverse=True)
    if not titles:
        return [text] if text else []
    out, pos = [], 0
    for m in re.finditer("|".join(" ?" + re.escape(t) for t in titles), text):
        out += [p for p in (text[pos : m.start()], m.group(0)) if p]
        pos = m.end()
    return [*out, text[pos:]] if text[pos:] else out


@functools.lru_cache(maxsize=4)  # a few: each hot-swapped model version loads its own tokenizer
def phrasing_tokens(tok) -> frozenset[int]:
    """Tokens of every composition of the probe facts, and the turn's end."""
    parts = sorted({s for f in _PROBES for d in styles(f) for s in segments(compose(f, d), f)})
    return frozenset({i for ids in tok(parts, add_special_tokens=False)["input_ids"] for i in ids} | {tok.eos_token_id})


def copy_vocabularies(tok, facts: list[CopyFacts], extra: torch.Tensor | None = None,
                      held: list[FactTokens] | None = None) -> list[frozenset[int]]:
    """Per copy, the token ids it may take: `phrasing_tokens`, its own facts' (its `covering_styles`), its titles
    and year as the decoder copies them (`FactTokens.runs`, after a space and opening the copy: a copy that opens
    on its title, as no composition does, still spells it whole; `held`: those of `facts`, when already made), and
    `extra` (the tokens that end a copy). Per copy, not per batch: a copy stays fixed by its facts whatever it is
    decoded beside."""
    held = held if held is not None else [FactTokens(tok, f) for f in facts]
    parts = [sorted({s for d in covering_styles(f) for s in segments(compose(f, d), f)}) for f in facts]
    texts = sorted({s for p in parts for s in p})
    ids = dict(zip(texts, tok(texts, add_special_tokens=False)["input_ids"], strict=True)) if texts else {}
    base = phrasing_tokens(tok) | (set(extra.tolist()) if extra is not None else set())
    return [frozenset(base.union(*(ids[s] for s in p), *h.runs)) for p, h in zip(parts, held, strict=True)]


def columns(rows: list[frozenset[int]], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rows' tokens together, sorted: the columns a decoder scores; (rows, columns) bool, each row's own)."""
    vocab = sorted(set().union(*rows))
    at = {t: j for j, t in enumerate(vocab)}
    own = torch.zeros((len(rows), len(vocab)), dtype=torch.bool)
    for r, row in enumerate(rows):
        own[r, [at[t] for t in row]] = True
    return torch.tensor(vocab, dtype=torch.long, device=device), own.to(device)
