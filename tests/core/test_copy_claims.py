"""The decoder's claim rules (`core.copy_claims`) on SmolLM2's tokenizer: each rule refuses the token the tuned
model really wrote (session 34's failures) and keeps every token a grounded copy needs; and a random model
decoding under them writes no name, number or doubled word the guard would refuse."""

from __future__ import annotations

import pytest

from core.copy_claims import FactTokens, banned, claim_tokens
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
    assert not allowed(tok, victor, "You watched Victor", "ia") and allowed(tok, victor, "You watched Victor", "/")
    assert not allowed(tok, SPEED, "Here is the 19", " crime")  # a year under way is finished
    godfather = CopyFacts(ItemFacts.from_row(10, "Godfather, The (1972)", 1972, ["Crime"]),
                          Taste((), ("The Godfather: Part II",)))
    assert allowed(tok, godfather, "Try The Godfather", ".")  # a whole title ends there: the copy goes on
    assert allowed(tok, SPEED, "Speed", " is")  # a title opening a sentence is not held to it


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
