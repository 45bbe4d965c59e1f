"""The Qwen3 decoder stack the talker and the code predictor share: RMSNorm, (M-)RoPE, a static KV cache
addressed by column, GQA attention, SwiGLU MLP.

In the spirit of gpt-fast: plain modules whose parameter names match the official checkpoint keys
(`...layers.0.self_attn.q_proj.weight`), prefill and decode as the same `run` over different columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32, cast back, then scale: the official order (matters in bf16); F.rms_norm is
        # one fused kernel on CUDA instead of five (x * rsqrt(mean(x^2) + eps); equal on the CPU)
        x = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * x


class Rotary(nn.Module):
    """Rotary embedding; with `sections` it is M-RoPE (3 position axes: time, height, width).

    Frequency j of the half head takes its angle from axis `axis_of[j]`. Qwen3-TTS feeds the same
    position to all three axes, so the result equals 1-D RoPE, but the layout is kept faithful.
    """

    def __init__(
        self, head_dim: int, theta: float, sections: list[int] | None = None, interleaved: bool = False
    ):
        super().__init__()
        self.head_dim, self.theta, self.sections, self.interleaved = head_dim, theta, sections, interleaved
        self.reset_buffers()

    def reset_buffers(self, device=None):
        """(Re)compute the fp32 tables; called after building the model on the meta device."""
        head_dim, half = self.head_dim, self.head_dim // 2
        cpu = torch.device("cpu")  # explicit: this also runs under a meta-device context
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=cpu).float() / head_dim
        inv_freq = 1.0 / (self.theta**exponents)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        axis_of = torch.zeros(half, dtype=torch.long, device=cpu)
        if self.sections:
            if self.interleaved:
                for axis, n in enumerate(self.sections[1:], start=1):
                    idx = torch.arange(axis, n * 3, 3, device=cpu)
                    axis_of[idx[idx < half]] = axis
            else:
                start = 0
                for i, n in enumerate(self.sections):
                    axis_of[start : start + n] = i % 3
                    start += n
        self.register_buffer("axis_of", axis_of.to(device), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [B, T] or [3, B, T] -> cos, sin [B, T, head_dim] in `dtype` (computed in fp32)."""
        if positions.ndim == 2:
            positions = positions.unsqueeze(0).expand(3, -1, -1)
        # angles per axis [3, B, T, half], then pick each frequency's axis
        ang = positions.float().unsqueeze(-1) * self.inv_freq.float()
        idx = self.axis_of.view(1, 1, 1, -1).expand(1, ang.shape[1], ang.shape[2], -1)
        ang = ang.gather(0, idx).squeeze(0)
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class KVCache:
    """Static, preallocated keys and values [B, kv_heads, max_len, head_dim], written by column.

    A view (some rows, the first `span` columns) is again a KVCache over the same storage: the engine
    prefills one slot's rows and decodes over a bounded column span without copying."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    @classmethod
    def empty(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype, device) -> KVCache:
        shape = (batch, kv_heads, max_len, head_dim)
        k = torch.zeros(shape, dtype=dtype, device=device)
        return cls(k, torch.zeros_like(k))

    def view(self, rows: slice, span: int | None = None) -> KVCache:
        span = span or self.k.shape[2]
        return KVCache(self.k[rows, :, :span], self.v[rows, :, :span])

    @property
    def span(self) -> int:
        return self.k.shape[2]

    def write(self, cols: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """cols [B, T] -> store k, v [B, kv_heads, T, D] at those columns; return the whole cache."""
        idx = cols[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k.scatter_(2, idx, k)
        self.v.scatter_(2, idx, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float, bias: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x, cos, sin, cols, mask, cache: KVCache) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        # RoPE: x * cos + rotate_half(x) * sin, with rotate_half(x) * sin == roll(x) * signed_sin
        # (`sin` arrives with its first half negated, once per pass instead of once per layer)
        half = self.head_dim // 2
        q = q * cos + q.roll(half, dims=-1) * sin
        k = k * cos + k.roll(half, dims=-1) * sin
        k, v = cache.write(cols, k, v)
        rep = self.heads // self.kv_heads
        if rep > 1:
            # GQA without copying the cache: the `rep` query heads of each kv head become extra query
            # rows of that head (query head h uses kv head h // rep, as in the official repeat_kv); the
            # mask comes already repeated the same way (see Decoder.run)
            q = q.reshape(B, self.kv_heads, rep * T, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.reshape(B, self.heads, T, self.head_dim)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden, inter, heads, kv_heads, head_dim, eps, bias):
        super().__init__()
        self.self_attn = Attention(hidden, heads, kv_heads, head_dim, eps, bias)
        self.mlp = MLP(hidden, inter)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x, cos, sin, cols, mask, cache: KVCache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cols, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(cols: torch.Tensor, start: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean mask [B, 1, T, max_len]: a query at column c sees keys in [start, c].

    Rows left-padded to `start` see only themselves while in the padding, so no row is ever fully
    masked (that would put NaN into the cache of later layers)."""
    keys = torch.arange(max_len, device=cols.device)
    q = cols.unsqueeze(-1)
    visible = (keys <= q) & (keys >= start.view(-1, 1, 1))
    visible |= keys == q
    return visible.unsqueeze(1)


class Decoder(nn.Module):
    """A stack of decoder layers with final norm; `codec_embedding` lives here as in the checkpoint."""

    def __init__(self, n_layers, hidden, inter, heads, kv_heads, head_dim, eps, bias):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(hidden, inter, heads, kv_heads, head_dim, eps, bias) for _ in range(n_layers)
        )
        self.norm = RMSNorm(hidden, eps)
        self.kv_heads, self.head_dim = kv_heads, head_dim

    def new_caches(self, batch: int, max_len: int, dtype=None, device=None, stacked=False) -> list[KVCache]:
        """One zeroed cache per layer; stacked: views of one [layers, ...] tensor each for keys and values
        (one kernel then reaches every layer's cache at a fixed stride: `kernels.decoder_step`)."""
        p = self.norm.weight
        dtype, device = dtype or p.dtype, device or p.device
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        if stacked:
            k = torch.zeros(len(self.layers), *shape, dtype=dtype, device=device)
            v = torch.zeros_like(k)
            return [KVCache(k[i], v[i]) for i in range(len(self.layers))]
        return [KVCache.empty(*shape, dtype, device) for _ in self.layers]

    def run(self, x, positions, cols, start, rotary: Rotary, caches: list[KVCache]) -> torch.Tensor:
        """x [B, T, D] at cache columns `cols` [B, T] with rotary `positions`; rows see keys from `start`.
        Caches are passed in, never stored on the module, so one model serves many threads."""
        cos, sin, mask = self.tables(positions, cols, start, caches[0].span, rotary, x.dtype)
        return self.run_with(x, cols, cos, sin, mask, caches)

    @staticmethod
    def tables(positions, cols, start, span: int, rotary: Rotary, dtype):
        """RoPE cos / sign-folded sin [B, 1, T, head_dim] and the mask [B, 1, T, span] of a pass."""
        cos, sin = rotary(positions, dtype)
        half = sin.shape[-1] // 2
        cos, sin = cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        return cos, sin, attention_mask(cols, start, span)

    def run_with(self, x, cols, cos, sin, mask, caches: list[KVCache]) -> torch.Tensor:
        attn = self.layers[0].self_attn
        rep = attn.heads // attn.kv_heads
        if rep > 1:  # one mask row per grouped query head (see Attention.forward)
            B, _, T, S = mask.shape
            mask = mask.unsqueeze(2).expand(-1, -1, rep, -1, -1).reshape(B, 1, rep * T, S)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cos, sin, cols, mask, cache)
        return self.norm(x)
