"""The Llama-style decoder shared by CALM and the AR baseline (no ``transformers`` dependency).

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings -> RMSNorm -> SwiGLU,
then a final RMSNorm. The backbone maps input *vectors* ``[B, T, H]`` to hidden states; the token
table (or CALM's chunk compressor) lives in the model that owns it.

What is unusual:

* Parameter names follow the Hugging Face Llama layout (``layers.i.self_attn.q_proj`` ...), so
  reference checkpoints map onto it by prefix only.
* Rotary tables are computed in float32 from the config and cached per device as plain attributes
  (not buffers), so casting the model to bf16 never degrades them and they are never saved.
* Caches are duck-typed: anything with ``seq_len`` and ``update(layer, k, v)``. :class:`KVCache`
  grows by concatenation (simple, for evaluation code that crops and re-extends);
  :class:`StaticKVCache` is preallocated and writes in place, which is what generation uses.
  A cache that also has ``attend(layer, q, k, v, attn_mask, is_causal)`` stores and attends by
  itself (the BrierLM rollout cache does, to skip the key blocks its mask would hide).
* ``attn_mask`` is boolean (True = may attend), broadcastable to ``[B, 1, T, S]``. Left-padded
  batches pass a mask that hides pad keys; a pad query should still see itself (the diagonal) so
  that no softmax row is empty (an all-masked row gives NaN, which would leak through the cache).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from calm_core.config import ConfigModel
from calm_core.presets import BENCH_BACKBONE

__all__ = [
    "Attention",
    "Backbone",
    "BackboneConfig",
    "Cache",
    "DecoderLayer",
    "KVCache",
    "RMSNorm",
    "RotaryEmbedding",
    "StaticKVCache",
    "SwiGLU",
    "causal_mask",
]


class BackboneConfig(ConfigModel):
    """Shape of the decoder stack; the defaults are the bench shape (``presets.BENCH_BACKBONE``)."""

    hidden_size: int = Field(BENCH_BACKBONE["hidden_size"], gt=0, description="Model width H.")
    intermediate_size: int = Field(
        BENCH_BACKBONE["intermediate_size"], gt=0, description="SwiGLU inner width."
    )
    num_layers: int = Field(
        BENCH_BACKBONE["num_layers"], gt=0, description="Number of decoder blocks."
    )
    num_heads: int = Field(
        BENCH_BACKBONE["num_heads"],
        gt=0,
        description="Query heads; hidden_size % num_heads == 0.",
    )
    num_kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention); None = num_heads."
    )
    rope_theta: float = Field(10000.0, gt=0, description="Rotary embedding base.")
    rms_norm_eps: float = Field(1e-6, gt=0, description="RMSNorm epsilon.")
    max_positions: int = Field(
        2048, gt=0, description="Context length in backbone positions (chunks for CALM)."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> BackboneConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"head_dim = hidden_size / num_heads = {self.hidden_size // self.num_heads} must "
                "be even for rotary embeddings"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# ------------------------------------------------------------------------------------------ caches
@runtime_checkable
class Cache(Protocol):
    """What attention needs from a KV cache."""

    @property
    def seq_len(self) -> int:
        """Positions already stored (before the current call)."""
        ...

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v [B, kv_heads, T_new, head_dim]``; return all keys/values to attend over."""
        ...


class KVCache:
    """A growing cache: each update concatenates (simple; use :class:`StaticKVCache` to generate).

    ``seq_len`` advances when the last layer has been updated, so one backbone call appends
    ``T_new`` positions.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = int(num_layers)
        self._k: list[Tensor | None] = [None] * self.num_layers
        self._v: list[Tensor | None] = [None] * self.num_layers
        self._len = 0

    @property
    def seq_len(self) -> int:
        return self._len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        old_k, old_v = self._k[layer], self._v[layer]
        k_all = k if old_k is None else torch.cat([old_k, k], dim=2)
        v_all = v if old_v is None else torch.cat([old_v, v], dim=2)
        self._k[layer], self._v[layer] = k_all, v_all
        if layer == self.num_layers - 1:
            self._len = int(k_all.shape[2])
        return k_all, v_all

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions."""
        if not 0 <= length <= self._len:
            raise ValueError(f"cannot crop a cache of {self._len} positions to {length}")
        for i in range(self.num_layers):
            k, v = self._k[i], self._v[i]
            if k is not None and v is not None:
                self._k[i], self._v[i] = k[:, :, :length], v[:, :, :length]
        self._len = length


class StaticKVCache:
    """A preallocated cache ``[layers, B, kv_heads, capacity, head_dim]`` written in place.

    No per-step concatenation: ``update`` copies the new positions into the buffer and returns a
    view of the filled prefix. ``crop`` rewinds (for branching evaluation), ``reset`` empties it.
    """

    def __init__(
        self,
        config: BackboneConfig,
        batch_size: int,
        capacity: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        cap = config.max_positions if capacity is None else int(capacity)
        if cap < 1 or batch_size < 1:
            raise ValueError(f"capacity ({cap}) and batch_size ({batch_size}) must be positive")
        shape = (config.num_layers, batch_size, config.kv_heads, cap, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_layers = config.num_layers
        self.capacity = cap
        self._len = 0

    @classmethod
    def for_module(
        cls, backbone: Backbone, batch_size: int, capacity: int | None = None
    ) -> StaticKVCache:
        """A cache on the backbone's device and dtype."""
        p = next(backbone.parameters())
        return cls(backbone.config, batch_size, capacity, device=p.device, dtype=p.dtype)

    @property
    def seq_len(self) -> int:
        return self._len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start = self._len
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(
                f"KV cache overflow: {end} positions needed but the cache holds {self.capacity}; "
                "allocate a larger capacity (or shorten the prompt / max_new_tokens)"
            )
        self.k[layer, :, :, start:end].copy_(k)
        self.v[layer, :, :, start:end].copy_(v)
        if layer == self.num_layers - 1:
            self._len = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        if not 0 <= length <= self._len:
            raise ValueError(f"cannot crop a cache of {self._len} positions to {length}")
        self._len = length

    def reset(self) -> None:
        self._len = 0


# ------------------------------------------------------------------------------------------ layers
class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32, returned in the input dtype."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return self.weight * y.to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` without biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class RotaryEmbedding(nn.Module):
    """Rotate-half rotary embeddings; float32 tables cached per device, gathered by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        table = self._tables.get(device)
        if table is None:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
            inv_freq = 1.0 / (self.theta**exponents)
            pos = torch.arange(self.max_positions, dtype=torch.float32)
            freqs = pos[:, None] * inv_freq[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            table = (emb.cos().to(device), emb.sin().to(device))
            self._tables[device] = table
        return table

    def forward(
        self, positions: Tensor | slice, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``positions [T]``, ``[B, T]`` or a slice -> ``cos, sin`` broadcastable to
        ``[B, heads, T, d]`` (a slice is a view of the table: no gather on the fast path)."""
        cos, sin = self._table(device)
        cos, sin = cos[positions].to(dtype), sin[positions].to(dtype)
        if isinstance(positions, slice):
            return cos, sin
        if positions.dim() == 2:  # [B, T, d] -> [B, 1, T, d]
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_mask(query_len: int, key_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[T, S]``: query ``i`` (absolute position ``S - T + i``) sees keys ``<=`` it."""
    q = torch.arange(query_len, device=device)[:, None] + (key_len - query_len)
    return torch.arange(key_len, device=device)[None, :] <= q


class Attention(nn.Module):
    """Grouped-query causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, config: BackboneConfig, layer_idx: int) -> None:
        super().__init__()
        h, hd = config.hidden_size, config.head_dim
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.head_dim = hd
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(h, config.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.num_heads * hd, h, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: Cache | None,
        attn_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # rotate queries and keys in one pass (fewer small ops per decode step)
        qk = _rotate(torch.cat([q, k], dim=2).transpose(1, 2), cos, sin)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        attend = getattr(cache, "attend", None)
        if attend is not None:  # the cache computes attention itself (e.g. Brier rollouts)
            out: Tensor = attend(self.layer_idx, q, k, v, attn_mask, is_causal)
        else:
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=is_causal,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
        y: Tensor = self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        return y


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, config: BackboneConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: Cache | None,
        attn_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, attn_mask, is_causal)
        out: Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class Backbone(nn.Module):
    """The decoder stack: ``x [B, T, H] -> hidden [B, T, H]`` (final RMSNorm applied)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_positions, config.rope_theta)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Llama-style init: normal(0, std) linears, unit norms; output projections scaled."""
        scaled = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=scaled)
            else:
                nn.init.normal_(p, std=std)

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        cache: Cache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Run the stack.

        Args:
            x: input vectors ``[B, T, H]``.
            positions: ``[T]`` or ``[B, T]`` rotary positions; default ``past + arange(T)`` where
                ``past`` is ``cache.seq_len`` (0 without a cache).
            cache: a KV cache (:class:`StaticKVCache`, :class:`KVCache` or any :class:`Cache`).
            attn_mask: boolean, broadcastable to ``[B, 1, T, past + T]``, True = may attend;
                default causal (offset by ``past``).

        Returns:
            Hidden states ``[B, T, H]`` after the final RMSNorm.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"backbone input must be [B, T, {self.config.hidden_size}], got {tuple(x.shape)}"
            )
        T = x.shape[1]
        past = cache.seq_len if cache is not None else 0
        if past + T > self.config.max_positions:
            raise ValueError(
                f"sequence of {past + T} positions exceeds the context length max_positions="
                f"{self.config.max_positions}"
            )
        is_causal = False
        if attn_mask is None:
            if past == 0:
                is_causal = T > 1
            elif T > 1:
                attn_mask = causal_mask(T, past + T, x.device)
        where: Tensor | slice = slice(past, past + T) if positions is None else positions
        cos, sin = self.rotary(where, x.dtype, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, attn_mask, is_causal)
        return self.norm(x)  # type: ignore[no-any-return]
