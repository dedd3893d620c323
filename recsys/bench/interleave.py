"""Two loads measured against each other on a VM whose speed moves within a minute: short slices, alternated
A B B A A B …, pooled per load.

Consecutive 8 s runs of the same unchanged stack differ by up to 1.7x in req/s on this VM (README, session 65's
log), so a ratio from a few long runs, always in the same order, reads the VM's drift as much as the code. In
slices of a few seconds each load samples the same minutes, and the mirrored order cancels a steady drift
within each pair of pairs; each load's slices are then pooled (`recsys.bench.load.pooled`) and the ratio is taken
between the pools. The per-pair ratios are kept as the spread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recsys.bench.load import pooled


def mirrored(pairs: int) -> list[tuple[int, int]]:
    """The order of two arms over `pairs` pairs: (0, 1), (1, 0), (0, 1), … A linear drift adds the same to each
    arm over every two pairs."""
    return [(0, 1) if i % 2 == 0 else (1, 0) for i in range(pairs)]


def interleaved(arms: dict[str, Callable[[], dict[str, Any]]], pairs: int) -> dict[str, dict[str, Any]]:
    """Run two arms (each call one slice: `load(..., raw=True)`) in `mirrored` order; each arm's slices pooled,
    in the order they ran (slice i of both arms is pair i)."""
    if len(arms) != 2 or pairs < 1:
        raise ValueError("interleaved: two arms and at least one pair")
    names = list(arms)
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for order in mirrored(pairs):
        for i in order:
            got[names[i]].append(arms[names[i]]())
    return {name: pooled(slices) for name, slices in got.items()}


def pair_ratios(a: dict[str, Any], b: dict[str, Any], key: str) -> list[float]:
    """a / b of `key` within each pair of slices (two pooled results of one `interleaved` run)."""
    return [round(float(x[key] / y[key]), 3) for x, y in zip(a["slices"], b["slices"], strict=True)]
