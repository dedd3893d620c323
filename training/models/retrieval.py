"""Retrieval: a SASRec-style sequential user encoder and an item tower (id + content embedding).

Scores are dot products, so recall is an ANN search over the exported item-embedding index.
Training: full-softmax cross-entropy over all items at every position (Klenitskiy & Vasilev, RecSys'23), less the
items the window has shown up to that position (`mask_seen`; `mask_prior` adds the user's items before the window):
nothing a user has is ever recommended, so ranking those below the target taught the model nothing it serves.

`members` > 1 trains that many independent encoders side by side, each with its own slice of the item vectors,
and scores with the sum of their dot products: one dot product over the concatenated vectors, so the exported
encoder, the index and recall do not change. On ML-100K two members scored test NDCG@10 +0.006 over the better
member alone, in two pairs of seeds (README, measurement log). Four members of half the width (the same served
vector) gained on ML-100K but lost on two of the transfer suite's derived sets, for 1.2–2× the training time: two
of 64 stay the default. Being independent, members can also train apart (`member_state`, `joined_state`): the job
gives each Ray Train worker its own (`training.jobs.retrieval`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from training.models.layers import Block, Dropout, causal_padding_mask


@dataclass
class RetrievalConfig:
    n_items: int = 0  # vocabulary size including padding index 0 (set from the data)
    max_len: int = 50  # sequence length read from the user profile (most recent last)
    stride: int = 0  # training windows cut every this many items (0: max_len, side by side; `training_windows`)
    d_model: int = 64  # embedding and hidden size
    n_heads: int = 2  # attention heads per block
    n_layers: int = 2  # transformer blocks
    members: int = 1  # independent encoders trained side by side; their scores are summed (module docstring)
    dropout: float = 0.2  # dropout in blocks and on input embeddings
    # The training softmax leaves out the items the window showed up to each position (`seen_classes`): serving and
    # the protocol never recommend an item the user has, so the loss need not rank them. Configs written before this
    # field existed lack it, and trained without.
    mask_seen: bool = False
    mask_prior: int = 0  # with mask_seen, also the user's latest this many items before the window (0: the window's)
    content_dim: int = 384  # size of the item content embedding (0 = id embeddings only)
    id_init_std: float = 0.02  # std of the initial id embeddings (the output layer too: the item vectors are tied)
    # AdamW learning rate. With the weight average judged (`average_epochs`) 1.2e-2 reached on ML-100K in 36 epochs the
    # validation NDCG@10 6e-3 reached in 98 (0.131 / 0.127); 2.4e-2 stalled at 0.093 (README, measurement log)
    lr: float = 1.2e-2
    weight_decay: float = 0.0  # AdamW weight decay
    batch_size: int = 32  # global batch size (split across workers); ML-100K has ~2.4K windows, so small
    # batches give the updates it needs (128 → 19 steps an epoch: validation HR@10 0.156 after 80 epochs)
    epochs: int = 20  # at most this many passes over the training windows
    patience: int = 0  # stop after this many epochs without a better validation NDCG@10 (0: run every epoch)
    plateau: int = 0  # halve the learning rate after this many epochs without one (0: constant)
    budget_s: float = 0.0  # stop after the epoch that passes this many seconds of training (0: no budget)
    refit_epochs: int = 0  # epochs from the kept weights over every interaction before the test target
    average_epochs: float = 0.0  # horizon of the weight average that is validated and kept (0: the raw weights)
    seed: int = 0  # initialisation and shuffling seed

    @property
    def width(self) -> int:
        """Features of an item vector and a user vector: every member's d_model side by side."""
        return self.members * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


class ItemTower(nn.Module):
    """Item vector = id embedding + projected content embedding; unseen items still get a vector."""

    def __init__(self, cfg: RetrievalConfig, content: torch.Tensor | None) -> None:
        super().__init__()
        width = cfg.width  # member i owns columns [i·d, (i+1)·d)
        self.id_emb = nn.Embedding(cfg.n_items, width, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=cfg.id_init_std)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        if content is None:
            content = torch.zeros(cfg.n_items, cfg.content_dim)
        self.register_buffer("content", content.float(), persistent=True)  # (n_items, content_dim)
        self.proj = nn.Linear(cfg.content_dim, width, bias=False) if cfg.content_dim else None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        v = self.id_emb(idx)
        if self.proj is not None:
            v = v + self.proj(self.content[idx])
        return v

    def all_items(self) -> torch.Tensor:
        """Every item's vector, (n_items, d): the whole content table projected in one product, no gather."""
        v = self.id_emb.weight
        return v + self.proj(self.content) if self.proj is not None else v


class SASRec(nn.Module):
    def __init__(self, cfg: RetrievalConfig, content: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.items = ItemTower(cfg, content)
        self.pos = nn.Embedding(cfg.max_len, width)
        self.drop = Dropout(cfg.dropout)
        # member i's blocks are [i·n_layers, (i+1)·n_layers); one member keeps the single model's layout
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.dropout) for _ in range(cfg.members * cfg.n_layers)
        )
        self.ln = nn.LayerNorm(width)  # applied to each member's slice on its own (`_norm`)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """Layer norm over each member's d features; for one member it is `self.ln` itself."""
        m, d = self.cfg.members, self.cfg.d_model
        if m == 1:
            return self.ln(x)
        y = F.layer_norm(x.unflatten(-1, (m, d)), (d,), eps=self.ln.eps)
        return (y * self.ln.weight.view(m, d) + self.ln.bias.view(m, d)).flatten(-2)

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """seq (B, T) left-padded item indices → hidden states (B, T, d). `table`: `items.all_items()` when the
        caller has it (training scores every item anyway): its rows are the inputs, so the content of the B·T
        positions is neither gathered nor projected again. Without it (the exported encoder, one user a call) the
        inputs come from the item tower row by row. `last_only`: the last position's state alone, (B, 1, d); each
        member's last block then computes its query, attention output and MLP for that position only."""
        t = seq.shape[1]
        x = self.items(seq) if table is None else table[seq]
        x = x + self.pos.weight[-t:]  # right-aligned positions: the latest item is always last
        x = self.drop(x) * (seq != 0).unsqueeze(-1)
        mask = causal_padding_mask(seq)
        layers = self.cfg.n_layers
        parts = []
        for i, h in enumerate(x.split(self.cfg.d_model, dim=-1)):  # each member's slice through its own blocks
            for j, block in enumerate(self.blocks[i * layers : (i + 1) * layers]):
                h = block(h, mask, last_only and j == layers - 1)
            parts.append(h)
        return self._norm(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))

    def user_vector(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) → (B, d): the state after the most recent item; this is what the ONNX encoder exports. Only that
        position goes through the last block (`encode`'s `last_only`): the served encoder, validation every epoch
        and the ranker's point-in-time recall features need no other."""
        return self.encode(seq, table, last_only=True)[:, -1]

    def forward(self, seq: torch.Tensor, targets: torch.Tensor | None = None, prior: torch.Tensor | None = None):
        """Without targets: (scores (B, T, n_items), None). With targets: (None, loss), the full-softmax
        cross-entropy over the non-padding target positions only (`full_softmax_loss`): the logits are most of a
        step's cost, and short histories leave many padded positions (ML-100K: 20% at length 50, 56% at 200)."""
        table = self.items.all_items()  # (n_items, m·d): the inputs' rows and the output layer (tied)
        h = self.encode(seq, table)  # (B, T, m·d)
        if targets is None:
            logits = h @ table.T
            logits[..., 0] = -1e9  # padding is never a prediction
            return logits, None
        keep = targets != 0
        seen = seen_classes(seq, targets, keep, prior) if self.cfg.mask_seen else None
        return None, full_softmax_loss(h[keep], table, targets[keep], self.cfg.members, seen)


def seen_classes(seq: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                 prior: torch.Tensor | None = None) -> torch.Tensor:
    """(N, P + T) classes (item index − 1) each kept position has seen: the `prior` items before the window, then the
    window's up to and including its input. A slot with no item (padding, or past the position) holds the position's
    own target, which the loss keeps a class, so a data set where users repeat items still learns its repeats."""
    t = seq.shape[1]
    prefix = seq.unsqueeze(1).expand(-1, t, -1).tril()  # row (b, i) holds seq[b, :i + 1], zeros after
    if prior is not None:  # (B, P) the user's items before the window (`training.sequences.window_priors`)
        prefix = torch.cat([prior.unsqueeze(1).expand(-1, t, -1), prefix], dim=-1)
    prefix = prefix[keep]
    return torch.where(prefix == 0, targets[keep].unsqueeze(1), prefix) - 1


def full_softmax_loss(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, members: int,
                      seen: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of `targets` (N,) against every real item, each member on its own slice of the
    features (its own softmax: members learn apart, only their scores add), averaged over members. h (N, m·d),
    table (n_items, m·d) with row 0 the padding, never a class. Written as logsumexp(all logits) − target logit
    (`_LogSumExp`). `seen` (N, S): classes left out of each row's softmax (`seen_classes`); the target never is."""

    def per_member(x: torch.Tensor) -> torch.Tensor:
        """(rows, m·d) → (m, rows, d), contiguous: a strided batch made `bmm` 2.6× slower."""
        return x.unflatten(-1, (members, -1)).transpose(0, 1).contiguous()

    hm = per_member(h)
    target = (hm * per_member(table[targets])).sum(-1)  # (m, N)
    classes = per_member(table[1:])  # items 1.., never padding
    if seen is None:
        return (_LogSumExp.apply(hm, classes) - target).mean()
    return (_LogSumExp.apply(hm, classes, seen, targets - 1) - target).mean()


class _LogSumExp(torch.autograd.Function):
    """logsumexp over h @ w with one exponential pass: forward keeps exp(logits − max) in the logits' own buffer,
    backward scales it into the softmax times the upstream gradient and multiplies it back through both factors.
    No (m, N, n_items) one-hot, log-softmax or zero-filled gradient buffer besides the logits (`F.cross_entropy` on
    padded logits made three, and they were a fifth of a training step on ML-100K). Seen classes are set to −inf
    and the target's logit put back, N·S writes rather than a pass over the catalogue."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, seen: torch.Tensor | None = None,
                target_class: torch.Tensor | None = None) -> torch.Tensor:
        # h (m, N, d), w (m, I, d) → (m, N); seen (N, S) and target_class (N,): classes
        # fp32 whatever the autocast around it (the GPU trains under bf16 autocast, `training.jobs.common.autocast`):
        # a softmax over the catalogue in bf16 loses the target's share, and autocast does not reach a Function's
        # backward, whose products would then mix bf16 and fp32 and fail. Autograd casts the gradients back.
        with torch.autocast(h.device.type, enabled=False):
            h, w = h.float(), w.float()
            logits = torch.bmm(h, w.transpose(1, 2))
            if seen is not None:
                m = logits.shape[0]
                kept = target_class.view(1, -1, 1).expand(m, -1, 1)
                own = logits.gather(2, kept)
                logits.scatter_(2, seen.unsqueeze(0).expand(m, -1, -1), float("-inf")).scatter_(2, kept, own)
            top = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(top).exp_()
            total = e.sum(dim=-1, keepdim=True)
        ctx.save_for_backward(h, w, e, total)
        return (total.log() + top).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w, e, total = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            p = e.mul_(grad.float().unsqueeze(-1) / total)  # softmax · upstream gradient, in the kept buffer
            return torch.bmm(p, w), torch.bmm(p.transpose(1, 2), h), None, None


# Where each member's share of a parameter lies (member i owns d_model features from i·d_model): the axis of that
# slice. `items.content` is the catalogue itself, shared; the blocks are member i's from block i·n_layers.
_MEMBER_AXIS = {"items.id_emb.weight": 1, "pos.weight": 1, "items.proj.weight": 0, "ln.weight": 0, "ln.bias": 0}
SHARED = {"items.content"}


def member_config(cfg: RetrievalConfig, count: int) -> RetrievalConfig:
    """The configuration of `count` of `cfg`'s members on their own."""
    return replace(cfg, members=count)


def member_state(state: dict[str, torch.Tensor], cfg: RetrievalConfig, first: int,
                 count: int) -> dict[str, torch.Tensor]:
    """Members [first, first + count) of a `cfg` model's state, as the state of a `count`-member model. A
    parameter this layout does not know is an error, so a new one cannot be trained by one member and lost."""
    d, layers = cfg.d_model, cfg.n_layers
    cols = slice(first * d, (first + count) * d)
    out = {}
    for name, t in state.items():
        if name.startswith("blocks."):
            _, j, rest = name.split(".", 2)
            j = int(j) - first * layers
            if 0 <= j < count * layers:
                out[f"blocks.{j}.{rest}"] = t
        elif name in _MEMBER_AXIS:
            out[name] = t[cols] if _MEMBER_AXIS[name] == 0 else t[:, cols]
        elif name in SHARED:
            out[name] = t
        else:
            raise ValueError(f"retrieval parameter {name!r} has no member layout")
    return out


def joined_state(parts: list[dict[str, torch.Tensor]], cfg: RetrievalConfig) -> dict[str, torch.Tensor]:
    """`member_state`'s inverse: the states of consecutive member groups, in order, as one model's state. The
    buffers every member shares (`SHARED`) are read from the first part; the others may leave them out."""
    layers, out, offset = cfg.n_layers, {}, 0
    for part in parts:
        own = 0
        for name, t in part.items():
            if name.startswith("blocks."):
                _, j, rest = name.split(".", 2)
                out[f"blocks.{int(j) + offset * layers}.{rest}"] = t
                own = max(own, int(j) // layers + 1)
        offset += own
    for name in parts[0]:
        if name in _MEMBER_AXIS:
            out[name] = torch.cat([p[name] for p in parts], dim=_MEMBER_AXIS[name])
        elif name in SHARED:
            out[name] = parts[0][name]
        elif not name.startswith("blocks."):
            raise ValueError(f"retrieval parameter {name!r} has no member layout")
    return out


class UserEncoder(nn.Module):
    """The serving half: sequence → user vector. Exported to ONNX for the recall stage."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model.user_vector(seq)
