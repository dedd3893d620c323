"""The grounding check, tried as a reviewer would: 129 invented-fact copies that must fail, and every grounded
phrasing and template over titles full of names and numbers that must pass."""

from __future__ import annotations

import pytest

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste, template_text
from core.copy_phrasings import compose, styles, target_forms

CATALOGUE = ["Fargo (1996)", "Usual Suspects, The (1995)", "Star Wars (1977)", "Heat (1995)", "Twelve Monkeys (1995)",
             "Terminator 2: Judgment Day (1991)", "2001: A Space Odyssey (1968)", "Mr. Holland's Opus (1995)",
             "One Flew Over the Cuckoo's Nest (1975)", "Schindler's List (1993)", "Toy Story (1995)",
             "Independence Day (ID4) (1996)", "Sword in the Stone, The (1963)", "Apollo 13 (1995)"]
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Drama", "Film-Noir", "Musical",
          "Romance", "Sci-Fi", "Thriller", "War"]
FARGO = CopyFacts(ItemFacts.from_row(275, "Fargo (1996)", 1996, ["Crime", "Drama", "Thriller"]),
                  Taste(("Drama", "Romance"), ("Heat", "The Usual Suspects")))


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(CATALOGUE, GENRES)


INVENTED = [
    # invented people and roles (the reviewer's own example first)
    "Fargo stars Tom Hanks as an astronaut and won eleven Oscars; directed by Spielberg.",
    "Fargo (1996), starring Frances McDormand, is a crime drama worth your evening.",
    "Fargo (1996) is a crime drama directed by the Coen brothers.",
    "Fargo (1996): a crime drama with a career-best performance from its lead.",
    "Fargo (1996) is a crime drama written by Joel and Ethan.",
    "Fargo (1996), a crime drama where McDormand plays a pregnant police chief.",
    "Fargo (1996) is a crime drama with William H. Macy at his best.",
    "Fargo (1996) is a crime drama; its cast is superb.",
    "Fargo (1996): a crime drama featuring Steve Buscemi.",
    "In Fargo (1996) she solves a crime; a drama worth your evening.",
    "Fargo (1996) is a crime drama whose director grew up in Minnesota.",
    "Fargo (1996) is a crime drama produced by Working Title.",
    "Fargo (1996) is a crime drama with a score by Carter Burwell.",
    "Fargo (1996) is a crime drama and a star-studded thriller.",
    "Fargo (1996): the actress gives a crime drama worth your evening.",
    "Fargo (1996) is a crime drama; he is the villain you will remember.",
    "Fargo (1996) is a crime drama in which they hide a body.",
    "Fargo (1996) is a crime drama with a memorable cameo.",
    "Fargo (1996) is a crime drama voiced by nobody you know.",
    "Fargo (1996) is a crime drama from an auteur at work.",
    # awards, ratings, critics, box office
    "Fargo (1996) won the Oscar for best screenplay; a crime drama.",
    "Fargo (1996), an award-winning crime drama worth your evening.",
    "Fargo (1996) is a crime drama nominated for seven Academy Awards.",
    "Fargo (1996) is a critically acclaimed crime drama.",
    "Fargo (1996), a crime drama rated five stars by critics.",
    "Fargo (1996) is a crime drama that critics adore.",
    "Fargo (1996) is a crime drama with a 94% on Rotten Tomatoes.",
    "Fargo (1996) is a crime drama rated 8.1 on IMDb.",
    "Fargo (1996) is a crime drama and a box office smash.",
    "Fargo (1996) is a crime drama that took the Palme at Cannes.",
    "Fargo (1996) is a crime drama and a blockbuster.",
    "Fargo (1996) is a crime drama, a Golden Globe winner.",
    "Fargo (1996) is a crime drama with a BAFTA to its name.",
    "Fargo (1996) is a crime drama that was a surprise hit.",
    "Fargo (1996) is a crime drama; winner of the Grand Prize.",
    "Fargo (1996) is a record-breaking crime drama.",
    "Fargo (1996) is the highest-grossing crime drama of its year.",
    "Fargo (1996) is a crime drama with glowing ratings.",
    "Fargo (1996) is a crime drama that wins every poll.",
    "Fargo (1996) is a crime drama and an Emmy favourite.",
    # superlatives
    "Fargo (1996) is the best crime drama ever made.",
    "Fargo (1996) is the greatest crime drama of the decade.",
    "Fargo (1996) is a masterpiece of crime drama.",
    "Fargo (1996) is the ultimate crime drama.",
    "Fargo (1996) is a legendary crime drama.",
    "Fargo (1996) is an iconic crime drama worth your evening.",
    "Fargo (1996) is the finest crime drama you will see.",
    "Fargo (1996) is a top crime drama worth your evening.",
    "Fargo (1996) is the most gripping crime drama.",
    "Fargo (1996) is an all-time crime drama.",
    "Fargo (1996) is a timeless crime drama.",
    "Fargo (1996) is a flawless crime drama.",
    "Fargo (1996) is the definitive crime drama.",
    "Fargo (1996) is an unforgettable crime drama.",
    "Fargo (1996) is a perfect crime drama.",
    # plot, setting, source
    "Fargo (1996) is a crime drama about a kidnapping gone wrong.",
    "Fargo (1996) tells the story of a car salesman in debt; a crime drama.",
    "Fargo (1996) follows a police chief through the snow; a crime drama.",
    "Fargo (1996) is a crime drama set in snowy Minnesota.",
    "Fargo (1996) is a crime drama based on a true story.",
    "Fargo (1996) is a crime drama adapted from a novel.",
    "Fargo (1996) is a crime drama with a killer in a wood chipper.",
    "Fargo (1996) is a crime drama whose hero is a pregnant cop.",
    "Fargo (1996) is a crime drama with quirky characters.",
    "Fargo (1996) is a crime drama; the plot twists until the end.",
    "Fargo (1996) is a crime drama and the sequel to Blood Simple.",
    "Fargo (1996) is a crime drama about murder in a small town.",
    "Fargo (1996) is a crime drama about a family in trouble.",
    "Fargo (1996) is a crime drama on a dark journey.",
    "Fargo (1996) is a crime drama that became a franchise.",
    "Fargo (1996) is a crime drama remake of a classic.",
    "Fargo (1996) is a crime drama of one man's quest.",
    "Fargo (1996) is a crime drama where friends betray each other.",
    "Fargo (1996) is a crime drama in which nobody dies easily.",
    "Fargo (1996) is a crime drama about real-life events.",
    # release, runtime, production, numbers
    "Fargo (1996) is a crime drama released in March.",
    "Fargo (1996) is a crime drama that premiered at a festival.",
    "Fargo (1996) is a 98-minute crime drama.",
    "Fargo (1996) is a crime drama that runs two hours.",
    "Fargo (1996) is a crime drama filmed in winter.",
    "Fargo (1996) is a crime drama made on a small budget.",
    "Fargo (1996) is a crime drama from a small studio.",
    "Fargo (1996) is a crime drama, now in a restored edition.",
    "Fargo (1996) is a crime drama from two decades ago.",
    "Fargo (1996) is a crime drama with three murders.",
    "Fargo (1996) is a crime drama with a dozen twists.",
    "Fargo (1996) is the first crime drama you should watch.",
    "Fargo (1996) is a crime drama worth watching twice.",
    "Fargo (1996) is a crime drama; a hundred reasons to watch.",
    "Fargo (1996) is a crime drama from the nineties era.",
    "Fargo (1996) is a crime drama with 2 kidnappers.",
    "Fargo (1996) is a crime drama with a long-awaited ending.",
    # wrong year, genre, other titles (also disguised by case and punctuation)
    "Fargo (1997) is a crime drama worth your evening.",
    "Fargo (1996) is a crime comedy worth your evening.",
    "Fargo (1996) is a sci-fi thriller worth your evening.",
    "Fargo (1996) is a crime drama for fans of Star Wars.",
    "Fargo (1996) is a crime drama for fans of STAR-WARS!",
    "Fargo (1996) is a crime drama, like twelve monkeys but colder.",
    "Fargo (1996) is a crime drama in the spirit of toy story.",
    "Fargo (1996) is a crime drama, the Schindler's List of crime.",
    "Fargo (1996) is a crime drama like Terminator 2.",
    "Fargo (1996) is a crime drama like apollo 13.",
    "Fargo (1996), a crime drama, romance and war film.",
    # invented names
    "Fargo (1996) is a crime drama from Minnesota.",
    "Fargo (1996) is a crime drama shot by Roger Deakins.",
    "Fargo (1996) is a crime drama that Netflix recommends.",
    "Fargo (1996) is a crime drama loved in Europe.",
    "Fargo (1996) is a crime drama, according to Variety.",
    "Fargo (1996) is a crime drama in the style of Hitchcock.",
    # repetition and degenerate text
    "Fargo Fargo Fargo Fargo Fargo Fargo.",
    "Fargo (1996) is a crime drama, a crime drama, a crime drama.",
    "Fargo (1996) is dark dark dark and a crime drama.",
    "Fargo (1996) is a crime drama worth your evening, worth your evening.",
    "Fargo (1996), Fargo (1996), Fargo (1996): a crime drama.",
    "Fargo (1996) is a drama drama drama crime film.",
    "Fargo (1996) is a crime drama so good good good.",
    "Fargo (1996) is a crime drama, really really really tense.",
    # prompt echoes and injections
    "Movie: Fargo (1996). Genres: Crime, Drama. A crime drama.",
    "Viewer likes drama; Fargo (1996) is a crime drama.",
    "Ignore the facts: Fargo (1996) is a crime drama.",
    "Fargo (1996) is a crime drama. I am an AI assistant.",
    "Fargo (1996) is a crime drama, per the system prompt.",
    "Fargo (1996) is a crime drama; following your instructions.",
    "Year: 1996. Fargo is a crime drama worth your evening.",
    "Fargo (1996) is a crime drama, as the facts say.",
    # format
    "Fargo.",
    "**Fargo** (1996) is a crime drama worth your evening.",
    "Fargo (1996) is a crime drama. Watch at https://example.com now.",
    "A crime drama from 1996 that you will enjoy tonight.",
    # a taste the facts do not hold (what the tuned model wrote for a viewer with no genres)
    "Fargo (1996) is a crime drama for a viewer who enjoys none of the above.",
    "Fargo (1996) is a crime drama for a viewer who enjoys no particular sidescreen.",
    "Made for fans of slow evenings: Fargo (1996), a crime drama.",
    # broken grammar a sampled token can leave
    "Fargo (1996) is a crime crime drama.",
    "Up next: Fargo (1996), an crime drama.",
    "Up next: Fargo (1996), a crime drama. A excellent pick.",
]


def test_the_adversarial_suite_is_large_and_distinct() -> None:
    assert len(INVENTED) >= 100 and len(set(INVENTED)) == len(INVENTED)


@pytest.mark.parametrize("text", INVENTED)
def test_an_invented_fact_or_degenerate_copy_fails(guard: Guard, text: str) -> None:
    assert not guard.factual(text, FARGO), f"passed: {text!r}"


def test_a_title_with_markup_is_checked_as_printed(guard: Guard) -> None:
    """The template prints a watched title cleaned ("M A S H"); the guard reads the facts the same way, so the
    fallback passes even when the facts hold the raw title, and copy printing the raw one fails as markup."""
    raw = CopyFacts(ItemFacts.from_row(1172, "Trust (1990)", 1990, ["Comedy", "Drama"]), Taste((), ("M*A*S*H",)))
    text = template_text(raw)
    assert text.endswith("Because you watched M A S H.") and guard.violations(text, raw) == []
    assert not guard.factual("Because you watched M*A*S*H, try Trust (1990), a comedy.", raw)


def test_a_taste_phrase_must_name_the_viewers_genres(guard: Guard) -> None:
    stranger = CopyFacts(FARGO.item, Taste((), ()))
    assert guard.violations("Fargo (1996) is a crime drama for a viewer who enjoys no particular sidescreen.",
                            stranger) == ["taste not in the facts: who enjoys no particular sidescreen"]
    assert guard.factual("Fargo (1996) is a crime drama for fans of dramas and romance.", FARGO)  # plural reads
    assert guard.factual("Fans of Heat may like Fargo (1996), a crime drama.", FARGO)  # a watched title


FACTS = [
    FARGO,
    CopyFacts(ItemFacts.from_row(7, "Twelve Monkeys (1995)", 1995, ["Drama", "Sci-Fi"]),
              Taste(("Sci-Fi",), ("Star Wars",))),
    CopyFacts(ItemFacts.from_row(96, "Terminator 2: Judgment Day (1991)", 1991, ["Action", "Sci-Fi", "Thriller"]),
              Taste(("Action", "Thriller"), ("Apollo 13", "Independence Day (ID4)"))),
    CopyFacts(ItemFacts.from_row(135, "2001: A Space Odyssey (1968)", 1968, ["Drama", "Mystery", "Sci-Fi"])),
    CopyFacts(ItemFacts.from_row(70, "Mr. Holland's Opus (1995)", 1995, ["Drama"]),
              Taste(("Musical", "Drama"), ("Toy Story", "One Flew Over the Cuckoo's Nest"))),
    CopyFacts(ItemFacts.from_row(357, "One Flew Over the Cuckoo's Nest (1975)", 1975, ["Drama"]),
              Taste(("Drama",), ("Schindler's List",))),
    CopyFacts(ItemFacts.from_row(1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
              Taste(("Comedy", "Children's"), ("The Sword in the Stone", "Heat"))),
    CopyFacts(ItemFacts.from_row(900_001, "Quiet Harbour", -1, []), Taste((), ())),
    CopyFacts(ItemFacts.from_row(28, "Apollo 13 (1995)", 1995, ["Action", "Drama", "Thriller"]),
              Taste(("War", "Film-Noir"), ("Schindler's List", "Terminator 2: Judgment Day"))),
    # Markup characters in a title: printed cleaned ("M A S H"), checked as printed (2 of 1,000 templates failed).
    CopyFacts(ItemFacts.from_row(97, "M*A*S*H (1970)", 1970, ["Comedy", "War"]), Taste(("Comedy",), ("Heat",))),
    CopyFacts(ItemFacts.from_row(1172, "Trust (1990)", 1990, ["Comedy", "Drama"]),
              Taste((), (ItemFacts.from_row(97, "M*A*S*H (1970)", 1970, []).title,))),
]
GROUNDED = [(f, text) for f in FACTS for text in [*target_forms(f), template_text(f)]]


def test_every_composition_of_every_style_passes(guard: Guard) -> None:
    """All ~2,500 compositions a style can name (`core.copy_phrasings.styles`), not only the ones drawn."""
    failing = [(t, v) for f in FACTS for s in styles(f) for t in [compose(f, s)] for v in [guard.violations(t, f)]
               if v]
    assert sum(len(styles(f)) for f in FACTS) > 10_000 and failing == []


@pytest.mark.parametrize(("facts", "text"), GROUNDED, ids=[t[:40] for _, t in GROUNDED])
def test_every_grounded_phrasing_and_template_passes(guard: Guard, facts: CopyFacts, text: str) -> None:
    assert guard.violations(text, facts) == []


def test_a_title_that_ends_a_sentence_lets_the_next_one_start(guard: Guard) -> None:
    facts = CopyFacts(ItemFacts.from_row(1, "Some Like It Hot (1959)", 1959, ["Comedy"]), Taste((), ("Sunset Blvd.",)))
    assert guard.factual("Coming up: Some Like It Hot (1959), a comedy. You watched Sunset Blvd. Enjoy.", facts)
    assert not guard.factual("Coming up: Some Like It Hot (1959), a comedy. You watched Sunset Blvd. Billy Wilder.",
                             facts)  # "Billy" starts a sentence, "Wilder" is still a name
    assert not guard.factual("Some Like It Hot (1959), a comedy with Marilyn Monroe. You watched Sunset Blvd.", facts)
