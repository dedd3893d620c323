"""Pre-norm causal self-attention blocks shared by the sequence models.

Written out (no nn.MultiheadAttention / SDPA) so ONNX export is plain MatMul/Softmax on every runtime.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """`nn.Dropout`'s function, its mask drawn as uniform ≥ p: on the CPU `bernoulli_`, what `nn.Dropout` draws
    with, was 18 % of a retrieval training step; the uniform draw and compare cost half of it with backward
    (README, measurement log). Identity in eval mode, so the exported graphs do not change."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.scale = math.sqrt(d_model // n_heads)  # a Python float: ONNX tracing keeps it a constant
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, d) → (B, T, d); `last_only`: the last position's output alone, (B, 1, d), every position still
        a key and a value (its query, and the rest of the block after it, computed for that one position)."""
        b, t, d = x.shape  # (B, T, d)
        if last_only:
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, -1:], w[:d], bias[:d])
            k, v = F.linear(x, w[d:], bias[d:]).split(d, dim=-1)
            mask = mask[..., -1:, :]
        else:
            q, k, v = self.qkv(x).split(d, dim=-1)
        h, hd, tq = self.n_heads, d // self.n_heads, q.shape[1]
        q = q.view(b, tq, h, hd).transpose(1, 2)  # (B, h, Tq, hd)
        k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (k, v))  # (B, h, T, hd)
        att = (q @ k.transpose(-2, -1)) / self.scale  # (B, h, Tq, T)
        att = att.masked_fill(~mask, -1e9).softmax(dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, tq, d)
        return self.out(y)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), Dropout(dropout), nn.Linear(4 * d_model, d_model)
        )
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """`last_only`: the block's output at the last position alone (`SelfAttention`), (B, 1, d)."""
        a = self.attn(self.ln1(x), mask, last_only)
        x = (x[:, -1:] if last_only else x) + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x)))


def causal_padding_mask(seq: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: attend to earlier non-padding positions; every position sees itself (no NaN rows)."""
    idx = torch.arange(seq.shape[1], device=seq.device)  # comparisons, not tril/eye: both export to every ORT
    causal = idx[None, :] <= idx[:, None]  # (T, T)
    keys = (seq != 0)[:, None, None, :]  # (B, 1, 1, T)
    eye = idx[None, :] == idx[:, None]
    return (causal & keys) | eye
