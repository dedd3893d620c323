"""The served ranker graph computes the trained ranker's function (the attention is refactored for speed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models.ranking import Ranker, RankingConfig, ServingRanker
from training.onnx_export import export_ranker, parity, ranker_example, serving_example


def _model(seed: int = 0, content: str = "projected", hidden: int = 8) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(RankingConfig(n_items=300, genres=["Action", "Comedy", "Drama"], content_dim=16,
                                 serving_content=content, attention_hidden=hidden))
    with torch.no_grad():  # non-trivial weights everywhere, biases included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _one_user(model: Ranker, n: int, seed: int, history: torch.Tensor | None = None) -> tuple[list, list]:
    """(training rows: the user's history and user_dense repeated on every row, the served request)."""
    rows = list(ranker_example(model, n, seed=seed))
    if history is not None:
        rows[0][0] = history
    rows[0][:] = rows[0][0]
    rows[4][:] = rows[4][0]
    content = ServingRanker(model).content_input(rows[3])
    return rows, [rows[0][:1], rows[1], rows[2], content, rows[4][:1], rows[5]]


@pytest.mark.parametrize("hidden", [8, 32])  # today's attention width, and the one graphs before it were made with
@pytest.mark.parametrize("content", ["projected", "raw"])
@pytest.mark.parametrize("case", ["full", "short", "empty"])
@torch.no_grad()
def test_serving_graph_matches_the_training_forward_pass(case, content, hidden):
    model = _model(content=content, hidden=hidden)
    history = None
    if case != "full":
        history = torch.randint(1, 300, (model.cfg.max_len,))
        history[: 30 if case == "short" else None] = 0  # left padding; "empty": attention is masked to nothing
    rows, request = _one_user(model, 64, seed=3, history=history)
    logit, rating = model.logits(*rows)
    p, r = ServingRanker(model)(*request)
    assert torch.allclose(p, torch.sigmoid(logit), atol=1e-5)
    assert torch.allclose(r, rating, atol=1e-5)
    assert p.std() > 1e-3  # the rows really differ: the comparison is not between constants


@torch.no_grad()
def test_the_served_history_changes_the_scores():
    """The one history row really reaches every candidate's attention (not only the first row's)."""
    model = _model()
    request = list(serving_example(model, 16, seed=1))
    a = ServingRanker(model)(*request)
    request[0] = torch.randint(1, 300, request[0].shape, generator=torch.Generator().manual_seed(9))
    b = ServingRanker(model)(*request)
    assert (a[0] - b[0]).abs().min() > 0  # every candidate's score moved


@torch.no_grad()
def test_serving_projects_content_as_the_projected_graph_expects():
    """A "projected" graph takes the content layer's output: serving applies the exported projection in numpy
    (`RankerVersion.content`), and the scores equal the training forward pass on raw content."""
    from serving.features import ItemRows
    from serving.ranking import RankerVersion
    from training.models.ranking import content_projection

    model = _model(2)
    rows, request = _one_user(model, 24, seed=6)
    n = len(rows[1])
    items = ItemRows(item_ids=np.arange(n), found=np.ones(n, bool), title=[""] * n, genres=[[]] * n,
                     year=np.zeros(n), popularity=np.zeros(n), item_mean_rating=np.zeros(n),
                     content=rows[3].numpy())
    served = RankerVersion("1", model.cfg.genres, model.cfg.max_len, 0.0, True, content_projection(model))
    sent = served.content(items)
    assert sent.shape == (n, model.cfg.d_model)  # d floats per candidate (384 raw ones on real data)
    assert np.allclose(sent, request[3].numpy(), atol=1e-5)
    request[3] = torch.from_numpy(sent)
    p, _ = ServingRanker(model)(*request)
    assert torch.allclose(p, torch.sigmoid(model.logits(*rows)[0]), atol=1e-5)
    raw = RankerVersion("0", model.cfg.genres, model.cfg.max_len, 0.0, True, None)  # an older graph: raw rows
    assert np.array_equal(raw.content(items), rows[3].numpy())


@pytest.mark.parametrize("hidden", [8, 32])
@pytest.mark.parametrize("content", ["projected", "raw"])
def test_exported_onnx_matches_torch_for_any_number_of_candidates_and_any_history(tmp_path, content, hidden):
    model = _model(1, content, hidden)
    path = export_ranker(model, tmp_path / "ranker.onnx")
    for n in (1, 32, 200):
        assert parity(ServingRanker(model), serving_example(model, n, seed=4), path) < 1e-4
    for padding in (30, model.cfg.max_len):  # a short history, none at all (the attention masked to nothing)
        request = list(serving_example(model, 16, seed=5))
        request[0][:, :padding] = 0
        assert parity(ServingRanker(model), tuple(request), path) < 1e-4


@pytest.mark.parametrize("clicks", [0.0, 1.0])
def test_every_parameter_gets_a_gradient_even_from_a_batch_without_positives(clicks):
    """DDP reduces each parameter's gradient on every rank at every step: a rating head skipped on one rank's
    batch (no positive in it) left the other rank waiting in the reduction forever."""
    model = _model().train()
    inputs = list(ranker_example(model, 8, seed=1))
    click, rating = torch.full((8, 1), clicks), torch.full((8, 1), 4.0)
    _, loss = model(*inputs, click=click, rating=rating)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_a_ranker_saved_before_the_width_was_a_setting_loads_serves_and_exports(tmp_path):
    """Rankers registered before `attention_hidden` have 32 units, and their pickled config now reads the default
    (8, a class attribute): serving and export read the width from the weights, and a saved config dict without the
    key rebuilds 32 units, so its state dict loads (a resumed run's checkpoint, a run's result)."""
    old = _model(3, hidden=32)
    old.cfg.attention_hidden = 8  # what an old pickled config reads now
    request = serving_example(old, 20, seed=2)
    assert parity(ServingRanker(old), request, export_ranker(old, tmp_path / "old.onnx")) < 1e-4
    saved = old.cfg.to_dict()
    del saved["attention_hidden"]
    rebuilt = Ranker(RankingConfig.from_dict(saved))
    rebuilt.load_state_dict(old.state_dict())  # raises on a width mismatch
    assert rebuilt.cfg.attention_hidden == 32
