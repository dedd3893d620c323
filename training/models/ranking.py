"""Ranking: DIN-style attention over the recent sequence w.r.t. the candidate, DCN-v2 cross layers,
and two heads (interaction probability, rating). Loss = w_click·BCE + w_rating·MSE(rating | positive).

Every input is a plain tensor so the model exports to ONNX and serves from Triton as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.ranking_inputs import INPUTS, OUTPUTS, USER_DENSE_DIM, item_dense, user_dense

__all__ = ["INPUTS", "OUTPUTS", "Ranker", "RankingConfig", "ServingRanker", "item_dense", "user_dense"]


@dataclass
class RankingConfig:
    n_items: int = 0  # vocabulary size including padding index 0
    max_len: int = 50  # history length (same as the user profile's recent_items)
    genres: list[str] = field(default_factory=list)  # genre vocabulary for the multi-hot item feature
    content_dim: int = 384  # item content embedding size
    d_model: int = 32  # id embedding size
    # Hidden units of the attention MLP, per (candidate, history item) pair: most of the served graph's arithmetic
    # (N·L of them a request). 8: validation AUC 0.725 against 0.727 at 32 on ML-100K, the graph 0.6× the time at
    # 100 candidates (README, measurement log). Read from the weights when serving, so older graphs keep theirs.
    attention_hidden: int = 8
    n_cross: int = 2  # DCN-v2 cross layers
    hidden: int = 128  # deep tower width
    dropout: float = 0.1  # dropout in the deep tower
    w_click: float = 1.0  # loss weight of the interaction head
    w_rating: float = 0.5  # loss weight of the rating head
    lr: float = 2e-3  # AdamW learning rate
    batch_size: int = 512  # global batch size
    epochs: int = 4  # passes over the training examples
    refit_epochs: int = 0  # then passes over examples through each user's validation interaction (`refit_examples`)
    negatives: int = 4  # sampled negatives per positive (half hard from recall, half uniform)
    seed: int = 0  # initialisation and sampling seed
    recall_weight: float = 0.0  # serving order = z(logit p_click) + w·z(recall score); tuned on validation
    # How many of recall's candidates (its top, in recall order) the ranker re-orders when serving; chosen on
    # validation with recall_weight (`training.jobs.ranking.tune_blend`). 0: not chosen (configs written before
    # this field existed): serving re-orders `recall_candidates`.
    candidates: int = 0
    # Layout of the exported graph's inputs: "user_once" = history and user_dense as one row per request, the
    # rest one row per candidate. Configs written before this field existed lack it: serving reads "per_row".
    serving_inputs: str = "user_once"
    # What the exported graph's `item_content` input holds: "projected" = the content layer already applied, d_model
    # floats per candidate (serving keeps each item's projection; 384 floats a candidate were most of a request's
    # bytes and of Triton's per-request CPU). Configs written before this field existed lack it: serving reads "raw".
    serving_content: str = "projected"

    @property
    def item_dense_dim(self) -> int:
        return len(self.genres) + 3  # genres multi-hot, year, log popularity, mean rating

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RankingConfig:
        """A saved config: one written before `attention_hidden` existed was trained with 32 units."""
        return cls(**{"attention_hidden": 32, **d})


class CrossLayer(nn.Module):
    """DCN-v2: x_{l+1} = x0 ⊙ (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x) + x


class Ranker(nn.Module):
    def __init__(self, cfg: RankingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.content = nn.Linear(cfg.content_dim, d)
        self.att = nn.Sequential(nn.Linear(4 * d, cfg.attention_hidden), nn.ReLU(),
                                 nn.Linear(cfg.attention_hidden, 1))
        in_dim = 3 * d + d + cfg.item_dense_dim + USER_DENSE_DIM + 1
        self.cross = nn.ModuleList(CrossLayer(in_dim) for _ in range(cfg.n_cross))
        self.deep = nn.Sequential(
            nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden // 2), nn.ReLU(),
        )
        self.click_head = nn.Linear(in_dim + cfg.hidden // 2, 1)
        self.rating_head = nn.Linear(in_dim + cfg.hidden // 2, 1)

    def logits(self, history, item, item_dense, item_content, user_dense, recall_score):
        """history (B, L), item (B, 1) → (click logit (B, 1), rating (B, 1) in 1..5)."""
        content = self.content(item_content)
        c = self.item_emb(item[:, 0]) + content  # (B, d)
        h = self.item_emb(history)  # (B, L, d)
        ce = c.unsqueeze(1).expand_as(h)
        w = self.att(torch.cat([h, ce, h * ce, h - ce], dim=-1)).squeeze(-1)  # (B, L)
        return self.head(history, h, c, w, content, item_dense, user_dense, recall_score)

    def head(self, history, h, c, w, content, item_dense, user_dense, recall_score):
        """Everything after the attention scores w (B, L): pooling, cross and deep towers, the two heads."""
        w = w.masked_fill(history == 0, -1e9).softmax(dim=-1) * (history != 0).any(1, keepdim=True)
        pooled = (w.unsqueeze(-1) * h).sum(1)  # (B, d)
        return self.towers(c, pooled, content, item_dense, user_dense, recall_score)

    def towers(self, c, pooled, content, item_dense, user_dense, recall_score):
        """Cross and deep towers over one row per candidate, then the two heads."""
        x0 = torch.cat([c, pooled, c * pooled, content, item_dense, user_dense, recall_score], dim=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        z = torch.cat([x, self.deep(x0)], dim=-1)
        return self.click_head(z), 1.0 + 4.0 * torch.sigmoid(self.rating_head(z))

    def forward(self, history, item, item_dense, item_content, user_dense, recall_score,
                click=None, rating=None):
        """Returns ((p_click, rating), loss); rating loss only on positives (click == 1)."""
        logit, r = self.logits(history, item, item_dense, item_content, user_dense, recall_score)
        loss = None
        if click is not None:
            loss = self.cfg.w_click * F.binary_cross_entropy_with_logits(logit, click)
            if rating is not None:
                # Masked, not skipped when a batch has no positive: every parameter takes part in every step (under
                # DDP a rank whose batch skipped the rating head waited forever for the others: a hung retrain, seen
                # on a 2-worker run after the catalogue grew; `average_gradients` reduces all of them either way).
                pos = (click > 0.5).float()
                sq = (r - rating) ** 2 * pos
                loss = loss + self.cfg.w_rating * sq.sum() / pos.sum().clamp(min=1.0) / 4.0
        return (torch.sigmoid(logit), r), loss


def content_projection(model: Ranker) -> np.ndarray:
    """The content layer as one (d, content_dim + 1) array, weight then bias column: what serving applies to an
    item's content embedding to make a "projected" graph's `item_content` row."""
    w, b = model.content.weight.detach(), model.content.bias.detach()
    return torch.cat([w, b[:, None]], dim=1).numpy().astype(np.float32)


class ServingRanker(nn.Module):
    """The exported graph: one request = one user's N candidates → (p_click, rating), the function of
    `Ranker.logits` with the user's rows repeated, at a third of its cost.

    Inputs: history (1, L) and user_dense (1, 2) once per request; item (N, 1), item_dense, item_content and
    recall_score one row per candidate; item_content is the content layer's output (`content_input`) in graphs
    exported "projected", the raw embedding in older ones. Sending the history once also drops N·L ids from every
    request.
    The attention MLP's first layer is linear, so W·[h; c; h⊙c; h−c] + b = (W_h+W_d)·h + (W_c−W_d)·c
    + W_p·(h⊙c) + b. For one user, every history-side term folds into a (d+1, L·H) matrix built once per
    request (H = the attention's hidden units), and the first layer for all N×L (candidate, position) pairs is one
    GEMM, [c, 1] @ that matrix, instead of gathers, a batched matmul and adds over (N, L, H) tensors. The second
    layer's bias is dropped: softmax ignores a constant. Built from a trained model; outputs equal to float precision.
    """

    def __init__(self, model: Ranker) -> None:
        super().__init__()
        self.model = model
        first = model.att[0]
        wh, wc, wp, wd = first.weight.detach().split(model.cfg.d_model, dim=1)
        hist_table = model.item_emb.weight.detach() @ (wh + wd).T + first.bias.detach()
        self.register_buffer("hist_table", hist_table)  # (n_items, H): history term and bias per item
        self.register_buffer("w_cand", (wc - wd).T.contiguous())  # (d, H)
        self.register_buffer("w_prod", wp.T.contiguous())  # (d, H)
        self.register_buffer("w_score", model.att[2].weight.detach().T.contiguous())  # (H, 1)
        self.projected = model.cfg.serving_content == "projected"

    def content_input(self, raw: torch.Tensor) -> torch.Tensor:
        """What the graph's `item_content` takes for raw content embeddings (N, content_dim)."""
        return self.model.content(raw) if self.projected else raw

    def forward(self, history, item, item_dense, item_content, user_dense, recall_score):
        m = self.model
        hist = history[0]  # (L,): the request's one user
        content = item_content if self.projected else m.content(item_content)
        c = m.item_emb(item[:, 0]) + content  # (N, d)
        h = m.item_emb(hist)  # (L, d)
        # pre[n, l] = c[n] @ (diag(h[l]) W_p + W_c') + hist_table[hist[l]]: the l-th (d+1, H) block of `per_user`
        per_user = torch.cat([(h.unsqueeze(2) * self.w_prod + self.w_cand).transpose(0, 1),
                              self.hist_table[hist].unsqueeze(0)], dim=0)  # (d+1, L, H)
        c1 = torch.cat([c, torch.ones_like(c[:, :1])], dim=1)  # (N, d+1)
        pre = (c1 @ per_user.reshape(c1.shape[1], -1)).reshape(c.shape[0], hist.shape[0], -1)  # (N, L, H)
        w = (torch.relu(pre) @ self.w_score).squeeze(-1)  # (N, L)
        mask = hist != 0
        w = w.masked_fill(~mask, -1e9).softmax(dim=-1) * mask.any()
        logit, r = m.towers(c, w @ h, content, item_dense, user_dense.expand(c.shape[0], -1), recall_score)
        return torch.sigmoid(logit), r
