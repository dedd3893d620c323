"""A Llama decoder in plain torch, for serving the copy LM without transformers.

The Copy replica only decodes, on one thread, from merged weights. Through transformers its process imports the
library's whole modelling stack (accelerate with boto3, torch._dynamo with sympy, scipy: ~0.15 GB) and each forward
builds masks and caches in general form; on the CPU `scaled_dot_product_attention` took ~0.55 ms a layer for ten
1-token rows. Here: the query/key/value and gate/up projections each one matmul over concatenated weights, the
attention one grouped matmul per key/value head, the mask built once per forward, and on the CPU the projections in
oneDNN's packed weight layout (`LeanLlama.pack`). It answers the calls the
decoder makes (`core.copy_decoding`) in the same form as a transformers causal LM (`model(...).logits`,
`get_decoder()(...).last_hidden_state`, `get_output_embeddings()`), so training and evaluation keep transformers'
model and serving this one. Llama-family configs only (`supports`): rotary embeddings of the default type, no
biases, SiLU; anything else is served through transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    rope_theta: float
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> LlamaShape:
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        heads = config["num_attention_heads"]
        return cls(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab=config["vocab_size"],
                   eps=config["rms_norm_eps"], rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
                   tied=bool(config.get("tie_word_embeddings", False)))


def supports(config: dict) -> str | None:
    """Why this decoder cannot run a model of this config (None: it can)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    checks = {
        "model_type": config.get("model_type") == "llama",
        "hidden_act": config.get("hidden_act", "silu") == "silu",
        "attention_bias": not config.get("attention_bias", False),
        "mlp_bias": not config.get("mlp_bias", False),
        "rope type": rope.get("rope_type", rope.get("type", "default")) == "default",
        "pretraining_tp": config.get("pretraining_tp", 1) == 1,
    }
    bad = [k for k, ok in checks.items() if not ok]
    return f"{', '.join(bad)} not as this decoder computes" if bad else None


class KVCache:
    """Per layer (keys, values), each (rows, kv_heads, positions, head_dim); grown by concatenation (buffers that
    double when full were 2 % slower: attention over their strided views). The row operations the decoder uses on
    transformers' `DynamicCache`, under the same names."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def _each(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`fn` on every layer's keys and values, layer by layer: the old and new caches are never both held whole."""
        for i in range(len(self.keys)):
            if self.keys[i] is not None:
                self.keys[i], self.values[i] = fn(self.keys[i]), fn(self.values[i])

    def batch_repeat_interleave(self, n: int) -> None:
        self._each(lambda t: t.repeat_interleave(n, dim=0))

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self._each(lambda t: t[rows])

    def gather_positions(self, index: torch.Tensor) -> None:
        """Keep, per row, the cache slots `index` (rows, slots) names, in that order: the decoder drops the slots of
        rejected draft tokens with it (`core.copy_decoding.compact`). Keys carry their rotary position already, so
        a slot may move."""
        self._each(lambda t: t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: the variance in fp32, the weight applied in the input's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


PACK_ROWS = 16  # the row count oneDNN picks its weight layout for: decoding steps run ~10-130 rows


def _packed_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class _Layer(nn.Module):
    def __init__(self, s: LlamaShape, qkv: torch.Tensor, o: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                 norm1: torch.Tensor, norm2: torch.Tensor) -> None:
        super().__init__()
        self.s = s
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.split = (q, kv, kv)
        if qkv.shape != (q + 2 * kv, s.hidden) or gate_up.shape != (2 * s.intermediate, s.hidden):
            raise ValueError(f"layer weights {tuple(qkv.shape)}, {tuple(gate_up.shape)} do not fit the config")
        self.qkv, self.o, self.gate_up, self.down = _frozen(qkv), _frozen(o), _frozen(gate_up), _frozen(down)
        self.norm1, self.norm2 = _frozen(norm1), _frozen(norm2)
        self.linear = torch.nn.functional.linear

    def pack(self) -> None:
        """The four projections in oneDNN's own weight layout (`_packed_linear`)."""
        for name in ("qkv", "o", "gate_up", "down"):
            packed = torch.ops.mkldnn._reorder_linear_weight(getattr(self, name).data, PACK_ROWS)
            delattr(self, name)
            setattr(self, name, packed)
        self.linear = _packed_linear

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None, index: int, live: tuple[torch.Tensor, int, int] | None = None) -> torch.Tensor:
        """x (rows, positions, hidden); with `live` (index, rows, positions): (live positions, hidden), the live
        positions of a (rows, positions) pass, which only the attention sees laid out by row."""
        s = self.s
        qkv = self.linear(_rms(x, self.norm1, s.eps), self.qkv)
        if live is not None:
            at, b, w = live
            qkv = qkv.new_zeros(b * w, qkv.shape[-1]).index_copy_(0, at, qkv).view(b, w, -1)
        else:
            b, w = x.shape[:2]
        q, k, v = qkv.split(self.split, dim=-1)
        q = _rotate(q.view(b, w, s.heads, s.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(b, w, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, w, s.kv_heads, s.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(index, k, v)
        # Each key/value head's query heads as one matrix (transformers repeats the keys and values per head).
        g = s.heads // s.kv_heads
        scores = torch.matmul(q.reshape(b, s.kv_heads, g * w, s.head_dim), k.transpose(2, 3))
        scores = scores.view(b, s.heads, w, -1) * (1 / math.sqrt(s.head_dim)) + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(b, s.kv_heads, g * w, -1), v).view(b, s.heads, w, s.head_dim)
        out = out.transpose(1, 2).reshape(b, w, -1)
        if live is not None:
            out = out.view(b * w, -1).index_select(0, live[0])
        x = x + self.linear(out, self.o)
        gate, up = self.linear(_rms(x, self.norm2, s.eps), self.gate_up).chunk(2, dim=-1)
        return x + self.linear(torch.nn.functional.silu(gate) * up, self.down)


class LeanDecoder(nn.Module):
    """The decoder stack (embedding → layers → final norm), called as transformers' `model.model`."""

    def __init__(self, s: LlamaShape, embed: torch.Tensor, layers: list[_Layer], norm: torch.Tensor) -> None:
        super().__init__()
        self.s = s
        self.embed, self.norm = _frozen(embed), _frozen(norm)
        self.layers = nn.ModuleList(layers)
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, device=embed.device).float() / s.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = True, live: torch.Tensor | None = None) -> SimpleNamespace:
        """`live` (rows, positions) bool: the positions whose hidden states are wanted; the projections and the
        MLP (most of a pass's arithmetic) skip the others (a batch's padding), the attention sees every position
        (`LeanLlama.skips_padding`). The hidden states of the others are zeros."""
        b, w = input_ids.shape
        past = past_key_values.length() if past_key_values is not None else 0
        at = live.flatten().nonzero().squeeze(1) if live is not None else None
        # One aten::embedding per pass, as transformers' models: the bench's profile counts passes by it.
        dev = input_ids.device
        x = torch.nn.functional.embedding(input_ids if at is None else input_ids.flatten()[at], self.embed)
        if position_ids is None:
            position_ids = torch.arange(past, past + w, device=dev)[None].expand(b, w)
        freqs = position_ids[..., None].float() * self.inv_freq  # (rows, positions, head_dim / 2), in fp32
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        # Key t is visible to query j when it is not masked out and not after it (keys past + j and before).
        visible = torch.arange(past + w, device=dev)[None, :] <= (past + torch.arange(w, device=dev))[:, None]
        visible = visible[None]
        if attention_mask is not None:
            visible = visible & attention_mask[:, None, :].bool()
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=dev).masked_fill_(~visible, torch.finfo(x.dtype).min)
        mask = mask[:, None]  # over heads
        cache = past_key_values if use_cache else None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, None if at is None else (at, b, w))
        x = _rms(x, self.norm, self.s.eps)
        if at is not None:
            x = x.new_zeros(b * w, x.shape[-1]).index_copy_(0, at, x).view(b, w, -1)
        return SimpleNamespace(last_hidden_state=x, past_key_values=cache)


class _OutputEmbedding(nn.Module):
    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None


class LeanLlama(nn.Module):
    """A causal LM over `LeanDecoder`: logits = last hidden state × the output embedding. `skips_padding`: a pass
    may name its live positions (`LeanDecoder.forward`'s `live`) and computes only them."""

    skips_padding = True

    def __init__(self, config: dict, decoder: LeanDecoder, head: nn.Parameter) -> None:
        super().__init__()
        self.model = decoder
        self.lm_head = _OutputEmbedding(head)
        self.config = SimpleNamespace(**config)

    @property
    def device(self) -> torch.device:
        return self.model.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed.dtype

    def get_decoder(self) -> LeanDecoder:
        return self.model

    def get_output_embeddings(self) -> _OutputEmbedding:
        return self.lm_head

    def pack(self) -> bool:
        """On the CPU, the layers' projections in oneDNN's blocked weight layout, as PyTorch's inductor freezes CPU
        linears (torch/_inductor/fx_passes/mkldnn_fusion.py): `F.linear` reorders a plain weight on every call, which
        for a decoding step's ~10 rows was most of the matmul (3072 x 576 in bf16: 263 us plain, 111 packed; the
        same numbers; in fp32 1.3-2.5x faster than MKL's sgemm, equal to its rounding). Checked on one layer against
        the plain product first; False (nothing changed) where this PyTorch build or device has no oneDNN."""
        if self.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return False
        layer = self.model.layers[0]
        x = torch.randn(3, 2, self.model.s.hidden, generator=torch.Generator().manual_seed(0)).to(self.dtype)
        try:
            want = torch.nn.functional.linear(x, layer.qkv).float()
            got = _packed_linear(x, torch.ops.mkldnn._reorder_linear_weight(layer.qkv.data, PACK_ROWS)).float()
        except RuntimeError:
            return False
        if (got - want).abs().max() > (1e-4 if self.dtype == torch.float32 else 1e-2) * want.abs().max():
            return False
        for layer in self.model.layers:
            layer.pack()
        return True

    def new_cache(self) -> KVCache:
        return KVCache(self.model.s.layers)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int | torch.Tensor = 0, **kw) -> SimpleNamespace:
        hidden = self.model(input_ids, **kw).last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SimpleNamespace(logits=torch.nn.functional.linear(hidden, self.lm_head.weight))

    @classmethod
    def from_weights(cls, config: dict, weights: dict[str, torch.Tensor]) -> LeanLlama:
        """From a transformers Llama checkpoint's tensors (keys as `LlamaForCausalLM.state_dict`, already in the
        dtype to serve); each is consumed (popped) as it is placed, so peak memory stays one model."""
        why = supports(config)
        if why:
            raise ValueError(f"not a plain Llama: {why}")
        s = LlamaShape.from_config(config)

        def take(key: str) -> torch.Tensor:
            if key not in weights:
                raise ValueError(f"the checkpoint has no {key}")
            return weights.pop(key)

        layers = []
        for i in range(s.layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            layers.append(_Layer(s, qkv, take(p + "self_attn.o_proj.weight"), gate_up, take(p + "mlp.down_proj.weight"),
                                 take(p + "input_layernorm.weight"), take(p + "post_attention_layernorm.weight")))
        decoder = LeanDecoder(s, take("model.embed_tokens.weight"), layers, take("model.norm.weight"))
        head = decoder.embed if s.tied else _frozen(take("lm_head.weight"))
        weights.pop("lm_head.weight", None)  # a tied checkpoint may still carry it
        model = cls(config, decoder, head)
        if weights:
            raise ValueError(f"weights this decoder does not use: {sorted(weights)[:3]}")
        return model.eval()


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
