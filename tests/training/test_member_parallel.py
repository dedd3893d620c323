"""The retrieval job's ranks each training their own members (`training.jobs.retrieval.Layout`): the same model
as one worker training them all, with no gradient crossing between members."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import run_spawned
from training.jobs.common import adamw, run_epoch
from training.jobs.retrieval import Layout
from training.models.retrieval import RetrievalConfig, SASRec

CFG = RetrievalConfig(n_items=40, max_len=6, d_model=8, n_heads=2, n_layers=2, members=2, dropout=0.0,
                      content_dim=4, batch_size=8, lr=1e-2)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, 40, (44, 6))
    inputs[::3, :2] = 0  # some short histories
    targets = np.where(inputs > 0, rng.integers(1, 40, (44, 6)), 0)
    return inputs, targets, (targets != 0).sum(1)


def _whole() -> SASRec:
    torch.manual_seed(0)
    return SASRec(CFG, torch.randn(40, 4).index_fill_(0, torch.tensor([0]), 0.0))


def _train(model: SASRec, lay: Layout, epochs: int = 2) -> None:
    inputs, targets, weights = _data()
    opt = adamw(model.parameters(), lr=CFG.lr)
    for epoch in range(epochs):
        model.train()
        batches = lay.batches(weights, epoch, lay.per_worker(CFG))
        run_epoch(model, opt, ((inputs[b], targets[b]) for b in batches), torch.device("cpu"), average=not lay.split)


REFIT = replace(CFG, refit_epochs=2, average_epochs=2.7)


def _refit_from(model: SASRec, lay: Layout, kept: dict[str, torch.Tensor] | None,
                cfg: RetrievalConfig = REFIT) -> dict[str, torch.Tensor]:
    """The job's refit of `model` from rank 0's `kept` weights; the whole model's (averaged) state."""
    from training.jobs.retrieval import _refit

    inputs, targets, _ = _data()
    return _refit(model, None if kept is None else {"model": kept}, {"refit_inputs": inputs, "refit_targets": targets},
                  cfg, torch.device("cpu"), lay)


def _two_ranks(tmp_path, refit: bool) -> dict[str, torch.Tensor]:
    """`_rank` on two spawned gloo processes; rank 0's joined state."""
    out = str(tmp_path / "joined.pt")
    run_spawned(_rank, [(r, str(tmp_path / "store"), out, refit) for r in range(2)])
    return torch.load(out, weights_only=True)


def _assert_same_weights(joined: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Equal up to the arithmetic's last bits, the attention's key bias left out: its true gradient is zero (a
    constant added to every key's score), so AdamW steps it by its rounding noise, which differs with the
    arithmetic."""
    assert joined.keys() == state.keys()
    d = CFG.d_model
    for key in state:
        a, b = joined[key], state[key]
        if key.endswith("attn.qkv.bias"):
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=key)


def _rank(rank: int, store: str, out: str, refit: bool = False) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    lay = Layout.of(CFG, rank, 2)
    whole = _whole()
    own = SASRec(lay.config(CFG), whole.items.content)
    if refit:  # rank 0's kept weights reach rank 1 inside the refit
        joined = _refit_from(own, lay, whole.state_dict() if rank == 0 else None)
    else:
        own.load_state_dict(lay.own(whole.state_dict(), CFG))
        _train(own, lay)
        joined = lay.whole(own.state_dict(), CFG)
    if rank == 0:
        torch.save(joined, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("members, world, split", [(2, 2, True), (4, 2, True), (2, 1, False), (1, 2, False),
                                                   (3, 2, False)])
def test_ranks_split_the_members_when_they_can_take_equal_shares(members: int, world: int, split: bool) -> None:
    cfg = RetrievalConfig(n_items=40, members=members, batch_size=32)
    lay = Layout.of(cfg, world - 1, world)
    assert lay.split is split
    assert lay.config(cfg).members == (members // world if split else members)
    assert ("members" in lay.describe(cfg)) is split
    weights = np.random.default_rng(0).integers(1, 51, 101)
    one = [b.tolist() for b in Layout.of(cfg, 0, 1).batches(weights, 5, 32)]
    mine = [b.tolist() for b in lay.batches(weights, 5, lay.per_worker(cfg))]
    if split:  # every rank steps through the whole global batches one worker takes
        assert mine == one
    else:  # replicas: a part of each
        assert all(set(m) <= set(o) for m, o in zip(mine, one, strict=False))


def test_two_ranks_each_training_a_member_train_the_model_one_worker_trains(tmp_path) -> None:
    """Two gloo ranks, one member each, joined: the weights one process gets training both members on the same
    batches (AdamW is blind to the joint loss's 1/members scale; the arithmetic differs in the last bits), and
    the same scores (`_assert_same_weights`). Had the ranks averaged their gradients, as replicas do, each member
    would have learned from the other's loss."""
    joined = _two_ranks(tmp_path, refit=False)
    alone = _whole()
    start = {k: v.clone() for k, v in alone.state_dict().items()}
    _train(alone, Layout.of(CFG, 0, 1))
    state = alone.state_dict()
    _assert_same_weights(joined, state)
    model = SASRec(CFG, alone.items.content).eval()
    model.load_state_dict(joined)
    seq = torch.from_numpy(_data()[0][:5])
    torch.testing.assert_close(model(seq)[0], alone.eval()(seq)[0], rtol=1e-4, atol=1e-4)
    moved = (state["blocks.2.attn.qkv.weight"] - start["blocks.2.attn.qkv.weight"]).abs().max()
    assert moved > 1e-2  # member 1 (rank 1's) trained: the comparison is not of two untouched models


def test_two_ranks_refit_to_the_average_one_worker_refits_to(tmp_path) -> None:
    """Split between two ranks, the refit's weight average (each rank its members', joined) is the one a single
    process gets refitting both members from the same kept weights (`_assert_same_weights`)."""
    joined = _two_ranks(tmp_path, refit=True)
    kept = _whole().state_dict()
    alone = _refit_from(SASRec(CFG, kept["items.content"]), Layout(0, 1, False), kept)
    _assert_same_weights(joined, alone)
    assert (alone["blocks.2.attn.qkv.weight"] - kept["blocks.2.attn.qkv.weight"]).abs().max() > 1e-3


@pytest.mark.parametrize("horizon", [0.0, 2.7, 1e6])
def test_the_refit_ends_at_a_weight_average_begun_at_the_kept_weights(horizon: float) -> None:
    """Training's kept weights are an average (`weight_average`); the refit's served ones are too, begun at the kept
    weights, so a horizon far longer than the refit leaves them where they were (fooled: the raw refit weights, or
    an average begun at the first step's raw weights, AveragedModel's default)."""
    cfg = replace(REFIT, average_epochs=horizon)
    kept = {k: v.clone() for k, v in _whole().state_dict().items()}
    model = SASRec(cfg, kept["items.content"])
    out = _refit_from(model, Layout(0, 1, False), kept, cfg)
    raw = model.state_dict()
    moved = max(float((raw[k] - kept[k]).abs().max()) for k in kept)
    assert moved > 1e-2  # the refit trained
    gap = max(float((out[k] - raw[k]).abs().max()) for k in kept)
    if horizon == 0.0:
        assert gap == 0.0  # no average: the raw refit weights
    else:
        assert gap > 1e-3
        from_kept = max(float((out[k] - kept[k]).abs().max()) for k in kept)
        assert (from_kept < 1e-4) == (horizon == 1e6)
