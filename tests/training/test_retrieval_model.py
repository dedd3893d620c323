"""The retrieval loss computed on non-padding positions only equals full-softmax CE with padding ignored."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.models.retrieval import SHARED, RetrievalConfig, SASRec, joined_state, member_config, member_state


def test_loss_on_kept_positions_equals_the_padded_full_computation() -> None:
    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=30, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, content_dim=8)
    model = SASRec(cfg, torch.randn(30, 8)).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 8], [2, 3, 4, 5, 6, 9], [0, 0, 0, 0, 0, 11]])
    _, loss = model(seq, targets)
    full, _ = model(seq)  # (B, T, n_items): what the loss used to be computed over
    expected = F.cross_entropy(full.reshape(-1, cfg.n_items), targets.reshape(-1), ignore_index=0)
    torch.testing.assert_close(loss, expected)
    assert torch.all(full[..., 0] < -1e8)  # padding never predicted
    params = list(model.parameters())  # the hand-written backward (`_LogSumExp`) against autograd's
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(got, want)


def test_training_reads_its_inputs_from_the_scored_table_with_the_same_loss_and_gradients() -> None:
    """The training step projects the catalogue's content once and takes the sequence's inputs from that table;
    the exported encoder gathers and projects the inputs row by row. Same user vectors, loss and gradients."""
    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=30, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, content_dim=8)
    model = SASRec(cfg, torch.randn(30, 8).index_fill_(0, torch.tensor([0]), 0.0)).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 8], [2, 3, 4, 5, 6, 9]])
    _, loss = model(seq, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    rows = torch.arange(cfg.n_items)
    table = model.items.id_emb(rows) + model.items.proj(model.items.content[rows])  # the tower row by row
    torch.testing.assert_close(model.items.all_items(), table)
    h = model.encode(seq)  # no table: the exported path
    keep = targets != 0
    logits = h[keep] @ table.T
    logits[:, 0] = -1e9
    expected = F.cross_entropy(logits, targets[keep])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, list(model.parameters())), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(model.user_vector(seq, model.items.all_items()), model.user_vector(seq))


def test_training_stops_on_the_validation_signal_the_cap_or_the_budget() -> None:
    from training.jobs.retrieval import stopping

    cfg = RetrievalConfig(epochs=50, patience=4, plateau=2, budget_s=100.0)
    assert stopping(cfg, epoch=10, best_epoch=10, seconds=5.0) == ("", 1.0)  # improving: go on, same rate
    assert stopping(cfg, epoch=11, best_epoch=10, seconds=5.0) == ("", 1.0)
    assert stopping(cfg, epoch=12, best_epoch=10, seconds=5.0) == ("", 0.5)  # plateau of 2: halve
    assert stopping(cfg, epoch=13, best_epoch=10, seconds=5.0) == ("", 1.0)
    assert stopping(cfg, epoch=14, best_epoch=10, seconds=5.0)[0].startswith("no better validation NDCG@10 for 4")
    assert stopping(cfg, epoch=3, best_epoch=3, seconds=100.0)[0] == "time budget 100 s"
    assert stopping(cfg, epoch=50, best_epoch=50, seconds=1.0)[0] == "epoch cap"  # the label the run records
    plain = RetrievalConfig(epochs=50)  # no patience, plateau or budget: the epoch cap alone
    assert stopping(plain, epoch=49, best_epoch=1, seconds=1e9) == ("", 1.0)


def test_epoch_lines_show_each_new_epoch_once_with_metric_and_eta() -> None:
    from training.progress import EpochLines

    lines: list[str] = []
    p = EpochLines("retrieval", None, total=40, say=lines.append)
    p.show({})  # nothing reported yet
    p.show({"epoch": 3, "epoch_val_ndcg_at_10": 0.1012, "train_loss": 5.5, "epoch_seconds": 4.0})
    p.show({"epoch": 3, "epoch_val_ndcg_at_10": 0.1012})  # the same epoch again: no second line
    p.show({"epoch": 40, "train_loss": 5.1, "epoch_seconds": 4.0})
    assert lines == ["retrieval epoch 3/40: val NDCG@10 0.1012, loss 5.5000, 4.0 s/epoch, ETA ≤ 2.5 min",
                     "retrieval epoch 40/40: loss 5.1000, 4.0 s/epoch"]


def test_the_user_encoder_exports_to_onnx_without_tracer_warnings(tmp_path) -> None:
    """The attention scale was `math.sqrt` of a traced shape: every export warned, from our layer, that a tensor
    became a constant. (torch's own tracer notices, raised in torch's files, are torch's default filter's.)"""
    import warnings

    from training.onnx_export import export_user_encoder

    model = SASRec(RetrievalConfig(n_items=20, max_len=6, d_model=16, n_heads=2, content_dim=8), torch.zeros(20, 8))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_user_encoder(model, tmp_path / "user_encoder.onnx")
    assert (tmp_path / "user_encoder.onnx").exists()
    ours = [w for w in seen if issubclass(w.category, torch.jit.TracerWarning) and "site-packages" not in w.filename]
    assert not ours, [f"{w.filename}:{w.lineno} {w.message}" for w in ours]


def test_members_are_independent_models_whose_scores_add() -> None:
    """Two members = two single models side by side: the same user vectors (concatenated), scores that are the
    sum of theirs (one dot product, so recall's index does not change), a loss that is the mean of theirs, and
    each member's gradients come from its own loss alone."""
    torch.manual_seed(0)
    kw = dict(n_items=30, max_len=6, d_model=16, n_heads=2, n_layers=2, dropout=0.0, content_dim=8)
    content = torch.randn(30, 8).index_fill_(0, torch.tensor([0]), 0.0)
    singles = [SASRec(RetrievalConfig(**kw), content).eval() for _ in range(2)]
    for m in singles:  # a non-trivial layer norm, so a shared or swapped one would show
        torch.nn.init.normal_(m.ln.weight)
        torch.nn.init.normal_(m.ln.bias)
    pair = SASRec(RetrievalConfig(**kw, members=2), content).eval()
    pair.load_state_dict(joined_state([m.state_dict() for m in singles], pair.cfg))  # member i: blocks [2i, 2i + 1]
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 8], [2, 3, 4, 5, 6, 9]])
    torch.testing.assert_close(pair.user_vector(seq), torch.cat([m.user_vector(seq) for m in singles], dim=-1))
    _, loss = pair(seq, targets)
    alone = [m(seq, targets) for m in singles]
    scores = [m(seq)[0][..., 1:] for m in (pair, *singles)]  # every item but the padding (-1e9 in each)
    torch.testing.assert_close(scores[0], scores[1] + scores[2])
    torch.testing.assert_close(loss, (alone[0][1] + alone[1][1]) / 2)
    grads = dict(zip([n for n, _ in pair.named_parameters()], torch.autograd.grad(loss, list(pair.parameters())),
                     strict=True))
    own = dict(zip([n for n, _ in singles[1].named_parameters()],
                   torch.autograd.grad(alone[1][1] / 2, list(singles[1].parameters())), strict=True))
    torch.testing.assert_close(grads["blocks.2.attn.qkv.weight"], own["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(grads["items.id_emb.weight"][:, 16:], own["items.id_emb.weight"])
    torch.testing.assert_close(grads["ln.weight"][16:], own["ln.weight"])


def test_a_models_members_split_and_join_back_exactly() -> None:
    """`member_state` cuts a model into member groups that are models of their own (they load into a smaller
    SASRec and score as their slice of the whole), and `joined_state` puts them back bit for bit."""
    torch.manual_seed(1)
    kw = dict(n_items=30, max_len=6, d_model=8, n_heads=2, n_layers=2, dropout=0.0, content_dim=4)
    cfg = RetrievalConfig(**kw, members=4)
    whole = SASRec(cfg, torch.randn(30, 4)).eval()
    for p in whole.parameters():  # nothing left at its initial value (a zero bias would hide a misplaced slice)
        torch.nn.init.normal_(p)
    state = whole.state_dict()
    parts = [member_state(state, cfg, first, 2) for first in (0, 2)]
    back = joined_state(parts, cfg)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    lean = joined_state([parts[0], {k: v for k, v in parts[1].items() if k not in SHARED}], cfg)  # as rank 1 sends it
    assert lean.keys() == state.keys() and all(torch.equal(lean[k], state[k]) for k in state)
    seq = torch.tensor([[0, 3, 4, 5, 6, 7]])
    halves = []
    for part in parts:
        half = SASRec(member_config(cfg, 2), whole.items.content)
        half.load_state_dict(part)
        halves.append(half.eval().user_vector(seq))
    torch.testing.assert_close(torch.cat(halves, dim=-1), whole.user_vector(seq))
    assert not torch.equal(halves[0], halves[1])
    with pytest.raises(ValueError, match="no member layout"):
        member_state({**state, "items.bias": torch.zeros(30)}, cfg, 0, 2)


@pytest.mark.parametrize("members, layers", [(1, 2), (2, 2), (2, 1)])
def test_the_user_vector_is_the_full_encoders_last_state_computed_for_that_position_alone(members, layers) -> None:
    """`user_vector` sends only the last position through each member's last block; its vectors are the full
    encoder's last state, for full, short and empty histories (an empty one attends to itself alone)."""
    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=30, max_len=7, d_model=16, n_heads=2, n_layers=layers, content_dim=8,
                          members=members)
    model = SASRec(cfg, torch.randn(30, 8)).eval()
    for p in model.parameters():  # biases and norms away from their initial zeros and ones
        torch.nn.init.normal_(p, std=0.3)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 9, 8, 2], [0, 0, 0, 0, 0, 0, 4], [0] * 7])
    with torch.no_grad():
        full = model.encode(seq)[:, -1]
        last = model.user_vector(seq)
        table = model.items.all_items()
        torch.testing.assert_close(model.user_vector(seq, table), model.encode(seq, table)[:, -1])
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)
    assert model.encode(seq, last_only=True).shape == (4, 1, cfg.width)
    assert not torch.allclose(last[0], last[1])  # a different history, a different vector


def test_the_weight_average_spans_the_same_epochs_on_any_data_size() -> None:
    from training.jobs.retrieval import weight_average

    model = torch.nn.Linear(2, 1, bias=False)
    assert weight_average(model, 0.0, 75) is None  # off: validation judges the raw weights
    for steps in (3, 75):  # a tiny data set and ML-100K's steps an epoch
        avg = weight_average(model, 2.0, steps)
        with torch.no_grad():
            model.weight.fill_(0.0)
            avg.update_parameters(model)  # the first update copies
            model.weight.fill_(1.0)
            for _ in range(2 * steps):  # two epochs of steps at weight 1
                avg.update_parameters(model)
        expected = 1 - (1 - 1 / (2 * steps)) ** (2 * steps)  # ≈ 1 − 1/e whatever the step count
        torch.testing.assert_close(avg.module.weight, torch.full((1, 2), expected))
        assert 0.6 < expected < 0.7


def test_a_two_member_encoder_exports_to_onnx_with_the_same_user_vectors(tmp_path) -> None:
    from training.models.retrieval import UserEncoder
    from training.onnx_export import export_user_encoder, parity, user_encoder_example

    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=20, max_len=6, d_model=16, n_heads=2, content_dim=8, members=2)
    model = SASRec(cfg, torch.randn(20, 8)).eval()
    torch.nn.init.normal_(model.ln.weight)
    path = export_user_encoder(model, tmp_path / "user_encoder.onnx")
    example = user_encoder_example(model, 4, seed=1)
    assert UserEncoder(model)(*example).shape == (4, 32)  # both members' vectors: the index's width
    assert parity(UserEncoder(model), example, path) < 1e-4
    from training.export import encoder_specs  # Triton's config declares the width the graph outputs

    assert encoder_specs(cfg.to_dict())[1][0].dims == (32,)


def test_the_loss_trains_under_bf16_autocast_as_the_gpu_does() -> None:
    """The GPU steps under bf16 autocast (`training.jobs.common.autocast`); autocast does not reach a custom
    Function's backward, so without the loss's own fp32 the backward mixed bf16 and fp32 and failed. CPU autocast
    takes the same path here."""
    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=50, max_len=6, d_model=16, n_heads=2, n_layers=1, members=2, dropout=0.0,
                          content_dim=8)
    model = SASRec(cfg, torch.randn(50, 8))
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 8], [2, 3, 4, 5, 6, 9]])
    _, fp32 = model(seq, targets)
    want = torch.autograd.grad(fp32, [model.items.id_emb.weight])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(seq, targets)
    assert loss.dtype == torch.float32
    got = torch.autograd.grad(loss, [model.items.id_emb.weight])[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(loss, fp32, atol=0.05, rtol=0.01)  # bf16 blocks, fp32 softmax
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)) > 0.99


def test_the_member_settings_shape_the_model_or_fail_in_one_readable_line() -> None:
    """`retrieval_members` encoders of `retrieval_member_dim` features each, `retrieval_heads` attention heads in
    their blocks: the served vector is their product; a width the heads cannot split, or no head, is refused before
    any worker starts (not an assertion inside Ray)."""
    from types import SimpleNamespace

    from core.errors import ConfigError
    from core.settings import load_settings
    from training.steps import retrieval_config

    data = SimpleNamespace(n_items=10)
    s = load_settings(environ={}).model_copy(update={"retrieval_members": 3, "retrieval_member_dim": 24})
    cfg = retrieval_config(s, data)
    assert (cfg.members, cfg.d_model, cfg.width) == (3, 24, 72)
    for bad in ({"retrieval_member_dim": 33}, {"retrieval_member_dim": 0}, {"retrieval_members": 0}):
        with pytest.raises(ConfigError, match="retrieval_member_dim a positive multiple of 2"):
            retrieval_config(s.model_copy(update={**bad, "retrieval_heads": 2}), data)
    four = retrieval_config(s.model_copy(update={"retrieval_heads": 4, "retrieval_member_dim": 32}), data)
    assert (four.n_heads, four.d_model) == (4, 32)
    assert SASRec(replace(four, n_items=10, content_dim=0)).blocks[0].attn.n_heads == 4
    with pytest.raises(ConfigError, match="a positive multiple of 4"):
        retrieval_config(s.model_copy(update={"retrieval_heads": 4, "retrieval_member_dim": 30}), data)
    with pytest.raises(ConfigError, match="retrieval_heads must be ≥ 1"):
        retrieval_config(s.model_copy(update={"retrieval_heads": 0}), data)


@pytest.mark.parametrize(("members", "with_prior"), [(1, False), (2, False), (2, True)])
def test_the_masked_softmax_leaves_out_what_the_user_had_up_to_each_position_but_never_the_target(
        members, with_prior) -> None:
    """`mask_seen`: each position's softmax is over the items the user has not had up to it (serving never
    recommends those): the window's up to that position and the ones before the window (`prior`). Written out
    position by position here; a target the user had before (a repeat) stays a class. Loss and gradients against
    autograd's on the written-out softmax."""
    torch.manual_seed(0)
    cfg = RetrievalConfig(n_items=30, max_len=6, d_model=8, n_heads=2, n_layers=1, members=members, dropout=0.0,
                          content_dim=4, mask_seen=True)
    model = SASRec(cfg, torch.randn(30, 4))
    seq = torch.tensor([[0, 0, 3, 5, 7, 3], [1, 2, 4, 6, 8, 9]])
    targets = torch.tensor([[0, 0, 5, 7, 3, 11], [2, 4, 6, 8, 9, 10]])  # row 0 repeats item 3 as a target
    prior = torch.tensor([[0, 0, 0], [12, 13, 10]]) if with_prior else None  # row 1 had item 10, its last target
    _, loss = model(seq, targets, prior)
    table = model.items.all_items()
    h = model.encode(seq, table)
    terms = []
    for m, part in enumerate(h.split(cfg.d_model, dim=-1)):
        logits = part @ table[:, m * cfg.d_model : (m + 1) * cfg.d_model].T
        for b, t in targets.nonzero().tolist():
            row = logits[b, t].clone()
            had = [*seq[b, : t + 1].tolist(), *(prior[b].tolist() if with_prior else [])]
            hidden = {0} | {int(i) for i in had} - {int(targets[b, t])}
            row[sorted(hidden)] = float("-inf")
            terms.append(torch.logsumexp(row, 0) - logits[b, t, targets[b, t]])
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(loss, expected)
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(got, want)
    plain = SASRec(replace(cfg, mask_seen=False), model.items.content)
    plain.load_state_dict(model.state_dict())
    assert plain(seq, targets)[1] > loss  # the seen items took probability the masked softmax gives the rest
    if with_prior:
        assert loss < model(seq, targets)[1]  # and the items before the window more


def test_the_seen_mask_is_a_setting_on_by_default() -> None:
    from types import SimpleNamespace

    from core.errors import ConfigError
    from core.settings import load_settings
    from training.steps import retrieval_config

    s = load_settings(environ={})
    cfg = retrieval_config(s, SimpleNamespace(n_items=10))
    assert (cfg.mask_seen, cfg.mask_prior) == (True, 0)  # the window's items; the ones before it on request
    off = s.model_copy(update={"retrieval_mask_seen": False, "retrieval_mask_prior": 200})
    got = retrieval_config(off, SimpleNamespace(n_items=10))
    assert (got.mask_seen, got.mask_prior) == (False, 200)
    with pytest.raises(ConfigError, match="retrieval_mask_prior"):
        retrieval_config(s.model_copy(update={"retrieval_mask_prior": -1}), SimpleNamespace(n_items=10))


def test_each_window_carries_the_items_its_user_had_before_it() -> None:
    from training.sequences import training_windows, window_priors

    seqs = [np.arange(1, 13), np.array([5, 6, 7])]
    inputs, _ = training_windows(seqs, 4)
    priors = window_priors(seqs, 4, 0, 5)
    assert [r.tolist() for r in inputs] == [[8, 9, 10, 11], [4, 5, 6, 7], [0, 1, 2, 3], [0, 0, 5, 6]]
    assert [r.tolist() for r in priors] == [[3, 4, 5, 6, 7], [0, 0, 1, 2, 3], [0] * 5, [0] * 5]  # the latest 5


def test_a_champion_with_other_attention_heads_is_not_a_warm_start() -> None:
    """The heads split the same weights differently: a 2-head champion's weights fit a 4-head model by every name
    and shape (`fits`) yet compute another function there, so the warm start compares the config too."""
    from training.jobs.common import config_changes, fits

    cfg = RetrievalConfig(n_items=20, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, content_dim=0)
    torch.manual_seed(0)
    champion = SASRec(cfg)
    four = SASRec(replace(cfg, n_heads=4))
    assert fits(four, champion.state_dict())  # shapes alone would let it through
    four.load_state_dict(champion.state_dict())
    seq = torch.tensor([[0, 3, 5, 7, 2, 9]])
    with torch.no_grad():
        assert not torch.allclose(champion.user_vector(seq), four.user_vector(seq))
    assert config_changes(champion, four.cfg, ("n_heads",)) == {"n_heads": (2, 4)}
    assert config_changes(champion, replace(cfg, lr=1.0), ("n_heads",)) == {}  # a training setting may change
