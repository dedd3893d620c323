"""The grounding check's rules on names, numbers and doubled words, kept while the copy LM decodes.

The guard (`core.grounding.claims`) refuses a capitalised word mid-sentence that is no title of the facts, a
number that is not the year, a word said twice in a row. A 135 M model writes each of these now and then where
its training targets branch ("If You watched Speed was your kind of film", "the war war drama", "Much Ado
About Nothing Nothing", "the 101 Dalmatians": 13 of the 20 failures in 1,000 held-out copies, session 34), and a
copy the guard refuses is served as the template. So the decoder never picks such a token: where one would
open a name or a number, only tokens that go on with one of the facts' titles or the year remain. A token a
title forces (`core.copy_decoding.forced`) still wins, and what the facts hold is never refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from core.copy_guard import CopyFacts
from core.grounding import SENTENCE_START


@dataclass(frozen=True)
class ClaimTokens:
    """What each token of a vocabulary is, for the rules of `plan`."""

    table: torch.Tensor  # (len(_KINDS), V) bool: the tokens each kind of position refuses (`_KINDS`)
    capitals: frozenset[int]  # ids of the tokens that open a capitalised word or a number (" You", "Play", " 1")
    digits: frozenset[int]  # ids of the tokens that open a number
    texts: tuple[str, ...]
    spaced: tuple[bool, ...]  # token starts with a space (a word's first token)
    lower: tuple[str, ...]  # token text stripped, lower case
    words: dict[str, tuple[int, ...]]  # lower-cased text → the tokens that open a word with it (" war", " War")
    biases: dict[tuple[torch.dtype, torch.device, int], torch.Tensor] = field(default_factory=dict)

    def bias(self, dtype: torch.dtype, device: torch.device, width: int) -> torch.Tensor:
        """`table` as 0 / -inf logits to add, `width` wide (a model's vocabulary may be padded past the
        tokenizer's: those ids are never refused), made once per dtype, device and width."""
        if (dtype, device, width) not in self.biases:
            bias = torch.zeros((self.table.shape[0], width), dtype=dtype)
            n = min(width, self.table.shape[1])
            bias[:, :n].masked_fill_(self.table[:, :n], float("-inf"))
            self.biases[dtype, device, width] = bias.to(device)
        return self.biases[dtype, device, width]


# Kinds of position: where a sentence starts (a capital may open a word) / after "." alone (only a spaced capital
# starts one) / mid-sentence, each plain, after "a" or after "an"; last, inside a name (everything is refused
# but the name's next token).
_KINDS = [(where, article) for where in ("start", "dot", "mid") for article in ("", "a", "an")] + [("inside", "")]


@functools.lru_cache(maxsize=4)  # a few: each hot-swapped model version loads its own tokenizer
def token_texts(tok) -> tuple[str, ...]:
    """Every token's text, decoded once per tokenizer (the claim rules and `sentence_ends` both read them)."""
    return tuple(tok.decode([i]) for i in range(len(tok)))


@functools.lru_cache(maxsize=4)
def claim_tokens(tok) -> ClaimTokens:
    texts = token_texts(tok)
    first = [t.lstrip(" ")[:1] for t in texts]
    spaced = tuple(t[:1] == " " for t in texts)
    capital = torch.tensor([f.isupper() or f.isdigit() for f in first])
    digit = torch.tensor([f.isdigit() for f in first])
    word = [t[1:].lower() if s and t[1:2].isalpha() else "" for t, s in zip(texts, spaced, strict=True)]
    after = {"": torch.zeros_like(capital),  # the article's rule as the guard reads it (`core.grounding`)
             "a": torch.tensor([w[:1] in ("a", "e", "i", "o") and not w.startswith(("one", "once", "eu"))
                                for w in word]),
             "an": torch.tensor([w[:1] not in ("", "a", "e", "i", "o", "u", "h") for w in word])}
    where = {"start": digit, "dot": capital & ~torch.tensor(spaced) | digit, "mid": capital,
             "inside": torch.ones_like(capital)}
    table = torch.stack([where[w] | after[a] for w, a in _KINDS])
    words: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if t[:1] == " " and t[1:].isalpha():
            words.setdefault(t[1:].lower(), []).append(i)
    return ClaimTokens(table, frozenset(torch.nonzero(capital).flatten().tolist()),
                       frozenset(torch.nonzero(digit).flatten().tolist()), tuple(texts), spaced,
                       tuple(t.strip().lower() for t in texts), {w: tuple(ids) for w, ids in words.items()})


def title_ids(tok, facts: CopyFacts) -> list[list[int]]:
    """The facts' titles (the movie's, the watched ones) as copy writes them, token ids: after a space, and
    opening the copy. The movie's two come first, empty for a movie without a title (so `[:2]` is always the
    movie's)."""
    movie = [tok(v, add_special_tokens=False)["input_ids"] for v in (" " + facts.item.title, facts.item.title)]
    return [*(movie if facts.item.title else [[], []]),
            *(tok(v, add_special_tokens=False)["input_ids"] for t in facts.taste.liked if t for v in (" " + t, t))]


def within(seq: list[int], start: int, runs: list[list[int]]) -> bool:
    """Whether position `start` of `seq` lies inside a whole occurrence of one of `runs` already written: a
    title's second "Niagara" (*Niagara, Niagara*) does not open the title again."""
    for run in runs:
        for a in range(max(0, start - len(run) + 1), start):
            if a + len(run) <= len(seq) and seq[a : a + len(run)] == run:
                return True
    return False


class FactTokens:
    """One copy's facts as token runs (its titles as `title_ids`, its year), indexed so that `allowed` finds
    which runs the copy is in the middle of without scanning them all."""

    def __init__(self, tok, facts: CopyFacts) -> None:
        self.titles = titles = title_ids(tok, facts)  # as `forced` takes them
        self.movie = titles[:2] if facts.item.title else []
        self.runs = [*self.movie, *titles[2:]]
        if facts.item.year > 0:
            self.runs.append(tok(str(facts.item.year), add_special_tokens=False)["input_ids"])
        self.first = [*self.movie, *self.runs[len(self.runs) - (facts.item.year > 0):]]  # the movie's runs, year
        self.at: dict[int, list[tuple[int, int]]] = {}  # token → (run, k): the token is run[k - 1]
        for r, run in enumerate(self.runs):
            for k in range(1, len(run) + 1):
                self.at.setdefault(run[k - 1], []).append((r, k))

    def allowed(self, ct: ClaimTokens, seq: list[int]) -> tuple[set[int], bool]:
        """(tokens that open one of the runs or go on with one the copy ends in the middle of, whether the copy
        is inside a name it opened mid-sentence or a number). Inside such a name only the name goes on: a capital
        mid-sentence is allowed because it opens a title, so it must be that title ("the This Is Spinal Tap" after
        "The" of *The Princess Bride*, "D" of *D3: The Mighty Ducks* then "ucks", "Victor" then "ia"), unless a
        whole title ends there (*The Godfather* may be the movie, not *The Godfather: Part II*); a number must
        be the year whole ("(19)" is no year). Until the movie's title is written, only it or the year opens
        (every composition names the movie first; the tuned model opened *The Princess Bride*, the watched title,
        where *This Is Spinal Tap* was the movie). After a digit, a number can only go on (the year's digits
        after "1" would write "11996"). A run counts as under way only where it could have opened."""
        starts, nexts = set(), set()
        for run in self.runs if self._named(seq) else self.first:
            if not (seq and seq[-1] in ct.digits and run[0] in ct.digits):
                starts.add(run[0])
        inside = ended = False
        for r, k in self.at.get(seq[-1], ()) if seq else ():
            run, at = self.runs[r], len(seq) - k
            if at < 0 or seq[at:] != run[:k] or not self._opens(ct, seq, at, run) or within(seq, at, self.runs):
                continue
            if k == len(run):
                ended = True
                continue
            nexts.add(run[k])
            if run[0] in ct.digits or (run[0] in ct.capitals and not opens_sentence(ct, seq[:at], run[0])):
                inside = True
        return (nexts, True) if inside and not ended else (starts | nexts, False)

    def _named(self, seq: list[int]) -> bool:
        return not self.movie or any(run[-1] in seq and holds(seq, run) for run in self.movie)

    def _opens(self, ct: ClaimTokens, seq: list[int], at: int, run: list[int]) -> bool:
        """Whether `run` could open at position `at` (as `allowed` lets runs open)."""
        if at > 0 and seq[at - 1] in ct.digits and run[0] in ct.digits:
            return False
        return any(run is f for f in self.first) or self._named(seq[:at])


def holds(seq: list[int], part: list[int]) -> bool:
    """Whether `part` occurs in `seq`."""
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def opens_sentence(ct: ClaimTokens, seq: list[int], token: int) -> bool:
    """Whether `token` after `seq` starts a sentence, as the guard reads one (`SENTENCE_START`: after ". ", not
    after "." alone)."""
    tail = "".join(ct.texts[t] for t in seq[-2:])
    return bool(SENTENCE_START.search(tail) or (ct.spaced[token] and SENTENCE_START.search(tail + " ")))


def plan(ct: ClaimTokens, facts: FactTokens, seq: list[int]) -> tuple[int, list[int], list[int]]:
    """What the copy may not take after `seq` (its tokens so far), as (a row of `ct.table`, more ids refused,
    ids allowed whatever the rest says). Mid-sentence, a token that opens a capitalised word; anywhere, one that
    opens a number; a word just written, again ("war war"; "Document" after "documentary"); after "a" a vowel,
    after "an" a consonant; unless the token opens or goes on with a title or the year of the facts. Inside a
    name opened mid-sentence, anything but the name."""
    ok, inside = facts.allowed(ct, seq)
    if inside:
        return len(_KINDS) - 1, [], list(ok)
    tail = "".join(ct.texts[t] for t in seq[-2:])
    where = "start" if SENTENCE_START.search(tail) else "dot" if SENTENCE_START.search(tail + " ") else "mid"
    word = _last_word(ct, seq) if seq else ""
    article = word if word in ("a", "an") else ""
    again = [i for n in [*range(4, len(word)), len(word)] for i in ct.words.get(word[:n], ())] if word else []
    return _KINDS.index((where, article)), again, list(ok)


def banned(ct: ClaimTokens, facts: FactTokens, seq: list[int]) -> torch.Tensor:
    """(V,) bool: the tokens the copy may not take after `seq` (`plan`)."""
    kind, more, ok = plan(ct, facts, seq)
    out = ct.table[kind].clone()
    out[more] = True
    out[ok] = False
    return out


def _last_word(ct: ClaimTokens, seq: list[int]) -> str:
    """The word `seq` ends with, lower case ("" unless it is letters): its tokens back to one opening a word."""
    parts = []
    for t in reversed(seq[-6:]):
        parts.append(ct.lower[t])
        if ct.spaced[t]:
            break
    word = "".join(reversed(parts))
    return word if word.isalpha() else ""


def ban(logits: torch.Tensor, ct: ClaimTokens, facts: list[FactTokens], seqs: list[list[list[int]]],
        vocab: torch.Tensor | None = None) -> None:
    """Masks (rows, positions, V) logits in place: position j of row b follows the tokens `seqs[b][j]`. One
    gather, one add and two scatters for the whole pass (a (V,) mask per position cost ~18 ms a pass of 10 × 13,
    this ~7 ms). `vocab` (sorted token ids): the logits' last axis holds only these tokens."""
    at = None if vocab is None else {t: j for j, t in enumerate(vocab.tolist())}
    rows, width = logits.shape[0], logits.shape[1]
    kinds = [[0] * width for _ in range(rows)]
    more: tuple[list[int], list[int], list[int]] = ([], [], [])
    ok: tuple[list[int], list[int], list[int]] = ([], [], [])
    for b, row in enumerate(seqs):
        for j, seq in enumerate(row[:width]):
            kinds[b][j], extra, allowed = plan(ct, facts[b], seq)
            if at is not None:
                extra, allowed = [at[i] for i in extra if i in at], [at[i] for i in allowed if i in at]
            for into, ids in ((more, extra), (ok, allowed)):
                into[0].extend([b] * len(ids))
                into[1].extend([j] * len(ids))
                into[2].extend(ids)
    dev = logits.device
    more_at = tuple(torch.tensor(x, dtype=torch.long, device=dev) for x in more)
    ok_at = tuple(torch.tensor(x, dtype=torch.long, device=dev) for x in ok)
    keep = logits[ok_at]
    if vocab is None:
        bias = ct.bias(logits.dtype, dev, logits.shape[-1])
    else:
        bias = ct.bias(logits.dtype, dev, ct.table.shape[1]).index_select(1, vocab.to(dev))
    logits.add_(bias[torch.tensor(kinds, device=dev)])  # not masked_fill_: 3× slower here
    logits[more_at] = float("-inf")
    logits[ok_at] = keep


class GroundedClaims:
    """`banned` as a Hugging Face logits processor, for the reference decoding (`generate` on whole prompts)."""

    def __init__(self, ct: ClaimTokens, facts: list[FactTokens], prompt_length: int) -> None:
        self.ct, self.facts, self.start = ct, facts, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        width = scores.shape[-1]
        for r, row in enumerate(input_ids[:, self.start :].tolist()):
            mask = banned(self.ct, self.facts[r], row)[:width]
            scores[r, : len(mask)] = scores[r, : len(mask)].masked_fill(mask.to(scores.device), float("-inf"))
        return scores
