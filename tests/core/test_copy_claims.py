"""The decoder's claim rules (`core.copy_claims`) on SmolLM2's tokenizer: each rule refuses the token the tuned
model really wrote (session 34's failures) and keeps every token a grounded copy needs; and a random model
decoding under them writes no name, number or doubled word the guard would refuse."""

from __future__ import annotations

import pytest

from core.copy_claims import FactTokens, banned, claim_tokens, title_ids
from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste

SPEED = CopyFacts(ItemFacts.from_row(1, "Reservoir Dogs (1992)", 1992, ["Crime", "Thriller"]),
                  Taste(("Crime",), ("Speed", "Much Ado About Nothing")))


@pytest.fixture(scope="module")
def tok():
    from core.copy_lm import TINY, load_tokenizer
    from core.settings import load_settings

    return load_tokenizer(TINY, load_settings().model_cache)


def allowed(tok, facts: CopyFacts, before: str, word: str) -> bool:
    """Whether the copy may go on from `before` with the first token of `word`."""
    seq = tok(before, add_special_tokens=False)["input_ids"] if before else []
    nxt = tok(word, add_special_tokens=False)["input_ids"][0]
    return not bool(banned(claim_tokens(tok), FactTokens(tok, facts), seq)[nxt])


def test_a_capital_mid_sentence_must_open_a_title_of_the_facts(tok) -> None:
    assert not allowed(tok, SPEED, "Queue up Reservoir Dogs. If", " You")  # "If You watched Speed was…"
    assert allowed(tok, SPEED, "Queue up Reservoir Dogs. If", " Speed")  # a watched title
    assert allowed(tok, SPEED, "Queue up", " Reservoir") and allowed(tok, SPEED, "Queue up Reservoir", " Dogs")
    assert not allowed(tok, SPEED, "Because you watched Speed. Press", " Play")
    assert allowed(tok, SPEED, "Because you watched Speed.", " Press")  # a sentence's start
    assert allowed(tok, SPEED, "", "Queue") and allowed(tok, SPEED, "Next up for you:", " The")
    assert not allowed(tok, SPEED, "Because you watched Speed.", "Press")  # "Speed.Press": no sentence starts


def test_a_name_opened_mid_sentence_must_be_the_title_it_opens(tok) -> None:
    tap = CopyFacts(ItemFacts.from_row(7, "This Is Spinal Tap (1984)", 1984, ["Comedy"]),
                    Taste((), ("The Princess Bride",)))
    said = "Here is This Is Spinal Tap. A good next step after"
    assert not allowed(tok, tap, said + " The", " This")  # "The" opened The Princess Bride
    assert allowed(tok, tap, said + " The", " Princess") and allowed(tok, tap, "Here is", " This")
    assert not allowed(tok, tap, "Here is", " The")  # the movie is named first (it wrote The Princess Bride)
    ducks = CopyFacts(ItemFacts.from_row(8, "D3: The Mighty Ducks (1996)", 1996, ["Comedy"]), Taste())
    assert not allowed(tok, ducks, "Settle in with the D", "ucks") and allowed(tok, ducks, "Settle in with D", "3")
    victor = CopyFacts(ItemFacts.from_row(9, "Get Shorty (1995)", 1995, ["Comedy"]), Taste((), ("Victor/Victoria",)))
    said = "Try Get Shorty. You watched Victor"
    assert not allowed(tok, victor, said, "ia") and allowed(tok, victor, said, "/")
    assert not allowed(tok, SPEED, "Here is the 19", " crime")  # a year under way is finished
    godfather = CopyFacts(ItemFacts.from_row(10, "Godfather, The (1972)", 1972, ["Crime"]),
                          Taste((), ("The Godfather: Part II",)))
    assert allowed(tok, godfather, "Try The Godfather", ".")  # a whole title ends there: the copy goes on
    assert allowed(tok, SPEED, "Speed", " is")  # a title opening a sentence is not held to it


def test_a_run_is_under_way_only_where_it_could_open(tok) -> None:
    """Found in review: the second "Niagara" of *Niagara, Niagara* is not the title again; a watched title's or
    the year's first token after a digit, or before the movie is named, opens nothing."""
    from core.copy_decoding import forced

    niagara = CopyFacts(ItemFacts.from_row(11, "Niagara, Niagara (1997)", 1997, ["Drama"]), Taste())
    assert allowed(tok, niagara, "Here is Niagara, Niagara,", " a")
    ids = tok("Here is Niagara, Niagara,", add_special_tokens=False)["input_ids"]
    assert forced(ids, title_ids(tok, niagara)) is None
    heat = CopyFacts(ItemFacts.from_row(12, "Heat (1995)", 1995, ["Action"]), Taste((), ("101 Dalmatians",)))
    assert not allowed(tok, heat, "Here is the 1", "0")  # 101 Dalmatians may not open before Heat is named
    assert allowed(tok, heat, "Here is Heat. Because you watched 1", "0")
    y1991 = CopyFacts(ItemFacts.from_row(13, "JFK (1991)", 1991, ["Drama"]), Taste())
    assert not allowed(tok, y1991, "JFK, a 1991", "9")  # "19919": the year does not open again after a digit
    y1915 = CopyFacts(ItemFacts.from_row(14, "Birth of a Nation, The (1915)", 1915, ["Drama"]), Taste())
    nation = "The Birth of a Nation, a 191"
    assert not allowed(tok, y1915, nation, "9") and allowed(tok, y1915, nation, "5")
    assert not allowed(tok, y1915, "The Birth of a Nation (19", ")")  # a number ends only as the year


def test_a_movie_without_a_title_leaves_the_watched_titles_to_the_copy(tok) -> None:
    from core.copy_decoding import forced

    untitled = CopyFacts(ItemFacts(15, "", -1, ("Comedy",)), Taste((), ("Fargo", "Some Like It Hot")))
    ids = tok("Because you watched Some Like It", add_special_tokens=False)["input_ids"]
    assert forced(ids, title_ids(tok, untitled)) == tok(" Some Like It Hot", add_special_tokens=False)["input_ids"][-1]
    assert allowed(tok, untitled, "Because you watched", " Some")


def test_a_vocabulary_wider_than_the_tokenizer_is_masked_on_the_tokenizer_ids_only(tok) -> None:
    import torch

    from core.copy_claims import ban

    n = len(tok)
    logits = torch.zeros(1, 1, n + 64)
    ban(logits, claim_tokens(tok), [FactTokens(tok, SPEED)], [[tok("Try the", add_special_tokens=False)["input_ids"]]])
    assert torch.isinf(logits[0, 0, :n]).any() and not torch.isinf(logits[0, 0, n:]).any()


def test_a_number_must_be_the_year(tok) -> None:
    assert allowed(tok, SPEED, "Here is the ", "1") and allowed(tok, SPEED, "Here is the 1", "9")
    assert not allowed(tok, SPEED, "Here is the 1", "0")  # "the 101 Dalmatians" (digits are one token each)
    assert not allowed(tok, SPEED, "Here is the 1992", "1")  # "19921": the year only goes on while it lasts
    assert not allowed(tok, SPEED, "", "2") and not allowed(tok, SPEED, "Try ", "2")  # 1992 opens with 1


def test_a_word_is_not_said_twice_in_a_row(tok) -> None:
    war = CopyFacts(ItemFacts.from_row(2, "Apocalypse Now (1979)", 1979, ["Drama", "War"]), Taste())
    assert not allowed(tok, war, "Tonight's pick: the war", " war")
    assert not allowed(tok, war, "Tonight's pick: the war", " War")
    assert allowed(tok, war, "Tonight's pick: the war", " drama")
    doc = CopyFacts(ItemFacts.from_row(3, "Wonderland (1997)", 1997, ["Documentary"]), Taste())
    assert not allowed(tok, doc, "Meet the documentary", " documentary")
    assert not allowed(tok, SPEED, "Picked because you watched Much Ado About Nothing", " Nothing")
    assert not allowed(tok, war, "Tonight's pick: an", " drama") and allowed(tok, war, "Tonight's pick: a", " drama")
    assert not allowed(tok, war, "Tonight's pick: a", " action") and allowed(tok, war, "Tonight's pick: an", " action")
    assert not allowed(tok, war, "Tonight's pick: an", " an")
    bye = CopyFacts(ItemFacts.from_row(4, "Bye Bye Love (1995)", 1995, ["Comedy"]), Taste())
    assert allowed(tok, bye, "Try Bye", " Bye")  # the facts' own title says it twice


def test_a_random_model_under_the_rules_writes_no_name_number_or_doubled_word(tok) -> None:
    """Fooled first: the same random model decoding freely writes what the guard refuses. Sampled (min-p, seeded
    by the facts), as greedy decoding of a random model repeats one token."""
    from core.copy_decoding import greedy, prompt_ids, sentence_ends
    from core.copy_lm import TINY, load_base
    from core.settings import load_settings

    model, _ = load_base(TINY, load_settings().model_cache)
    facts = [SPEED, CopyFacts(ItemFacts.from_row(5, "Heat (1995)", 1995, ["Action"]), Taste(("Drama",), ())),
             CopyFacts(ItemFacts.from_row(6, "Ed Wood (1994)", 1994, ["Comedy", "Drama"]), Taste((), ("Fargo",)))]
    guard = Guard(["Reservoir Dogs (1992)", "Heat (1995)", "Ed Wood (1994)", "Toy Story (1995)"],
                  ["Crime", "Thriller", "Action", "Comedy", "Drama"])
    kinds = ("name not in the facts", "number not in the facts", "wrong year")

    def refused(rules: bool) -> list[str]:
        out = []
        for f in facts:
            shared, item = prompt_ids(tok, f)
            claims = (claim_tokens(tok), [FactTokens(tok, f)]) if rules else None
            ids = greedy(model.eval(), shared, [item], 60, tok.eos_token_id, tok.pad_token_id, keys=[f.key()],
                         min_p=0.05, ends=sentence_ends(tok), claims=claims)[0]
            out += [v for v in guard.violations(tok.decode(ids, skip_special_tokens=True).strip(), f)
                    if v.startswith(kinds) or (v.startswith("repeats a word") and "×" not in v)]
        return out

    assert refused(rules=False)
    assert refused(rules=True) == []
