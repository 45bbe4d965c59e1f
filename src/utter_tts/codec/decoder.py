"""Decoder half of the 12 Hz speech tokenizer: codes to 24 kHz audio, causal end to end.

Every layer that looks back in time (causal convolutions, the windowed transformer) keeps its left
context in a small typed state (as Kyutai's Mimi does), made by `init_state(batch)`. There is one code
path: a one-shot decode is a streamed decode from a fresh state, and a stream is the same call repeated
with the state it left behind. States are plain tensors with the batch first, so the states of many
independent streams stack into one batch and split back (`stack_states`, `split_state`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utter_tts.codec.encoder import ACTIVATIONS, LayerScale, apply_rope, rope_cos_sin
from utter_tts.device import empty_like_layout, env_choice
from utter_tts.model.config import pick_fields
from utter_tts.model.layers import RMSNorm


@dataclass
class DecoderConfig:
    """`decoder_config` of speech_tokenizer/config.json."""

    codebook_size: int = 2048
    codebook_dim: int = 512
    hidden_size: int = 1024
    latent_dim: int = 1024
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int | None = None
    attention_bias: bool = False
    sliding_window: int = 72
    intermediate_size: int = 3072
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    num_hidden_layers: int = 8
    num_quantizers: int = 16
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 3])
    upsampling_ratios: list[int] = field(default_factory=lambda: [2, 2])
    decoder_dim: int = 1536

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def total_upsample(self) -> int:
        return math.prod(self.upsample_rates) * math.prod(self.upsampling_ratios)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DecoderConfig:
        return cls(**pick_fields(cls, raw))


# --- streaming states ------------------------------------------------------------------------------------


@dataclass
class ConvState:
    """A causal (or transposed) convolution's left context: its last inputs [B, C, n]."""

    inputs: torch.Tensor


@dataclass
class ResidualUnitState:
    conv1: ConvState
    conv2: ConvState


@dataclass
class DecoderBlockState:
    upsample: ConvState
    units: list[ResidualUnitState]


@dataclass
class AttentionState:
    """The window-1 keys and values before the next frame [B, kv_heads, window-1, head_dim] (zeros, and
    masked, before the stream's start: every stream's state has the same shape)."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class TransformerState:
    frames: torch.Tensor  # [B] frames decoded so far: positions continue from here, per row
    layers: list[AttentionState]


@dataclass
class UpsampleState:
    conv: ConvState
    convnext: ConvState


@dataclass
class DecoderState:
    """Everything the decoder needs to continue a batch of streams."""

    pre_conv: ConvState
    transformer: TransformerState
    upsample: list[UpsampleState]
    first_conv: ConvState
    blocks: list[DecoderBlockState]
    last_conv: ConvState


def map_states(fn: Callable[..., torch.Tensor], *states):
    """Apply `fn` to the matching tensors of states of one shape (dataclasses, lists, tensors)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return fn(*states)
    if isinstance(first, list):
        return [map_states(fn, *items) for items in zip(*states)]
    return type(first)(
        **{f.name: map_states(fn, *(getattr(s, f.name) for s in states)) for f in dataclasses.fields(first)}
    )


def stack_states(states: list[DecoderState]) -> DecoderState:
    """One state for a batch made of the given streams' states (each of batch 1 or more), in order."""
    return map_states(lambda *ts: torch.cat(ts), *states)


def split_state(state: DecoderState) -> list[DecoderState]:
    """The batch-1 states of a batch's streams (views; `stack_states` undoes it)."""
    n = state.transformer.frames.shape[0]
    return [map_states(lambda t, i=i: t[i : i + 1], state) for i in range(n)]


# --- causal building blocks ---------------------------------------------------------------------------------


def with_context(
    x: torch.Tensor,
    state: ConvState,
    pad: int,
    act: Callable | None,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[state.inputs, act(x)] along time ([B, C, pad + n]), one buffer (channels last: stored [B, pad + n,
    C]) of `dtype` (default x's: a convolution's input dtype); the state keeps its last `pad` columns (a
    view)."""
    B, C, n = x.shape
    if channels_last:
        buf = x.new_empty(B, pad + n, C, dtype=dtype).transpose(1, 2)
    else:
        buf = x.new_empty(B, C, pad + n, dtype=dtype)
    buf[..., :pad] = state.inputs
    if act is None:
        buf[..., pad:] = x
    else:
        act(x, out=buf[..., pad:])
    state.inputs = buf[..., n:]
    return buf


_PLAIN = threading.local()


@contextlib.contextmanager
def plain_convolutions():
    """On this thread, the convolution stack runs channels first in its own dtype (weights converted per
    call), undoing what `use_channels_last` and `use_mixed_precision` set: for eager decodes of varying
    lengths (`SpeechTokenizer.decode`, a `StreamingDecoder`'s pushes). cuDNN then picks algorithms by its
    heuristics (benchmarking would time them again for every new length), and its picks were fast for
    channels-first fp32 (10 s of audio in 16 ms on an H200) but not for channels-last fp16 (156 ms,
    2026-12-01); the engine's streaming passes keep that layout and dtype, their algorithms timed once
    when their graphs are captured."""
    saved = getattr(_PLAIN, "on", False)
    _PLAIN.on = True
    try:
        yield
    finally:
        _PLAIN.on = saved


def _call_layout(m: CausalConv1d | CausalConvTranspose1d) -> tuple[bool, bool, torch.dtype]:
    """(plain, channels last, input dtype) of a causal convolution's call on this thread."""
    plain = getattr(_PLAIN, "on", False)
    return plain, m.channels_last and not plain, (plain and m.plain_dtype) or m.conv.weight.dtype


def _as_plain(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A weight or bias in `dtype`, channels first (itself when it is already)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)  # (`to` keeps the strides)


def _params(
    conv: nn.Conv1d | nn.ConvTranspose1d, plain: bool, dtype: torch.dtype, bias: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias or None) of a channels-first call: as stored, or converted when plain."""
    w, b = conv.weight, conv.bias if bias else None
    return (_as_plain(w, dtype), _as_plain(b, dtype)) if plain else (w, b)


def channels_last_(weight: torch.Tensor) -> None:
    """Restride a convolution weight [A, B, k] in place to [A, k, B] storage: the [A, B, 1, k] view that
    `conv_channels_last` passes is then channels-last, and cuDNN does not convert it at every call."""
    weight.data = weight.data.transpose(1, 2).contiguous().transpose(1, 2)


def conv_channels_last(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """conv(x) of a channels-last x [B, C, T] as the 2-D op over its [B, C, 1, T] view: cuDNN runs its NHWC
    kernels on it directly (the 1-D op converted every input to NHWC and every output back: ~2 ms of a
    64-stream 4-frame pass on an H200). The output is channels last too."""
    b = conv.bias.to(x.dtype) if bias and conv.bias is not None else None  # (the mixed codec's fp32 biases)
    w, x4 = conv.weight.unsqueeze(2), x.unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        y = F.conv_transpose2d(x4, w, b, (1, conv.stride[0]), groups=conv.groups)
    else:
        y = F.conv2d(x4, w, b, (1, conv.stride[0]), 0, (1, conv.dilation[0]), conv.groups)
    return y.squeeze(2)


class CausalConv1d(nn.Module):
    """Stride-1 causal conv whose left context is the previous inputs (zeros at the start)."""

    def __init__(self, cin, cout, kernel_size, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, dilation=dilation, groups=groups)
        self.pad = (kernel_size - 1) * dilation
        self.channels_last = False  # set by CodecDecoder.use_channels_last
        self.plain_dtype: torch.dtype | None = None  # the dtype before use_mixed_precision, if it ran

    def init_state(self, batch: int, dtype, device) -> ConvState:
        # the context is kept in the convolution's input dtype (its weight's: bf16 in the mixed codec)
        w = self.conv.weight.dtype
        return ConvState(torch.zeros(batch, self.conv.in_channels, self.pad, dtype=w, device=device))

    def forward(
        self, x: torch.Tensor, state: ConvState, act: Callable | None = None, bias: bool = True
    ) -> torch.Tensor:
        """conv(act(x)) after the left context (`act`, when given, writes straight into the input
        buffer: one pass over the waveform-rate tensor fewer than a concatenation after it); without
        its bias when `bias` is False (the caller adds it later, in a pass it makes anyway)."""
        plain, channels_last, dtype = _call_layout(self)
        if self.pad == 0:  # a 1x1 convolution: no context (a concatenation would only copy x)
            x = x if act is None else act(x)
            x = x if x.dtype == dtype else x.to(dtype)  # (the eager Snake's fp32 in the mixed codec)
        else:
            x = with_context(x, state, self.pad, act, channels_last, dtype)
        if channels_last:
            return conv_channels_last(self.conv, x, bias)
        c = self.conv
        return F.conv1d(x, *_params(c, plain, dtype, bias), c.stride, c.padding, c.dilation, c.groups)


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d giving exactly stride*length outputs. Output block t sums the contributions of
    inputs t, t-1, ..., so the state keeps the last ceil(kernel/stride)-1 inputs and their overlap is
    recomputed rather than stored as partial sums."""

    def __init__(self, cin, cout, kernel_size, stride):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size, stride=stride)
        self.stride = stride
        self.history = math.ceil(kernel_size / stride) - 1
        self.channels_last = False  # set by CodecDecoder.use_channels_last
        self.plain_dtype: torch.dtype | None = None  # as CausalConv1d's

    def init_state(self, batch: int, dtype, device) -> ConvState:
        w = self.conv.weight.dtype  # as CausalConv1d's
        return ConvState(torch.zeros(batch, self.conv.in_channels, self.history, dtype=w, device=device))

    def forward(self, x: torch.Tensor, state: ConvState, act: Callable | None = None) -> torch.Tensor:
        n = x.shape[-1]
        plain, channels_last, dtype = _call_layout(self)
        x = with_context(x, state, self.history, act, channels_last, dtype)
        start = self.history * self.stride
        if channels_last:
            y = conv_channels_last(self.conv, x, True)
        else:
            c = self.conv
            w, b = _params(c, plain, dtype)
            y = F.conv_transpose1d(x, w, b, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
        return y[..., start : start + n * self.stride]


@functools.lru_cache(maxsize=4)
def fused_snake(device: torch.device) -> Callable | None:
    """The one-pass Triton SnakeBeta (kernels/snake.py) on a CUDA device with Triton installed, else None
    (CPU, or UTTER_TTS_CODEC_KERNELS=0: the eager op below)."""
    if device.type != "cuda" or os.environ.get("UTTER_TTS_CODEC_KERNELS", "1") == "0":
        return None
    try:
        from utter_tts.kernels.snake import snake
    except ImportError:  # a CPU-only install has no Triton
        return None
    return snake


def channels_last_codec(device: torch.device) -> bool:
    """Whether a codec loaded onto `device` runs its convolution stack channels last
    (`CodecDecoder.use_channels_last`): where the fused kernels run (they take that layout), unless
    UTTER_TTS_CODEC_CHANNELS_LAST=0 (the bench's comparison)."""
    return fused_snake(device) is not None and os.environ.get("UTTER_TTS_CODEC_CHANNELS_LAST", "1") != "0"


MIXED_DTYPES = {"mixed-fp16": torch.float16, "mixed-bf16": torch.bfloat16}
DEFAULT_PRECISION = "mixed-fp16"  # UTTER_TTS_CODEC_PRECISION unset
# fp16 holds at most 65504: the mixed fp16 codec is used only if a calibration decode's largest convolution
# input or output (in fp32) stays this far below it (random weights of the real shapes: ~17)
FP16_HEADROOM = 64.0


def codec_mixed_dtype(device: torch.device) -> torch.dtype | None:
    """The upsampling blocks' convolution dtype of a codec loaded onto `device`
    (`CodecDecoder.use_mixed_precision`), from UTTER_TTS_CODEC_PRECISION: "mixed-fp16" (the default: a
    64-stream 4-frame pass 13.4 -> 9.4 ms on an H200, 0.29 % from fp32 where TF32 alone is 0.37 %),
    "mixed-bf16" or "fp32" (None); only where the convolution stack runs channels last."""
    name = env_choice("UTTER_TTS_CODEC_PRECISION", ("fp32", *MIXED_DTYPES), DEFAULT_PRECISION)
    return MIXED_DTYPES.get(name) if channels_last_codec(device) else None


def fused_residual(device: torch.device) -> Callable | None:
    """The one-pass bias + residual add (kernels/residual.py) wherever `fused_snake` runs, else None."""
    if fused_snake(device) is None:
        return None
    from utter_tts.kernels.residual import bias_residual

    return bias_residual


class SnakeBeta(nn.Module):
    """x + sin^2(x * e^alpha) / e^beta, per channel (alpha, beta stored in log scale)."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(
        self, x: torch.Tensor, out: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """SnakeBeta of x (plus a per-channel `bias` first, which only the fused kernel takes), into
        `out` when given (e.g. a causal convolution's input buffer)."""
        fused = fused_snake(x.device)
        if fused is not None:  # one pass over x instead of five (the codec's batched streaming decode)
            return fused(x, *self._factors(), out=out, bias=bias)
        assert bias is None, "the eager op takes no bias: its convolution adds it"
        alpha = torch.exp(self.alpha)[None, :, None]
        beta = torch.exp(self.beta)[None, :, None]
        y = x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)
        return y if out is None else out.copy_(y)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(e^alpha, 1 / (e^beta + 1e-9)), computed again only when the parameters change (a load, a move)."""
        key = tuple((p.data_ptr(), p._version) for p in (self.alpha, self.beta))
        if getattr(self, "_factors_key", None) != key:
            from utter_tts.kernels.snake import snake_factors  # only reached where Triton is installed

            with torch.no_grad():
                self._cached_factors = snake_factors(self.alpha, self.beta)
            self._factors_key = key
        return self._cached_factors


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        h = self.dwconv(x, state).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def init_state(self, batch: int, dtype, device) -> ResidualUnitState:
        return ResidualUnitState(
            self.conv1.init_state(batch, dtype, device), self.conv2.init_state(batch, dtype, device)
        )

    def forward(self, x: torch.Tensor, state: ResidualUnitState) -> torch.Tensor:
        dtype = self.act1.alpha.dtype  # the residual stream's (fp32 in the mixed codec)
        if fused_snake(x.device) is None:  # the eager ops, as the official module runs them
            h = self.conv1(x, state.conv1, act=self.act1)
            return x.to(dtype) + self.conv2(h, state.conv2, act=self.act2)
        # conv1's bias is added by the Snake kernel after it, conv2's with the residual in one pass (the
        # same fp32 adds that passes of their own over the whole output made)
        h = self.conv1(x, state.conv1, act=self.act1, bias=False)
        y = self.conv2(
            h,
            state.conv2,
            act=lambda t: self.act2(t, bias=self.conv1.conv.bias),
            bias=False,
        )
        # the sum in the residual stream's dtype (bf16 convolutions in the mixed codec), in place where the
        # two agree
        out = y if y.dtype == dtype else empty_like_layout(y, dtype)
        return fused_residual(x.device)(x, y, self.conv2.conv.bias, out=out)


class DecoderBlock(nn.Module):
    """Snake, transposed-conv upsample by `rate`, then residual units with dilations 1, 3, 9 (`block`
    keeps the checkpoint's indices)."""

    def __init__(self, cin: int, cout: int, rate: int):
        super().__init__()
        blocks: list[nn.Module] = [SnakeBeta(cin), CausalConvTranspose1d(cin, cout, 2 * rate, rate)]
        blocks += [ResidualUnit(cout, d) for d in (1, 3, 9)]
        self.block = nn.ModuleList(blocks)

    def init_state(self, batch: int, dtype, device) -> DecoderBlockState:
        return DecoderBlockState(
            self.block[1].init_state(batch, dtype, device),
            [unit.init_state(batch, dtype, device) for unit in self.block[2:]],
        )

    def forward(self, x: torch.Tensor, state: DecoderBlockState) -> torch.Tensor:
        x = self.block[1](x, state.upsample, act=self.block[0])
        for unit, unit_state in zip(self.block[2:], state.units):
            x = unit(x, unit_state)
        return x


# --- decoder transformer: causal, sliding window, RoPE ------------------------------------------------


class DecoderAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.cfg = cfg  # the window is read at each call (the transformer's mask and the state agree)
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def init_state(self, batch: int, dtype, device) -> AttentionState:
        shape = (batch, self.n_kv, self.cfg.sliding_window - 1, self.head_dim)
        return AttentionState(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    def forward(self, x, cos, sin, mask, state: AttentionState) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # keys: the window-1 before this call, then the n new ones (a query sees itself and window-1 back)
        k, v = torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2)
        keep = self.cfg.sliding_window - 1
        state.keys, state.values = k[:, :, k.shape[2] - keep :], v[:, :, v.shape[2] - keep :]
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        # the plain ops, not SDPA: with a handful of queries against a 72-key window, its fp32 kernel took
        # ~80 us a layer for 64 streams on an H200, whatever the query count; these take a few each
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(self.head_dim**-0.5).add_(mask)
        out = torch.matmul(scores.softmax(-1), v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class DecoderMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.self_attn = DecoderAttention(cfg)
        self.mlp = DecoderMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(self, x, cos, sin, mask, state: AttentionState):
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, mask, state))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class DecoderTransformer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)

    def init_state(self, batch: int, dtype, device) -> TransformerState:
        return TransformerState(
            torch.zeros(batch, dtype=torch.long, device=device),
            [layer.self_attn.init_state(batch, dtype, device) for layer in self.layers],
        )

    def forward(self, x: torch.Tensor, state: TransformerState) -> torch.Tensor:
        """x [B, n, latent] -> [B, n, latent]; row b's positions continue from state.frames[b]."""
        n = x.shape[1]
        window = self.cfg.sliding_window
        start = state.frames
        state.frames = start + n
        pos = start[:, None] + torch.arange(n, device=x.device)[None]
        # keys: window-1 cached columns (zeros before the stream began: masked), then the n new ones
        kpos = start[:, None] + torch.arange(-(window - 1), n, device=x.device)[None]
        qpos, kpos = pos[:, :, None], kpos[:, None, :]
        seen = ((kpos <= qpos) & (kpos > qpos - window) & (kpos >= 0))[:, None]
        mask = torch.zeros(seen.shape, dtype=x.dtype, device=x.device).masked_fill_(~seen, float("-inf"))
        cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        x = self.input_proj(x)
        for layer, layer_state in zip(self.layers, state.layers):
            x = layer(x, cos, sin, mask, layer_state)
        return self.output_proj(self.norm(x))


# --- decode-side split RVQ (its own parameter names, distinct from the Mimi encoder's) --------------


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.cluster_usage = nn.Parameter(torch.ones(size))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        embed = self.embedding_sum / self.cluster_usage.clamp(min=self.eps)[:, None]
        return F.embedding(codes, embed)


class VQ(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self._codebook = Codebook(size, dim)


class RVQ(nn.Module):
    def __init__(self, n_q: int, size: int, dim: int, io_dim: int):
        super().__init__()
        self.vq = nn.Module()
        self.vq.layers = nn.ModuleList([VQ(size, dim) for _ in range(n_q)])
        # input_proj serves only the (absent) training-time encode; kept for strict loading
        self.input_proj = nn.Conv1d(io_dim, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, io_dim, 1, bias=False)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> [B, io_dim, T]; codebook vectors summed in order, then projected."""
        quantized = 0
        for k in range(codes.shape[1]):
            quantized = quantized + self.vq.layers[k]._codebook.decode(codes[:, k]).transpose(1, 2)
        return self.output_proj(quantized)


class SplitRVQ(nn.Module):
    def __init__(self, cfg: DecoderConfig, n_semantic: int = 1):
        super().__init__()
        self.n_semantic = n_semantic
        dim = cfg.codebook_dim // 2
        self.rvq_first = RVQ(n_semantic, cfg.codebook_size, dim, cfg.codebook_dim)
        self.rvq_rest = RVQ(cfg.num_quantizers - n_semantic, cfg.codebook_size, dim, cfg.codebook_dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.rvq_first.decode(codes[:, : self.n_semantic])
        if codes.shape[1] > self.n_semantic:
            out = out + self.rvq_rest.decode(codes[:, self.n_semantic :])
        return out


class CodecDecoder(nn.Module):
    """Codes [B, 16, F] -> waveform [B, 1, F * 1920] in [-1, 1]. Module names follow the checkpoint:
    `decoder` is [conv, 4 upsampling blocks, Snake, conv]."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = SplitRVQ(cfg)
        self.pre_conv = CausalConv1d(cfg.codebook_dim, cfg.latent_dim, 3)
        self.pre_transformer = DecoderTransformer(cfg)
        self.upsample = nn.ModuleList(
            nn.ModuleList(
                [CausalConvTranspose1d(cfg.latent_dim, cfg.latent_dim, r, r), ConvNeXtBlock(cfg.latent_dim)]
            )
            for r in cfg.upsampling_ratios
        )
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, cfg.decoder_dim, 7)]
        layers += [DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(cfg.upsample_rates)]
        layers += [SnakeBeta(dims[-1]), CausalConv1d(dims[-1], 1, 7)]
        self.decoder = nn.ModuleList(layers)

    def use_channels_last(self, on: bool = True) -> None:
        """Run the convolution stack after the transformer (`decoder`: the waveform-rate part, ~90 % of a
        pass) channels last: weights restrided once, activations [B, T, C] in memory (still [B, C, T]
        tensors: the modules and states are unchanged; the Snake and residual kernels take either
        layout). For CUDA, where cuDNN's convolutions are NHWC; the CPU keeps channels first."""
        for m in self.decoder.modules():
            if isinstance(m, (CausalConv1d, CausalConvTranspose1d)) and m.channels_last != on:
                m.channels_last = on
                if on:
                    channels_last_(m.conv.weight)
                else:
                    m.conv.weight.data = m.conv.weight.data.contiguous()

    @torch.inference_mode()
    def conv_peak(self, frames: int = 8, seed: int = 0) -> float:
        """The largest |value| going into or out of an upsampling block's convolution (a Snake's output or
        a convolution's) while decoding `frames` random frames of one stream from a fresh state."""
        peak = 0.0

        def seen(module, args, out):
            nonlocal peak
            peak = max(peak, float(out.detach().abs().max()))

        watched = [
            m
            for block in self.decoder[1:-2]
            for m in block.modules()
            if isinstance(m, (SnakeBeta, CausalConv1d, CausalConvTranspose1d))
        ]
        hooks = [m.register_forward_hook(seen) for m in watched]
        try:
            g = torch.Generator().manual_seed(seed)
            shape = (1, self.cfg.num_quantizers, frames)
            codes = torch.randint(0, self.cfg.codebook_size, shape, generator=g)
            self(codes.to(self.pre_conv.conv.weight.device), self.init_state(1))
        finally:
            for h in hooks:
                h.remove()
        return peak

    def use_mixed_precision(self, dtype: torch.dtype = torch.bfloat16) -> None:
        """Run the upsampling blocks' convolutions in `dtype` (weights converted once; fp32 accumulation),
        keeping the residual stream, the Snakes' math, the biases they add, the transformer and the last
        convolution in fp32: each block reads fp32 and its convolutions' inputs and outputs are rounded
        once to `dtype`. For the fused kernels (GPU): they write the convolutions' inputs in their dtype."""
        for block in self.decoder[1:-2]:
            for m in block.modules():
                if isinstance(m, (CausalConv1d, CausalConvTranspose1d)):
                    m.plain_dtype = m.plain_dtype or m.conv.weight.dtype
                if isinstance(m, CausalConvTranspose1d):
                    m.conv.to(dtype)  # cuDNN adds its bias: the same dtype
                elif isinstance(m, CausalConv1d):
                    m.conv.weight.data = m.conv.weight.data.to(dtype)  # strides kept (channels last)

    def init_state(self, batch: int, dtype=None, device=None) -> DecoderState:
        """The state of `batch` streams at their first frame."""
        p = self.pre_conv.conv.weight
        dtype, device = dtype or p.dtype, device or p.device
        return DecoderState(
            pre_conv=self.pre_conv.init_state(batch, dtype, device),
            transformer=self.pre_transformer.init_state(batch, dtype, device),
            upsample=[
                UpsampleState(
                    up.init_state(batch, dtype, device), block.dwconv.init_state(batch, dtype, device)
                )
                for up, block in self.upsample
            ],
            first_conv=self.decoder[0].init_state(batch, dtype, device),
            blocks=[block.init_state(batch, dtype, device) for block in self.decoder[1:-2]],
            last_conv=self.decoder[-1].init_state(batch, dtype, device),
        )

    def forward(self, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """The next frames of `state`'s streams: codes [B, 16, n] -> audio [B, 1, n * 1920]."""
        if codes.shape[1] != self.cfg.num_quantizers:
            raise ValueError(f"expected {self.cfg.num_quantizers} codebooks, got {codes.shape[1]}")
        x = self.quantizer.decode(codes)
        x = self.pre_conv(x, state.pre_conv)
        x = self.pre_transformer(x.transpose(1, 2), state.transformer).transpose(1, 2)
        for (up, block), up_state in zip(self.upsample, state.upsample):
            x = block(up(x, up_state.conv), up_state.convnext)
        x = self.decoder[0](x, state.first_conv)
        for block, block_state in zip(self.decoder[1:-2], state.blocks):
            x = block(x, block_state)
        x = self.decoder[-1](x, state.last_conv, act=self.decoder[-2])
        return x.clamp(-1.0, 1.0)
