"""The copy LM's prompt and decoder, shared by training, evaluation and the Copy replica.

One function builds the prompt (the tokenizer's own chat template over `core.copy_guard.messages`), so the
fine-tuned model is served exactly the prompt it was trained on. The prompt is tokenized in two parts, the
viewer's shared prefix and the item's suffix, in training as in serving: generation for k items of one viewer
then runs the shared prefix through the model once and decodes all k items from a copy of its KV cache. Served,
each copy is written only in its own tokens (`core.copy_vocabulary`), and only the batch's few hundred are scored.
"""

from __future__ import annotations

import copy
import functools
import random
import re
from collections.abc import Callable
from typing import Any

import torch

from core.copy_claims import ClaimTokens, FactTokens, ban, claim_tokens, holds, token_texts, within
from core.copy_guard import CopyFacts, ItemFacts, Taste, messages
from core.copy_phrasings import style, style_words
from core.copy_vocabulary import columns, copy_vocabularies, segments


def prompt_text(tok, facts: CopyFacts, line: str | None = None) -> str:
    """`line`: the facts' style line (`style_words`), when the caller has it already."""
    line = style_words(style(facts)) if line is None else line
    return tok.apply_chat_template(messages(facts, line), tokenize=False, add_generation_prompt=True)


def prompt_parts(tok, facts: CopyFacts) -> tuple[str, str]:
    """The prompt split where the movie starts: (everything up to and including the viewer, the movie and the
    turn's end). Every item recommended to one viewer shares the first part."""
    line = style_words(style(facts))
    full = prompt_text(tok, facts, line)
    head, tail = facts.document_parts(line)
    cut = full.index(head + tail) + len(head)
    return full[:cut], full[cut:]


def prompt_ids(tok, facts: CopyFacts) -> tuple[list[int], list[int]]:
    """Token ids of the two parts, each tokenized alone (the same cut in training and serving)."""
    shared, item = prompt_parts(tok, facts)
    return (tok(shared, add_special_tokens=False)["input_ids"], tok(item, add_special_tokens=False)["input_ids"])


def end_text(tok) -> str:
    """What closes an assistant turn in this chat template (SmolLM2: <|im_end|>); learnt so generation stops."""
    return tok.eos_token or ""


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


@torch.inference_mode()
def generate(model, tok, facts: list[CopyFacts], max_new_tokens: int, batch_size: int = 16,
             drafts: Callable[[CopyFacts], list[str]] | None = None, lookahead: int = 12,
             min_p: float = 0.0, vocabulary: bool = False) -> list[str]:
    """A copy for each facts; the first line, stripped, of what was generated. Items of one viewer (the
    same prompt prefix) are batched together; each batch computes the prefix its rows share once.
    `min_p` 0: greedy. Above 0: min-p sampling (`pick`), seeded per copy (`CopyFacts.key`) and per position.
    `drafts(facts)`: texts the copy is likely to follow (e.g. the training phrasings of these facts); the
    decoder verifies up to `lookahead` of their tokens per forward pass and keeps only what the decoder
    itself picks, so they change the speed, never the copy. `vocabulary`: the copy is written only in the tokens
    of its facts' compositions (`core.copy_vocabulary`), and only they are scored (where `plain_head` holds)."""
    parts = [prompt_ids(tok, f) for f in facts]
    system = system_length(tok)
    full = [shared + item for shared, item in parts]
    order = sorted(range(len(facts)), key=lambda i: parts[i][0])  # one viewer's items side by side
    out = [""] * len(facts)
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        common = shared_length([full[r] for r in chunk])
        # Drafts: the phrasings, then the prompt itself (copy repeats its facts: a title's tokens follow on).
        cands = [[*answer_ids(tok, drafts(facts[r]), facts[r]), full[r]] for r in chunk] if drafts else None
        held = [FactTokens(tok, facts[r]) for r in chunk]  # the rows' titles and year, tokenized once
        vocab = (copy_vocabularies(tok, [facts[r] for r in chunk], sentence_ends(tok)[1], held)
                 if vocabulary and plain_head(model) else None)
        new = greedy(model, full[chunk[0]][:common], [full[r][common:] for r in chunk], max_new_tokens,
                     tok.eos_token_id, tok.pad_token_id, cands, lookahead,
                     [facts[r].key() for r in chunk] if min_p > 0 else None, min_p, system,
                     [ft.titles for ft in held], sentence_ends(tok), (claim_tokens(tok), held), vocab)
        for r, ids in zip(chunk, new, strict=True):
            out[r] = first_line(tok.decode(ids, skip_special_tokens=True))
    return out


def shared_length(rows: list[list[int]]) -> int:
    """Length of the token prefix all rows share (at least the system line), leaving every row one token."""
    n = min(len(r) for r in rows) - 1
    for j in range(n):
        t = rows[0][j]
        if any(r[j] != t for r in rows):
            return j
    return n


def answer_ids(tok, texts: list[str], facts: CopyFacts) -> list[list[int]]:
    """Texts as the model would write them: tokenized like training targets (`copy_ids`), turn end included."""
    end = tok(end_text(tok), add_special_tokens=False)["input_ids"]
    return [copy_ids(tok, t, facts) + end for t in texts]


def copy_ids(tok, text: str, facts: CopyFacts) -> list[int]:
    """A copy's token ids with its facts' titles tokenized on their own (" " + title, as `title_ids`): the
    decoder copies a title as exactly those tokens (`forced`), so training must see them too. Tokenized whole,
    a title's last token can merge with what follows ("(Se7en)." ends in the one token ")."), and the model,
    trained on the merged token and then handed ")" by the decoder, wrote past the end of the sentence ("Because
    you watched Seven (Se7en) because you watched…": 6 of 14 failures in 1,000 copies, session 34)."""
    return [i for part in segments(text, facts) for i in tok(part, add_special_tokens=False)["input_ids"]]


_FINISHED = re.compile(r"[.!?][\"'’”)]*\s*$")


@functools.lru_cache(maxsize=4)
def sentence_ends(tok) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids whose text ends a sentence: "." "!" "?", a quote or bracket after them; token ids that end the
    copy: the turn's end and any with a line break, as the copy is its first line). The copy may end only after
    a sentence's end (`greedy`): one the model would stop unfinished, most often right after a title that ends
    in a bracket ("… My Life as a Dog (Mitt liv som hund)"), gets the model's next likeliest token instead."""
    text = token_texts(tok)
    ends = [i for i, t in enumerate(text) if _FINISHED.search(t)]
    stops = sorted({tok.eos_token_id, *(i for i, t in enumerate(text) if "\n" in t)})
    return torch.tensor(ends, dtype=torch.long), torch.tensor(stops, dtype=torch.long)


def forced(seq: list[int], titles: list[list[int]], least: int = 2) -> int | None:
    """The next token of a title the copy is in the middle of: where its last tokens (at least `least`) are the
    start of one of its facts' titles, that title's next token, so a title is copied whole. A 135 M model
    copies a title it never saw loosely ("Some Like It For You" for *Some Like It Hot*, "My Life as a Dog" for
    *My Life as a Dog (Mitt liv som hund)*), and a broken title is an invented one. Nothing is forced where a
    title ends (the copy goes on as the model likes: "The Godfather" may be the item and start a watched
    title) or where the titles under way disagree on the next token, except that the movie's own title wins
    while the copy has not written it yet: every composition names the movie first, and the tuned model once
    turned *Monty Python and the Holy Grail* into the watched *Monty Python's Life of Brian*. `titles`: as
    `title_ids` lists them, the movie's two spellings first. Until the movie's title is written, only it is
    copied (as `core.copy_claims` lets only it open): "the 1" is not forced on into a watched *101 Dalmatians*.
    A match that starts inside a title already written whole is none (the second "Niagara" of *Niagara,
    Niagara*)."""
    if not any(holds(seq, t) for t in titles[:2]):
        titles = titles[:2]
    best, nxt, mine = 0, set(), set()
    for i, t in enumerate(titles):
        for n in range(min(len(t), len(seq)), least - 1, -1):  # the longest match of this title first
            if seq[len(seq) - n :] == t[:n] and not within(seq, len(seq) - n, titles):
                if n == len(t):
                    return None
                if n > best:
                    best, nxt, mine = n, {t[n]}, set()
                elif n == best:
                    nxt.add(t[n])
                if n == best and i < 2:
                    mine.add(t[n])
                break
    if len(nxt) == 1:
        return next(iter(nxt))
    if len(mine) == 1 and not any(holds(seq[: len(seq) - best], t) for t in titles[:2]):
        return next(iter(mine))
    return None


class FinishedCopy:
    """The end-of-turn rule of `greedy` (the turn ends only after a sentence's end) as a Hugging Face logits
    processor, for the reference decoding."""

    def __init__(self, ends: tuple[torch.Tensor, torch.Tensor], prompt_length: int) -> None:
        (self.ends, self.stops), self.start = ends, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        open_ = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
        if input_ids.shape[1] > self.start:
            open_ = ~torch.isin(input_ids[:, -1], self.ends.to(input_ids.device))
        stops = self.stops.to(scores.device)
        scores[:, stops] = torch.where(open_[:, None], float("-inf"), scores[:, stops])
        return scores


class TitleCopy:
    """`forced` as a Hugging Face logits processor (one list of title ids per row), so the reference decoding
    (`generate` on the whole prompts) copies titles as the served decoder does."""

    def __init__(self, titles: list[list[list[int]]], prompt_length: int) -> None:
        self.titles, self.start = titles, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for r, row in enumerate(input_ids[:, self.start :].tolist()):
            f = forced(row, self.titles[r])
            if f is not None:
                keep = scores[r, f].clone()
                scores[r] = float("-inf")
                scores[r, f] = keep
        return scores


class VocabularyLimit:
    """The rows' own tokens (`core.copy_vocabulary`) as a Hugging Face logits processor: every other token -inf,
    for the reference decoding."""

    def __init__(self, rows: list[frozenset[int]]) -> None:
        self.rows = [torch.tensor(sorted(r), dtype=torch.long) for r in rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, float("-inf"))
        for r, ids in enumerate(self.rows):
            out[r, ids] = scores[r, ids.to(scores.device)]
        return out


def propose(cands: list[list[int]], seq: list[int], k: int) -> list[int]:
    """Up to k next tokens: from a candidate that begins with everything generated so far, else from where the
    last 3 (then 2) generated tokens occur in a candidate; nothing when neither matches."""
    for c in cands:
        if len(c) > len(seq) and c[: len(seq)] == seq:
            return c[len(seq) : len(seq) + k]
    for n in (3, 2):
        if len(seq) >= n:
            tail = seq[-n:]
            for c in cands:
                for i in range(len(c) - n):
                    if c[i : i + n] == tail:
                        return c[i + n : i + n + k]
    return []


def _uniform(key: int, position: int) -> float:
    return random.Random(key * 4099 + position).random()


def pick(logits: torch.Tensor, keys: list[int] | None, starts: list[int], min_p: float) -> list[list[int]]:
    """Next tokens for (rows, positions, vocabulary) logits: the argmax without `keys`; else min-p sampling
    (Nguyen et al., 2024): among the tokens at least `min_p` × as likely as the likeliest, drawn in proportion
    to their probability by a uniform fixed by (row's key, position in its copy) — `starts[row]` is the copy
    position of the first column. Where the model is sure (a title, a year) only its argmax is left; where
    its training targets branched (which opening, which reason) each branch keeps its share, so copy varies
    from movie to movie instead of every copy taking the likeliest branch. One uniform per position: drafts
    and batching change how many positions a pass verifies, never the tokens."""
    if keys is None:
        return logits.argmax(-1).tolist()
    top = logits.float().topk(min(8, logits.shape[-1]), dim=-1)
    rel = (top.values - top.values[..., :1]).exp()  # p_i / p_max: the partition function cancels
    rel = torch.where(rel >= min_p, rel, torch.zeros_like(rel))
    cum = rel.cumsum(-1) / rel.sum(-1, keepdim=True)
    u = torch.tensor([[_uniform(k, s + j) for j in range(logits.shape[1])] for k, s in zip(keys, starts,
                                                                                          strict=True)])
    idx = (cum < u[..., None].to(cum.device)).sum(-1).clamp(max=top.indices.shape[-1] - 1)
    return top.indices.gather(-1, idx[..., None]).squeeze(-1).tolist()


@functools.lru_cache(maxsize=4)  # a few: each hot-swapped model version loads its own tokenizer
def system_length(tok) -> int:
    """Tokens every prompt starts with (the chat template's system turn and the user turn's opening): the
    common prefix of two prompts whose viewers share nothing. Once per tokenizer, not on every miss."""
    a = prompt_ids(tok, CopyFacts(ItemFacts(1, "A", -1, ()), Taste(("Drama",), ("B",))))[0]
    b = prompt_ids(tok, CopyFacts(ItemFacts(2, "C", -1, ()), Taste((), ())))[0]
    return shared_length([a, b])


def new_cache(model) -> Any:
    """An empty KV cache for `model`: its own (`core.lean_llama`), else transformers' `DynamicCache`."""
    if hasattr(model, "new_cache"):
        return model.new_cache()
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _system_cache(model, shared: list[int], system: int) -> tuple[Any, int]:
    """(KV cache, tokens it holds): a copy of the model's cache of the first `system` tokens (run once, on
    their own, and kept on the model: a model's decoding runs on one thread), so a viewer's prefix runs only
    its own lines. Always the same split, so a copy never depends on which viewer came first."""
    if system < 1 or system >= len(shared):
        return new_cache(model), 0
    key = tuple(shared[:system])
    stored = getattr(model, "_copy_prefix", None)
    if stored is None or stored[0] != key:
        kv = new_cache(model)
        model(input_ids=torch.tensor([list(key)], device=model.device), past_key_values=kv, use_cache=True,
              logits_to_keep=_last(system, model.device))
        stored = model._copy_prefix = (key, kv)
    return copy.deepcopy(stored[1]), system


def _choice(picked: list[int], seq: list[int], draft: list[int], j: int, titles: list[list[int]] | None) -> int:
    """The token at draft position j: the decoder's pick, unless a title under way forces its next token."""
    f = forced([*seq, *draft[:j]], titles) if titles else None
    return picked[j] if f is None else f


def _last(n: int, dev: torch.device) -> torch.Tensor:
    """Logits of the last position only, asked for by index: an integer `logits_to_keep` slices the hidden
    states into a strided view, and for a frozen model torch's matmul then expands the vocabulary projection
    per row (a 0.5 s copy for 10 rows of SmolLM2 here); an index gives a compact tensor and one matmul."""
    return torch.tensor([n - 1], device=dev)


def plain_head(model) -> bool:
    """Whether the model's logits are its decoder's last hidden state times its output embedding (no bias, scale or
    soft cap), so that scoring some tokens (`Head`) gives exactly those tokens' logits. Checked once per model on a
    few tokens, not assumed from its architecture."""
    known = getattr(model, "_copy_plain_head", None)
    if known is None:
        out_emb, known = model.get_output_embeddings(), False
        if out_emb is not None and getattr(out_emb, "bias", None) is None and hasattr(out_emb, "weight"):
            ids = torch.arange(1, 9, device=model.device)[None]
            full = model(input_ids=ids).logits[0, -1].float()
            mine = torch.nn.functional.linear(model.get_decoder()(input_ids=ids).last_hidden_state[0, -1],
                                              out_emb.weight).float()
            known = mine.shape == full.shape and bool((mine - full).abs().max() <= 1e-2 * full.abs().max())
        model._copy_plain_head = known
    return known


def _rows(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """t[r, at[r, j]] for (rows, positions, features) t and a (rows, positions) index."""
    return t.gather(1, at[..., None].expand(-1, -1, t.shape[-1]))


class Head:
    """The decoder's logits: the model's own, or with `vocab` (sorted token ids) only those tokens' columns (the
    decoder's hidden states times their rows of the output embedding), the last axis then indexing `vocab`;
    `own` (rows, columns): the columns each row may take (`limit`)."""

    def __init__(self, model, vocab: torch.Tensor | None, own: torch.Tensor | None = None) -> None:
        self.model, self.vocab = model, vocab
        if vocab is not None:
            self.vocab, self.own = vocab.to(model.device), own.to(model.device)
            self.decoder = model.get_decoder()
            self.weight = model.get_output_embeddings().weight.index_select(0, self.vocab)
            self.ids = vocab.tolist()

    def run(self, **kw) -> None:
        """A pass for its KV cache alone: without `vocab`, the model's last position only (`_last`)."""
        if self.vocab is None:
            self.model(**kw, logits_to_keep=_last(kw["input_ids"].shape[1], kw["input_ids"].device))
        else:
            self.decoder(**kw)

    def __call__(self, keep: int | torch.Tensor, **kw) -> torch.Tensor:
        """(rows, positions, columns) logits of the last `keep` positions, or with a (rows, positions) index tensor
        those each row names."""
        if self.vocab is None:
            if isinstance(keep, int):
                return self.model(**kw, logits_to_keep=keep).logits
            low = int(keep.min())  # the model's logits from the first column asked for, then each row's own
            logits = self.model(**kw, logits_to_keep=torch.arange(low, int(keep.max()) + 1, device=keep.device)).logits
            return _rows(logits, keep - low)
        hidden = self.decoder(**kw).last_hidden_state
        hidden = hidden[:, hidden.shape[1] - keep :] if isinstance(keep, int) else _rows(hidden, keep)
        return torch.nn.functional.linear(hidden, self.weight)

    def columns(self, ids: torch.Tensor) -> torch.Tensor:
        """Where these token ids are on the last axis (ids outside `vocab` have no column)."""
        ids = ids.to(self.model.device)
        if self.vocab is None:
            return ids
        return torch.searchsorted(self.vocab, ids[torch.isin(ids, self.vocab)])

    def limit(self, logits: torch.Tensor, rows: list[int]) -> None:
        """(batch rows, positions, columns) logits in place: each row's columns outside its own set to -inf.
        `rows`: the original row of each batch row."""
        if self.vocab is not None:
            logits.masked_fill_(~self.own[rows][:, None, :], float("-inf"))

    def tokens(self, picks: list[list[int]]) -> list[list[int]]:
        """Columns picked → token ids."""
        return picks if self.vocab is None else [[self.ids[j] for j in row] for row in picks]


COMPACT_AT = 32  # dead cache slots (rejected drafts, padding) that start a compaction, at the least


def compact(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drop the cache slots no row attends to any more, once they are at least half as many as the live ones
    (and `COMPACT_AT`): each pass keeps the slots of its whole draft, and a model that rejects most drafts (a
    weakly tuned adapter) grew a k=10 miss's cache to ~480 slots (~250 compacted), every pass then copying and
    attending to all of them. Per row its live slots move to the end, in order (a row with fewer keeps some
    masked ones first); returns the mask of the compacted cache. Caches without `gather_positions` (transformers'
    `DynamicCache`) are left as they are: the tokens are the same either way."""
    if not hasattr(cache, "gather_positions"):
        return mask
    width = int(mask.sum(1).max())
    if mask.shape[1] - width < max(COMPACT_AT, width // 2):
        return mask
    index = torch.sort(mask, dim=1, stable=True).indices[:, -width:]  # masked slots first, then live ones, in order
    cache.gather_positions(index)
    return mask.gather(1, index)


def greedy(model, shared: list[int], suffixes: list[list[int]], max_new_tokens: int, eos_id: int,
           pad_id: int | None, cands: list[list[list[int]]] | None = None, lookahead: int = 12,
           keys: list[int] | None = None, min_p: float = 0.0, system: int = 0,
           titles: list[list[list[int]]] | None = None,
           ends: tuple[torch.Tensor, torch.Tensor] | None = None,
           claims: tuple[ClaimTokens, list[FactTokens]] | None = None,
           vocab: list[frozenset[int]] | None = None) -> list[list[int]]:
    """Decoding of len(suffixes) rows that all start with `shared`: greedy, or with `keys` (one per row)
    seeded min-p sampling (`pick`). `system`: how many of `shared`'s tokens every prompt starts with; their KV
    cache is computed once per model (`_system_cache`). `titles` (per row, `title_ids`): a title under way is
    copied whole (`forced`), whatever the model would pick instead. `ends` (`sentence_ends`): the copy may end
    only after a sentence's end. `claims` (`core.copy_claims`; per row its facts): no name, number or doubled
    word the facts do not hold. `vocab` (per row, `core.copy_vocabulary`): the only tokens a row may take; only
    the rows' tokens together are scored.

    The shared prefix runs once (batch 1) and its KV cache is repeated per row; suffixes are left-padded *after*
    the prefix (masked out, positions continuing the prefix's); a row leaves the batch when it ends. With
    `cands` (per row, candidate continuations as token ids), each forward pass feeds every row its pending
    token plus a draft and keeps the longest draft prefix that matches the model's own choice, plus the model's
    next token (speculative decoding with exact verification); cache slots of rejected draft tokens are masked
    out for good (and dropped, `compact`). The suffixes' pass already verifies each row's first candidate, as much
    of it as the model has been keeping (`first_draft`) when only the rows' tokens are scored (`vocab`; else
    `lookahead` of it, as a full head's logits are rows × draft × its vocabulary): a pass streams all the weights
    whatever its rows (~22 ms for SmolLM2 on 2 cores), and a tuned model writes its first candidate through, so
    most rows end in that one pass. Later passes draft up to `lookahead` tokens. A decoder that can skip a
    batch's padding (`skips_padding`, `core.lean_llama`) computes only the rows' own positions. Without
    candidates it is plain greedy decoding, one token per pass. Either way the tokens are those of `generate` on
    the concatenated prompts (exactly in fp32; in bf16 up to near-ties, the arithmetic differs). Full-attention
    decoders only: rejected draft slots stay in the cache until compacted, masked, which a sliding-window or
    recurrent layer would not ignore."""

    dev = model.device
    n, p = len(suffixes), len(shared)
    cache, done = _system_cache(model, shared, system)
    head = Head(model, *columns(vocab) if vocab is not None else (None, None))
    head.run(input_ids=torch.tensor([shared[done:]], device=dev), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(n)
    skips = getattr(model, "skips_padding", False)
    pad = pad_id if pad_id is not None else eos_id
    out: list[list[int]] = [[] for _ in range(n)]  # each row's copy; its last token is not yet in the cache
    first = first_draft(model, max_new_tokens - 1) if vocab is not None else lookahead  # a full head: 49K a token
    guesses = [propose(cands[r], [], first) if cands else [] for r in range(n)]
    lengths = [len(s) + len(g) for s, g in zip(suffixes, guesses, strict=True)]
    width, d = max(lengths), max(len(g) for g in guesses)  # each row's suffix then draft, ending at the right
    ids = torch.full((n, width), pad, dtype=torch.long, device=dev)
    mask = torch.zeros((n, p + width), dtype=torch.long, device=dev)
    mask[:, :p] = 1
    for r, (s, g) in enumerate(zip(suffixes, guesses, strict=True)):
        ids[r, width - lengths[r] :] = torch.tensor([*s, *g], device=dev)
        mask[r, p + width - lengths[r] :] = 1
    pos = p + (mask[:, p:].cumsum(-1) - 1).clamp(min=0)  # a row's draft continues its suffix's positions
    # Column j of row r's logits follows its prompt's last token then its draft's first j tokens (later columns
    # repeat the last one: a shorter draft's row has nothing more to verify).
    last = torch.tensor([width - 1 - len(g) for g in guesses], device=dev)
    cols = (last[:, None] + torch.arange(d + 1, device=dev)).clamp(max=width - 1)
    live = {"live": mask[:, p:].bool()} if skips else {}
    logits = head(cols, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                  **live)
    alive = list(range(n))  # original row of each batch row
    accepted = _verify(logits, ids.gather(1, cols), guesses, out, alive, head, max_new_tokens, eos_id, keys,
                       min_p, titles, ends, claims, first=True)
    if cands and vocab is not None:
        note_first(model, accepted)
    for b, (a, g) in enumerate(zip(accepted, guesses, strict=True)):
        mask[b, p + width - len(g) + a :] = 0  # slots of rejected draft tokens: never attended again
    nxt = torch.tensor([p + len(s) + a for s, a in zip(suffixes, accepted, strict=True)], device=dev)
    while True:
        keep = [b for b, r in enumerate(alive) if out[r][-1] != eos_id and len(out[r]) < max_new_tokens]
        if not keep:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            mask, nxt = mask[sel], nxt[sel]
            alive = [alive[b] for b in keep]
        mask = compact(cache, mask)
        guesses = [propose(cands[r], out[r], min(lookahead, max_new_tokens - len(out[r]))) if cands else []
                   for r in alive]
        w = 1 + max(len(g) for g in guesses)
        step = torch.full((len(alive), w), pad, dtype=torch.long, device=dev)
        new_mask = torch.zeros((len(alive), w), dtype=torch.long, device=dev)
        for b, (r, g) in enumerate(zip(alive, guesses, strict=True)):
            step[b, : 1 + len(g)] = torch.tensor([out[r][-1], *g], device=dev)
            new_mask[b, : 1 + len(g)] = 1
        mask = torch.cat([mask, new_mask], dim=1)
        live = {"live": new_mask.bool()} if skips else {}
        logits = head(w, input_ids=step, attention_mask=mask, position_ids=nxt[:, None] + torch.arange(w, device=dev),
                      past_key_values=cache, use_cache=True, **live)
        accepted = _verify(logits, step, guesses, out, alive, head, max_new_tokens, eos_id, keys, min_p, titles,
                           ends, claims)
        for b, a in enumerate(accepted):
            mask[b, mask.shape[1] - w + a + 1 :] = 0  # slots of rejected draft tokens: never attended again
            nxt[b] += a + 1
    return [o[:-1] if o and o[-1] == eos_id else o for o in out]


def first_draft(model, most: int) -> int:
    """How much of each row's first candidate the prompts' pass verifies (at most `most`): twice what this model
    has been keeping of them (`note_first`) and a few more, all of it to begin with. A tuned adapter writes its
    drafts through; an undertrained one leaves them within a few tokens, and each draft token it rejects is a
    position computed for nothing. A model that keeps all it is offered is offered more at its next miss."""
    kept = getattr(model, "_copy_first_kept", None)
    return most if kept is None else min(most, round(2 * kept) + 4)


def note_first(model, accepted: list[int]) -> None:
    """The running mean (over misses) of how many draft tokens the prompts' pass kept a row, kept on the model:
    one model decodes on one thread, and a new model version starts afresh."""
    mean = sum(accepted) / max(1, len(accepted))
    kept = getattr(model, "_copy_first_kept", None)
    model._copy_first_kept = mean if kept is None else 0.7 * kept + 0.3 * mean


def _verify(logits: torch.Tensor, step: torch.Tensor, guesses: list[list[int]], out: list[list[int]],
            alive: list[int], head: Head, max_new_tokens: int, eos_id: int, keys: list[int] | None, min_p: float,
            titles: list[list[list[int]]] | None, ends: tuple[torch.Tensor, torch.Tensor] | None,
            claims: tuple[ClaimTokens, list[FactTokens]] | None, first: bool = False) -> list[int]:
    """One pass's choices: `logits[:, j]` (batch rows, positions, columns) follow `step[:, j]`, the row's last
    token then its draft (`guesses`, per batch row). Each row's copy (`out[alive[b]]`) gains the longest draft
    prefix the decoder agrees with and its own next token; returns how many draft tokens each row kept.
    `first`: the pass that ends the prompt, whose first choice may not end the copy (an empty copy is not a
    finished one)."""
    if ends is not None:  # the copy ends only after a sentence's end
        enders, stops = ends[0].to(step.device), head.columns(ends[1])
        open_ = ~torch.isin(step, enders)
        if first:
            open_[:, 0] = True
        logits[..., stops] = logits[..., stops].masked_fill(open_[..., None], float("-inf"))
    if claims is not None:  # logits[:, j] follow the copy so far plus the draft's first j tokens
        ban(logits, claims[0], [claims[1][r] for r in alive],
            [[out[r] + g[:j] for j in range(len(g) + 1)] for r, g in zip(alive, guesses, strict=True)], head.vocab)
    head.limit(logits, alive)
    picks = head.tokens(pick(logits, [keys[r] for r in alive] if keys else None, [len(out[r]) for r in alive],
                             min_p))
    accepted = []
    for b, (r, g) in enumerate(zip(alive, guesses, strict=True)):
        rt = titles[r] if titles else None
        a = 0
        while a < len(g) and g[a] == _choice(picks[b], out[r], g, a, rt) and g[a] != eos_id:
            a += 1
        out[r] += [*g[:a], _choice(picks[b], out[r], g, a, rt)][: max_new_tokens - len(out[r])]
        accepted.append(a)
    return accepted
