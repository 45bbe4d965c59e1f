"""Qwen3-TTS 12 Hz speech tokenizer (codec): Mimi encoder, causal decoder, and an exact streaming decoder."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utter_tts.errors import CheckpointError
from utter_tts.model.codec_encoder import (
    ACTIVATIONS,
    EncoderConfig,
    LayerScale,
    MimiEncoder,
    apply_rope,
    rope_cos_sin,
)
from utter_tts.model.config import _pick
from utter_tts.model.talker import RMSNorm

SAMPLE_RATE = 24000  # the 12 Hz codec's audio rate, in and out (SpeechTokenizer checks its config)

# Streaming state: each stateful module keeps its left context under its own key (the module itself).
State = dict


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
        return cls(**_pick(cls, raw))


@dataclass
class SpeechTokenizerConfig:
    """speech_tokenizer/config.json (model_type qwen3_tts_tokenizer_12hz)."""

    encoder: EncoderConfig
    decoder: DecoderConfig
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    decode_upsample_rate: int = 1920
    encode_downsample_rate: int = 1920

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeechTokenizerConfig:
        kw = _pick(cls, raw)
        kw["encoder"] = EncoderConfig.from_dict(raw.get("encoder_config") or {})
        kw["decoder"] = DecoderConfig.from_dict(raw.get("decoder_config") or {})
        return cls(**kw)


# --- causal building blocks; each takes an optional streaming `state` ------------------------------


class CausalConv1d(nn.Module):
    """Stride-1 causal conv: left zero pad of (kernel-1)*dilation (streaming: the previous inputs)."""

    def __init__(self, cin, cout, kernel_size, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, dilation=dilation, groups=groups)
        self.pad = (kernel_size - 1) * dilation

    def empty_state(self, batch: int, dtype, device) -> torch.Tensor:
        return torch.zeros(batch, self.conv.in_channels, self.pad, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        if state is None:
            return self.conv(F.pad(x, (self.pad, 0)))
        x = torch.cat([state[self], x], dim=-1)  # states come whole from SpeechTokenizer.empty_state
        state[self] = x[..., x.shape[-1] - self.pad :]
        return self.conv(x)


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed on the right to exactly stride*length outputs.

    Output block t sums the contributions of inputs t, t-1, ..., so streaming keeps the last
    ceil(kernel/stride)-1 inputs and recomputes their overlap rather than storing partial sums."""

    def __init__(self, cin, cout, kernel_size, stride):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size, stride=stride)
        self.stride = stride
        self.trim = kernel_size - stride
        self.history = math.ceil(kernel_size / stride) - 1

    def empty_state(self, batch: int, dtype, device) -> torch.Tensor | None:
        if self.history == 0:
            return None
        return torch.zeros(batch, self.conv.in_channels, self.history, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        n = x.shape[-1]
        if state is None or self.history == 0:
            y = self.conv(x)
            return y[..., : y.shape[-1] - self.trim]
        x = torch.cat([state[self], x], dim=-1)
        state[self] = x[..., x.shape[-1] - self.history :]
        start = self.history * self.stride
        return self.conv(x)[..., start : start + n * self.stride]


class SnakeBeta(nn.Module):
    """x + sin^2(x * e^alpha) / e^beta, per channel (alpha, beta stored in log scale)."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        alpha = torch.exp(self.alpha)[None, :, None]
        beta = torch.exp(self.beta)[None, :, None]
        return x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
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

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        h = self.conv1(self.act1(x), state)
        return x + self.conv2(self.act2(h), state)


class DecoderBlock(nn.Module):
    """Snake, transposed-conv upsample by `rate`, then residual units with dilations 1, 3, 9."""

    def __init__(self, cin: int, cout: int, rate: int):
        super().__init__()
        blocks: list[nn.Module] = [SnakeBeta(cin), CausalConvTranspose1d(cin, cout, 2 * rate, rate)]
        blocks += [ResidualUnit(cout, d) for d in (1, 3, 9)]
        self.block = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        for layer in self.block:
            x = layer(x, state)
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
        self.window = cfg.sliding_window
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x, cos, sin, mask, state: State | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            # a fixed window-1 keys of left context (zeros before the stream's start, masked), so that
            # every stream's state has one shape and many streams decode as one batch
            cached = state[self]
            k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            keep = self.window - 1  # a query sees itself and the window-1 keys before it
            state[self] = (k[:, :, k.shape[2] - keep :], v[:, :, v.shape[2] - keep :])
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    def empty_state(self, batch: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.n_kv, self.window - 1, self.head_dim)
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)


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

    def forward(self, x, cos, sin, mask, state: State | None = None):
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

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """x [B, L, latent] -> [B, L, latent]; positions continue from the frames already in `state`
        (per row: rows of a batched streaming state may be at different frames)."""
        b, n = x.shape[:2]
        window = self.cfg.sliding_window
        steps = torch.arange(n, device=x.device)
        if state is None:
            pos = steps[None]
            qpos, kpos = pos[:, :, None], pos[:, None, :]
        else:
            start = state[self]  # [B] frames already decoded
            state[self] = start + n
            pos = start[:, None] + steps[None]
            # keys: window-1 cached columns (zeros before the stream began), then the n new ones
            kpos = start[:, None] + torch.arange(-(window - 1), n, device=x.device)[None]
            qpos, kpos = pos[:, :, None], kpos[:, None, :]
        mask = ((kpos <= qpos) & (kpos > qpos - window) & (kpos >= 0))[:, None]
        cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        x = self.input_proj(x)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, state)
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
    """Codes [B, 16, F] -> waveform [B, 1, F * 1920] in [-1, 1]; causal end to end."""

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

    def forward(self, codes: torch.Tensor, state: State | None = None) -> torch.Tensor:
        if codes.shape[1] != self.cfg.num_quantizers:
            raise ValueError(f"expected {self.cfg.num_quantizers} codebooks, got {codes.shape[1]}")
        x = self.quantizer.decode(codes)
        x = self.pre_conv(x, state)
        x = self.pre_transformer(x.transpose(1, 2), state).transpose(1, 2)
        for up, block in self.upsample:
            x = block(up(x, state), state)
        for layer in self.decoder:
            x = layer(x, state)
        return x.clamp(-1.0, 1.0)


# --- public API ----------------------------------------------------------------------------------------


class SpeechTokenizer(nn.Module):
    """The 12 Hz codec. encode: 24 kHz mono -> [F, 16] codes; decode: codes -> 24 kHz waveform.

    decode follows the official decoder's chunking (300-frame chunks, each re-run with 25 frames of
    left context and a fresh transformer) so long outputs match it sample for sample; set
    `chunk_frames = None` for a single full-context pass (identical up to 300 frames)."""

    def __init__(self, cfg: SpeechTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MimiEncoder(cfg.encoder)
        self.decoder = CodecDecoder(cfg.decoder)
        self.sample_rate = cfg.output_sample_rate
        self.frame_samples = cfg.decode_upsample_rate
        self.num_codebooks = cfg.encoder_valid_num_quantizers
        self.chunk_frames: int | None = 300
        self.chunk_context = 25
        if cfg.input_sample_rate != cfg.output_sample_rate:
            raise ValueError("input and output sample rates differ; not a 12 Hz tokenizer config")
        if cfg.decoder.total_upsample != cfg.decode_upsample_rate:
            raise ValueError("decoder upsampling does not match decode_upsample_rate")

    @classmethod
    def from_dir(cls, folder, device="cpu", dtype=torch.float32) -> SpeechTokenizer:
        """Load speech_tokenizer/ (config.json + model.safetensors) with strict state-dict keys."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, weights_path = folder / "config.json", folder / "model.safetensors"
        # the official file is model.safetensors; accept a sharded/renamed set of *.safetensors too
        weight_files = [weights_path] if weights_path.is_file() else sorted(folder.glob("*.safetensors"))
        for path, ok in ((cfg_path, cfg_path.is_file()), (weights_path, bool(weight_files))):
            if not ok:
                raise CheckpointError(f"speech tokenizer file missing: {path}")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                cfg = SpeechTokenizerConfig.from_dict(json.load(f))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"bad speech tokenizer config {cfg_path}: {e}") from e
        with torch.device("meta"):
            model = cls(cfg)
        state = {}
        for path in weight_files:
            try:
                state.update(load_file(str(path), device="cpu"))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{weights_path} does not match the 12 Hz tokenizer: {e}") from e
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.decoder.pre_conv.conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.pre_conv.conv.weight.dtype

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [T] float mono at 24 kHz -> codes [ceil(T / 1920), 16] (long, on the model's device).

        The encoder is causal: frame i depends on samples [0, (i+1)*1920) only. A last partial frame is
        encoded from zero padding, as the official encode does, so it changes if more audio follows."""
        wav = torch.as_tensor(wav)
        if wav.dim() != 1 or wav.shape[0] == 0:
            raise ValueError(f"encode expects a non-empty 1-D waveform, got shape {tuple(wav.shape)}")
        x = wav.to(device=self.device, dtype=self.dtype)[None, None]
        codes = self.encoder(x, self.num_codebooks)[0]
        n_frames = -(-wav.shape[0] // self.cfg.encode_downsample_rate)
        return codes[:, :n_frames].transpose(0, 1).contiguous()

    def _run(self, codes: torch.Tensor, state: State | None = None) -> torch.Tensor:
        return self.decoder(codes.transpose(1, 2), state)[:, 0]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [F, 16] or [B, F, 16] -> float32 waveform [F * 1920] or [B, F * 1920].

        Negative codes mark padding (the official -1): they decode as code 0 and, as in the official
        decode, the waveform covers only the non-negative frames (2-D: trimmed; 3-D: zeroed after)."""
        squeeze = codes.dim() == 2
        if squeeze:
            codes = codes[None]
        valid = (codes[..., 0] >= 0).sum(1) * self.frame_samples
        codes = codes.to(self.device).clamp(min=0)
        n, fs = codes.shape[1], self.frame_samples
        if self.chunk_frames is None:
            wav = self._run(codes)
        else:
            pieces, start = [], 0
            while start < n:
                end = min(start + self.chunk_frames, n)
                ctx = self.chunk_context if start - self.chunk_context > 0 else start
                pieces.append(self._run(codes[:, start - ctx : end])[:, ctx * fs :])
                start = end
            wav = (
                torch.cat(pieces, dim=-1) if pieces else codes.new_zeros(codes.shape[0], 0, dtype=self.dtype)
            )
        wav = wav.float()
        if squeeze:
            return wav[0, : int(valid[0])]
        keep = torch.arange(wav.shape[1], device=wav.device)[None] < valid.to(wav.device)[:, None]
        return wav * keep

    def stream_decoder(self) -> StreamingDecoder:
        return StreamingDecoder(self)

    def empty_state(self, batch: int = 1) -> State:
        """A streaming state at frame 0 with every entry materialised (zeros), so states of streams at
        any frame have equal shapes and stack into one batch."""
        state: State = {}
        dtype, device = self.dtype, self.device
        for m in self.decoder.modules():
            if isinstance(m, DecoderTransformer):
                state[m] = torch.zeros(batch, dtype=torch.long, device=device)
            elif isinstance(m, (CausalConv1d, CausalConvTranspose1d, DecoderAttention)):
                entry = m.empty_state(batch, dtype, device)
                if entry is not None:
                    state[m] = entry
        return state


class StreamingDecoder:
    """Incremental decode with explicit left-context state (conv buffers, windowed KV cache,
    transposed-conv input history). Concatenated push() outputs equal decode() of all frames,
    including decode()'s official 300-frame chunk restarts, which are replayed here from the
    last 25 frames of codes."""

    def __init__(self, model: SpeechTokenizer):
        self.model = model
        self.chunk = model.chunk_frames
        self.context = model.chunk_context
        self.frames = 0
        self.state: State | None = None  # created at the first push, when the batch size is known
        self.history: torch.Tensor | None = None  # last `context` frames of codes [B, ctx, 16]
        self.restarted_at = 0

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n, 16] or [B, n, 16] (new frames only) -> float32 audio [n * 1920] or [B, n * 1920]."""
        squeeze = codes.dim() == 2
        if squeeze:
            codes = codes[None]
        codes = codes.to(self.model.device).clamp(min=0)
        if self.state is None:
            self.state = self.model.empty_state(codes.shape[0])
        outs = []
        while codes.shape[1] > 0:
            n = min(codes.shape[1], self.room())
            part, codes = codes[:, :n], codes[:, n:]
            outs.append(self.model._run(part, self.state).float())
            self._remember(part)
        if not outs:
            out = torch.zeros(codes.shape[0], 0, device=codes.device)
        else:
            out = torch.cat(outs, dim=-1)
        return out[0] if squeeze else out

    def room(self) -> int:
        """Frames the next push may take before an official chunk boundary (restarting first if one is
        due now)."""
        if self.chunk is None:
            return 1 << 62
        if self.frames > 0 and self.frames % self.chunk == 0 and self.restarted_at != self.frames:
            self._restart()
        return self.chunk - self.frames % self.chunk

    def _remember(self, part: torch.Tensor) -> None:
        self.frames += part.shape[1]
        if self.chunk is None:
            return
        hist = part if self.history is None else torch.cat([self.history, part], dim=1)
        self.history = hist[:, max(0, hist.shape[1] - self.context) :]

    def _restart(self) -> None:
        """Mirror the official chunk boundary: fresh state, warmed on the context frames (output dropped)."""
        self.restarted_at = self.frames
        self.state = self.model.empty_state(self.history.shape[0])
        ctx = self.context if self.frames - self.context > 0 else self.frames
        if ctx > 0:
            self.model._run(self.history[:, self.history.shape[1] - ctx :], self.state)


@torch.inference_mode()
def push_batch(
    decoders: list[StreamingDecoder], codes: list[torch.Tensor], passes: list[int] | None = None
) -> list[torch.Tensor]:
    """`decoders[i].push(codes[i])` for many single-stream decoders of one model in few batched passes.

    Pushes of equal length that stay inside their decoder's chunk run as one batch (their states are
    stacked, run, and split back); the rest (a push crossing an official chunk boundary) run alone.
    Each output equals that decoder's own push within float tolerance. `passes`, when given, gets the
    number of streams decoded by each batched pass (a push that ran alone counts as 1)."""
    passes = [] if passes is None else passes
    out: list[torch.Tensor | None] = [None] * len(decoders)
    groups: dict[int, list[int]] = {}
    for i, (d, c) in enumerate(zip(decoders, codes)):
        if c.dim() != 2:
            raise ValueError(f"push_batch takes [n, 16] codes per decoder, got {tuple(c.shape)}")
        if d.state is None:
            d.state = d.model.empty_state(1)
        if c.shape[0] > 0 and c.shape[0] <= d.room():
            groups.setdefault(c.shape[0], []).append(i)
        else:
            out[i] = d.push(c)
            passes.append(1)
    for idx in groups.values():
        passes.append(len(idx))
        if len(idx) == 1:
            out[idx[0]] = decoders[idx[0]].push(codes[idx[0]])
            continue
        group = [decoders[i] for i in idx]
        model = group[0].model
        batch = torch.stack([codes[i].to(model.device) for i in idx]).clamp(min=0)
        keys = list(group[0].state)
        state = {m: _stack([d.state[m] for d in group]) for m in keys}
        wav = model._run(batch, state).float()
        parts = {m: _unstack(state[m]) for m in keys}
        for j, (i, d) in enumerate(zip(idx, group)):
            d.state = {m: parts[m][j] for m in keys}
            d._remember(batch[j : j + 1])
            out[i] = wav[j]
    return out


def _stack(entries: list):
    if isinstance(entries[0], tuple):
        return tuple(torch.cat(xs) for xs in zip(*entries))
    return torch.cat(entries)


def _unstack(entry) -> list:
    if isinstance(entry, tuple):
        return list(zip(*(x.split(1) for x in entry)))
    return list(entry.split(1))
