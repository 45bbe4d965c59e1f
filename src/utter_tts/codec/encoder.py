"""Encoder half of the 12 Hz speech tokenizer: Mimi (SEANet, transformer, split RVQ), waveform to codes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utter_tts.model.config import pick_fields

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


@dataclass
class EncoderConfig:
    """`encoder_config` of speech_tokenizer/config.json (a transformers MimiConfig); defaults are Mimi's."""

    sampling_rate: int = 24000
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 6, 5, 4])
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    codebook_size: int = 2048
    codebook_dim: int | None = None
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    use_conv_shortcut: bool = False
    vector_quantization_hidden_dimension: int = 256
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "gelu"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    layer_scale_initial_scale: float = 0.01
    frame_rate: float | None = 12.5
    # HF Mimi pads through a per-layer cache (no right padding) when this is set; see MimiConv1d.
    use_streaming: bool = False

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if not self.use_causal_conv:
            raise ValueError("the 12 Hz tokenizer's encoder uses causal convolutions (use_causal_conv=true)")

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def encodec_frame_rate(self) -> int:
        """Frame rate of the SEANet output (25 Hz), before the stride-2 downsample to `frame_rate`."""
        return math.ceil(self.sampling_rate / self.hop_length)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EncoderConfig:
        return cls(**pick_fields(cls, raw))


# --- shared by the encoder and decoder transformers -------------------------------------------------


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """Default (unscaled) RoPE tables for `positions` [..., L] -> [..., L, head_dim], computed in fp32
    like HF, cast to `dtype`.

    Built on the fly rather than kept as a buffer so that casting the module to bf16 cannot round
    the inverse frequencies."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, H, L, D] with cos/sin [L, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


# --- SEANet convolutional encoder --------------------------------------------------------------------


class MimiConv1d(nn.Module):
    """Causal Conv1d: left pad kernel-stride, plus the right pad that completes the last stride window."""

    def __init__(
        self,
        cin,
        cout,
        kernel_size,
        stride=1,
        dilation=1,
        bias=True,
        pad_mode="constant",
        streaming_pad=False,
    ):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.kernel = (kernel_size - 1) * dilation + 1
        self.pad_left = self.kernel - stride
        self.pad_mode = pad_mode
        self.streaming_pad = streaming_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming_pad:
            # HF's padding cache on a first call: zeros (or the first sample repeated), nothing on the right
            if self.pad_mode == "replicate":
                left = x[..., :1].expand(*x.shape[:-1], self.pad_left)
            else:
                left = x.new_zeros(*x.shape[:-1], self.pad_left)
            return self.conv(torch.cat([left, x], dim=-1))
        length = x.shape[-1]
        n_frames = math.ceil((length - self.kernel + self.pad_left) / self.stride + 1) - 1
        extra = n_frames * self.stride + self.kernel - self.pad_left - length
        return self.conv(F.pad(x, (self.pad_left, extra), mode=self.pad_mode))


class ResnetBlock(nn.Module):
    """SEANet residual block; `block` keeps HF's [ELU, conv, ELU, conv] indices for the state dict."""

    def __init__(self, cfg: EncoderConfig, dim: int, dilations: list[int]):
        super().__init__()
        hidden = dim // cfg.compress
        kernels = (cfg.residual_kernel_size, 1)
        block: list[nn.Module] = []
        for i, (k, d) in enumerate(zip(kernels, dilations)):
            cin = dim if i == 0 else hidden
            cout = dim if i == len(kernels) - 1 else hidden
            block += [
                nn.ELU(),
                MimiConv1d(cin, cout, k, dilation=d, pad_mode=cfg.pad_mode, streaming_pad=cfg.use_streaming),
            ]
        self.block = nn.ModuleList(block)
        self.shortcut = (
            MimiConv1d(dim, dim, 1, pad_mode=cfg.pad_mode, streaming_pad=cfg.use_streaming)
            if cfg.use_conv_shortcut
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        return self.shortcut(x) + h


class SeanetEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        sp = dict(pad_mode=cfg.pad_mode, streaming_pad=cfg.use_streaming)
        layers: list[nn.Module] = [MimiConv1d(cfg.audio_channels, cfg.num_filters, cfg.kernel_size, **sp)]
        mult = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = mult * cfg.num_filters
            for j in range(cfg.num_residual_layers):
                layers.append(ResnetBlock(cfg, dim, [cfg.dilation_growth_rate**j, 1]))
            layers += [nn.ELU(), MimiConv1d(dim, dim * 2, ratio * 2, stride=ratio, **sp)]
            mult *= 2
        layers += [nn.ELU(), MimiConv1d(mult * cfg.num_filters, cfg.hidden_size, cfg.last_kernel_size, **sp)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# --- transformer (full causal attention: HF Mimi ignores the config's sliding_window) ---------------


class EncoderAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class EncoderMLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.self_attn = EncoderAttention(cfg)
        self.mlp = EncoderMLP(cfg)
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(self, x, cos, sin):
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class EncoderTransformer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


# --- split residual vector quantizer (encode side) ---------------------------------------------------


class EuclideanCodebook(nn.Module):
    def __init__(self, size: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # buffers, as in HF Mimi: the checkpoint stores an EMA codebook as running sums and counts
        self.register_buffer("initialized", torch.tensor([True], dtype=torch.float32))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))

    @property
    def embed(self) -> torch.Tensor:
        return self.embed_sum / self.cluster_usage.clamp(min=self.eps)[:, None]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D, T] -> (nearest indices [B, T], their centroids [B, D, T])."""
        embed = self.embed
        flat = x.transpose(1, 2).reshape(-1, x.shape[1])
        # cdist in fp32, exactly as HF, so ties break identically
        idx = torch.cdist(flat[None].float(), embed[None].float(), p=2)[0].argmin(dim=-1)
        idx = idx.view(x.shape[0], x.shape[2])
        return idx, F.embedding(idx, embed).transpose(1, 2)


class VectorQuantization(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.codebook = EuclideanCodebook(cfg.codebook_size, cfg.codebook_dim)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: EncoderConfig, n_q: int):
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(cfg) for _ in range(n_q)])
        self.input_proj = self.output_proj = None
        if cfg.vector_quantization_hidden_dimension != cfg.hidden_size:
            vq_dim = cfg.vector_quantization_hidden_dimension
            self.input_proj = nn.Conv1d(cfg.hidden_size, vq_dim, 1, bias=False)
            # only the (absent) Mimi decoder uses it; kept so the state dict loads key for key
            self.output_proj = nn.Conv1d(vq_dim, cfg.hidden_size, 1, bias=False)

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """x [B, C, T] -> codes [B, n_q, T]."""
        residual = self.input_proj(x) if self.input_proj is not None else x
        codes = []
        for layer in self.layers[:n_q]:
            idx, quantized = layer.codebook.encode(residual)
            residual = residual - quantized
            codes.append(idx)
        return torch.stack(codes, dim=1)


class SplitResidualVectorQuantizer(nn.Module):
    """First `num_semantic_quantizers` codes from one RVQ, the rest from a second RVQ on the same input."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, cfg.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(
            cfg, cfg.num_quantizers - cfg.num_semantic_quantizers
        )

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        codes = self.semantic_residual_vector_quantizer.encode(x, self.n_semantic)
        if n_q > self.n_semantic:
            rest = self.acoustic_residual_vector_quantizer.encode(x, n_q - self.n_semantic)
            codes = torch.cat([codes, rest], dim=1)
        return codes


class MimiEncoder(nn.Module):
    """Waveform [B, 1, T] at 24 kHz -> codes [B, n_q, ceil(T / 1920)]: HF MimiModel.encode, no decoder."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SeanetEncoder(cfg)
        self.encoder_transformer = EncoderTransformer(cfg)
        stride = round(cfg.encodec_frame_rate / cfg.frame_rate) if cfg.frame_rate else 1
        if stride != 1:
            # HF: kernel 2 * int(25 / 12.5), stride hard-coded to 2, replicate padding
            kernel = 2 * int(cfg.encodec_frame_rate / cfg.frame_rate)
            self.downsample = MimiConv1d(
                cfg.hidden_size,
                cfg.hidden_size,
                kernel,
                stride=2,
                bias=False,
                pad_mode="replicate",
                streaming_pad=cfg.use_streaming,
            )
        else:
            self.downsample = None
        self.quantizer = SplitResidualVectorQuantizer(cfg)

    def forward(self, wav: torch.Tensor, n_q: int) -> torch.Tensor:
        x = self.encoder(wav)
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        return self.quantizer.encode(x, n_q)
