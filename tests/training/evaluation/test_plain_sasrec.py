"""The plain SASRec baseline learns an order a popularity count cannot, chooses its dropout on validation, and
the bench puts its row in the quality table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.data.split import leave_last_out
from training.datasets import Prepared
from training.sequences import histories


def walks(n_users: int = 80, n_items: int = 40, length: int = 14, seed: int = 0) -> Prepared:
    """Every user walks the catalogue in order from a random start: the next item is the last one + 1, so a
    sequence model can reach HR@10 near 1 while popularity (every item about as frequent) sits near 10/40."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start = int(rng.integers(n_items))
        rows += [(u, (start + t) % n_items + 1, 4.0, t) for t in range(length)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    split = leave_last_out(df)
    item_ids = np.arange(n_items + 1, dtype=np.int64)
    item_ids[0] = -1
    index = {int(r): i for i, r in enumerate(item_ids) if i > 0}
    return Prepared(None, split, "walks", item_ids, histories(split.train, index))  # type: ignore[arg-type]


def test_plain_sasrec_learns_the_order_and_keeps_the_best_validation_dropout() -> None:
    from training.evaluation.baselines import run_baselines
    from training.evaluation.sasrec import plain_sasrec

    prepared = walks()
    out = plain_sasrec(prepared, dropouts=(0.0, 0.5), budget_s=60.0, max_len=16)  # the walks are 12 long
    assert out.dropout == max(out.valid_ndcg, key=out.valid_ndcg.get)
    assert set(out.valid_ndcg) == {0.0, 0.5} and out.kept_epoch >= 1
    assert all(why.startswith(("no better validation", "time budget", "200 epochs")) for why in out.stopped.values())
    _, hists, targets = prepared.eval_set("test")
    pop = run_baselines(hists, hists, targets, prepared.n_items, names=("mostpop",))["mostpop"].report
    assert out.test.hr > 0.8 > 0.5 > pop.hr


def test_the_plain_sasrec_row_sits_after_the_served_list_and_is_carried_over() -> None:
    from recsys.bench.report import SECTIONS, carry_over, quality_rows

    served = {"model": "served list", "already_had_share": 0.0}
    r = {"quality": [{"model": "retrieval v1"}, {"model": "→ ranker"}, served, {"model": "ease"}],
         "sasrec": {"model": "plain SASRec"}, "machine": {"cpu": "x"}}
    assert [q["model"] for q in quality_rows(r)] == ["retrieval v1", "→ ranker", "served list", "plain SASRec",
                                                    "ease"]
    assert "sasrec" in SECTIONS
    now = carry_over({"quality": r["quality"], "machine": {"cpu": "x"}, "started": "b"},
                     {**r, "started": "a", "machine": {"cpu": "x", "commit": "c0"}})
    assert now["sasrec"] == {"model": "plain SASRec"} and now["carried_from"]["sasrec"]["commit"] == "c0"
