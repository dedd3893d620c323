"""Which bench suites exist, which are opt-in, and the groups `--suite` accepts."""

from __future__ import annotations

SUITES = ("offline", "scaling", "quality", "sasrec", "transfer", "serving", "copy", "factuality")


# freshness and feedback ingest are measured against the live graph, so they run inside the serving suite;
# factuality (1,000 copies, base and tuned: ~27 min here), sasrec (the plain SASRec baseline, one model per
# dropout of its grid: ~20 min) and transfer (the pipeline on three derived data sets with EASE and a plain SASRec:
# ~55 min) are opt-in, outside `all` (`make bench` < 30 min); their rows are carried over.
OPT_IN = ("sasrec", "transfer", "factuality")


GROUPS = {"all": tuple(x for x in SUITES if x not in OPT_IN), "training": ("offline", "scaling"),
          "freshness": ("serving",)}


def expand_suites(names: list[str]) -> tuple[str, ...]:
    """Suite and group names → the suites to run, in SUITES order; an unknown name is a ValueError."""
    chosen: set[str] = set()
    for name in names:
        if name not in SUITES and name not in GROUPS:
            raise ValueError(f"unknown suite {name!r}: choose from {', '.join((*SUITES, *GROUPS))}")
        chosen.update(GROUPS.get(name, (name,)))
    return tuple(x for x in SUITES if x in chosen)
