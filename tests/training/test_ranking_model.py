"""The served ranker graph computes the trained ranker's function (the attention is refactored for speed)."""

from __future__ import annotations

import torch

from training.models.ranking import Ranker, RankingConfig, ServingRanker
from training.onnx_export import export_ranker, parity, ranker_example


def _model(seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(RankingConfig(n_items=300, genres=["Action", "Comedy", "Drama"], content_dim=16))
    with torch.no_grad():  # non-trivial weights everywhere, biases included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@torch.no_grad()
def test_serving_graph_matches_the_training_forward_pass():
    model = _model()
    args = list(ranker_example(model, 64, seed=3))
    args[0][:5] = 0  # users without history: attention is masked to nothing
    args[0][5:10, :30] = 0  # short histories (left padding)
    logit, rating = model.logits(*args)
    p, r = ServingRanker(model)(*args)
    assert torch.allclose(p, torch.sigmoid(logit), atol=1e-5)
    assert torch.allclose(r, rating, atol=1e-5)
    assert p.std() > 1e-3  # the rows really differ: the comparison is not between constants


def test_exported_onnx_matches_torch(tmp_path):
    model = _model(1)
    path = export_ranker(model, tmp_path / "ranker.onnx")
    assert parity(ServingRanker(model), ranker_example(model, 32, seed=4), path) < 1e-4
