"""The talker (Qwen3 decoder with M-RoPE, predicts codebook 0) and the code predictor (codebooks 1..15).

One readable file in the spirit of gpt-fast: plain modules whose parameter names match the official
checkpoint keys (`talker.model.layers.0.self_attn.q_proj.weight`, ...), a static KV cache addressed by
column, and prefill/decode as the same `forward` over different column ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utter_tts.model.config import CodePredictorConfig, TalkerConfig


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

    def new_caches(self, batch: int, max_len: int, dtype=None, device=None) -> list[KVCache]:
        p = self.norm.weight
        dtype, device = dtype or p.dtype, device or p.device
        shape = (batch, self.kv_heads, max_len, self.head_dim)
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


class TalkerModel(Decoder):
    def __init__(self, cfg: TalkerConfig):
        super().__init__(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
            cfg.attention_bias,
        )
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class CodePredictorModel(Decoder):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int):
        super().__init__(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
            cfg.attention_bias,
        )
        # embeddings of codebooks 1..15 are talker-width: they are summed into the talker's input
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, embedding_dim) for _ in range(cfg.num_code_groups - 1)
        )


class TextProjection(nn.Module):
    """Maps text embeddings (text_hidden_size) to the talker width: fc1 -> SiLU -> fc2, both biased."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x):
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class CodePredictor(nn.Module):
    """Predicts codebooks 1..15 of a frame from the talker's hidden state and codebook 0."""

    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int):
        super().__init__()
        self.cfg = cfg
        self.model = CodePredictorModel(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        if cfg.hidden_size != talker_hidden:
            self.small_to_mtp_projection = nn.Linear(talker_hidden, cfg.hidden_size, bias=True)
        else:
            self.small_to_mtp_projection = nn.Identity()
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    @property
    def num_steps(self) -> int:
        return self.cfg.num_code_groups - 1

    def new_caches(self, batch: int, dtype=None, device=None) -> list[KVCache]:
        return self.model.new_caches(batch, self.cfg.num_code_groups, dtype, device)

    def step_tables(self, batch: int, device, dtype) -> tuple[torch.Tensor, ...]:
        """Columns, RoPE tables and masks of every position of the predictor's short cache, built once
        per frame and sliced by each of its 15 steps (instead of rebuilt at every step)."""
        n = self.cfg.num_code_groups
        cols = torch.arange(n, device=device).expand(batch, n)
        start = torch.zeros(batch, dtype=torch.long, device=device)
        return (cols, *self.model.tables(cols, cols, start, n, self.rotary, dtype))

    def step(self, x: torch.Tensor, col: int, caches: list[KVCache], tables=None) -> torch.Tensor:
        """Run embeddings x [B, T, talker_hidden] at columns col..col+T-1; return the last hidden [B, D]."""
        B, T, _ = x.shape
        x = self.small_to_mtp_projection(x)
        if tables is None:
            tables = self.step_tables(B, x.device, x.dtype)
        cols, cos, sin, mask = tables
        end = col + T
        h = self.model.run_with(
            x, cols[:, col:end], cos[:, :, col:end], sin[:, :, col:end], mask[:, :, col:end], caches
        )
        return h[:, -1]

    def embed(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """Embedding of codebook `codebook` (1..15) codes [B] -> [B, talker_hidden]."""
        return self.model.codec_embedding[codebook - 1](codes)


@dataclass
class TalkerState:
    """Per-batch bookkeeping of the talker's static cache: rows are left-padded to a common column."""

    start: torch.Tensor  # [B] first real column of each row
    next_col: int  # column the next decode step writes
    caches: list[KVCache]  # talker
    predictor_caches: list[KVCache]


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        self.model = TalkerModel(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor, cfg.hidden_size)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.mrope_interleaved)

    def text_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.model.text_embedding(ids))

    def codec_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.codec_embedding(ids)

    def frame_embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the 16 codebook embeddings of frames codes [..., 16] -> [..., hidden]."""
        total = self.codec_embed(codes[..., 0])
        for i in range(1, codes.shape[-1]):
            total = total + self.code_predictor.embed(i, codes[..., i])
        return total

    def prefill(
        self, embeds: torch.Tensor, lengths: torch.Tensor, max_len: int
    ) -> tuple[torch.Tensor, TalkerState]:
        """embeds [B, L, H] left-padded (row b's prompt occupies the last lengths[b] columns), in fresh
        caches of `max_len` columns. Returns the last hidden state [B, H] and the state to decode with."""
        B, L, _ = embeds.shape
        caches = self.model.new_caches(B, max_len, embeds.dtype, embeds.device)
        start = (L - lengths).to(embeds.device)
        cols = torch.arange(L, device=embeds.device).expand(B, L)
        positions = (cols - start[:, None]).clamp(min=0)
        # the official code gives padding columns position 1; they are masked out, so any value works
        h = self.model.run(embeds, positions, cols, start, self.rotary, caches)
        cp_caches = self.code_predictor.new_caches(B, embeds.dtype, embeds.device)
        return h[:, -1], TalkerState(start=start, next_col=L, caches=caches, predictor_caches=cp_caches)

    def decode(self, embeds: torch.Tensor, state: TalkerState) -> torch.Tensor:
        """One step: embeds [B, H] -> hidden [B, H]."""
        B = embeds.shape[0]
        cols = torch.full((B, 1), state.next_col, dtype=torch.long, device=embeds.device)
        positions = cols - state.start[:, None]
        h = self.model.run(embeds[:, None], positions, cols, state.start, self.rotary, state.caches)
        state.next_col += 1
        return h[:, -1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden)
