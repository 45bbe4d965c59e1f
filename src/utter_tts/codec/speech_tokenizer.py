"""The 12 Hz codec: audio to codes; codes to audio, whole, streamed, or many streams batched."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utter_tts.codec.decoder import (
    FP16_HEADROOM,
    CodecDecoder,
    DecoderConfig,
    DecoderState,
    channels_last_codec,
    codec_mixed_dtype,
    plain_convolutions,
    split_state,
    stack_states,
)
from utter_tts.codec.encoder import EncoderConfig, MimiEncoder
from utter_tts.device import CAPTURE_LOCK
from utter_tts.errors import CheckpointError
from utter_tts.model.config import pick_fields

log = logging.getLogger(__name__)


class NonFiniteAudio(RuntimeError):
    """Decoded audio holds inf or NaN (e.g. an fp16 overflow in the mixed codec on unusual weights): an
    error, never audio."""


SAMPLE_RATE = 24000  # the 12 Hz codec's audio rate, in and out (SpeechTokenizer checks its config)


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
        kw = pick_fields(cls, raw)
        kw["encoder"] = EncoderConfig.from_dict(raw.get("encoder_config") or {})
        kw["decoder"] = DecoderConfig.from_dict(raw.get("decoder_config") or {})
        return cls(**kw)


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
        if not cfg.input_sample_rate == cfg.output_sample_rate == SAMPLE_RATE:
            raise ValueError(f"sample rates must be {SAMPLE_RATE} in and out; not a 12 Hz tokenizer config")
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
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if channels_last_codec(model.device):
            model.decoder.use_channels_last()
        mixed = codec_mixed_dtype(model.device)
        if mixed == torch.float16 and (peak := model.decoder.conv_peak()) * FP16_HEADROOM > 65504:
            log.warning("codec activations reach %.0f: fp16 could overflow; the codec stays fp32", peak)
            mixed = None
        if mixed is not None:
            model.decoder.use_mixed_precision(mixed)
        return model

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
        with CAPTURE_LOCK:  # cuDNN may search algorithms: never beside a graph capture
            codes = self.encoder(x, self.num_codebooks)[0]
        n_frames = -(-wav.shape[0] // self.cfg.encode_downsample_rate)
        return codes[:, :n_frames].transpose(0, 1).contiguous()

    def new_state(self, batch: int = 1) -> DecoderState:
        """Decoding state of `batch` streams at their first frame."""
        return self.decoder.init_state(batch)

    def run(self, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """The decoding step: codes [B, n, 16] (the streams' next frames, non-negative) -> audio
        [B, n * 1920], advancing `state`. No chunk restarts: see `decode` and `StreamingDecoder`."""
        with CAPTURE_LOCK:  # cuDNN may search algorithms: never beside another thread's graph capture
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
        n, fs, batch = codes.shape[1], self.frame_samples, codes.shape[0]
        with plain_convolutions():  # lengths vary from call to call: see plain_convolutions
            if self.chunk_frames is None:
                wav = self.run(codes, self.new_state(batch))
            else:
                pieces, start = [], 0
                while start < n:
                    end = min(start + self.chunk_frames, n)
                    ctx = self.chunk_context if start - self.chunk_context > 0 else start
                    state = self.new_state(batch)
                    pieces.append(self.run(codes[:, start - ctx : end], state)[:, ctx * fs :])
                    start = end
                wav = torch.cat(pieces, dim=-1) if pieces else codes.new_zeros(batch, 0, dtype=self.dtype)
        wav = wav.float()
        if not bool(torch.isfinite(wav).all()):  # (one sync: the caller reads the audio next anyway)
            raise NonFiniteAudio("the codec decoded non-finite audio")
        if squeeze:
            return wav[0, : int(valid[0])]
        keep = torch.arange(wav.shape[1], device=wav.device)[None] < valid.to(wav.device)[:, None]
        return wav * keep

    def stream_decoder(self) -> StreamingDecoder:
        return StreamingDecoder(self)


class StreamingDecoder:
    """Incremental decode of one stream (or a batch of streams that advance together): concatenated
    push() outputs equal decode() of all frames, including decode()'s official 300-frame chunk
    restarts, which are replayed here from the last 25 frames of codes."""

    def __init__(self, model: SpeechTokenizer):
        self.model = model
        self.chunk = model.chunk_frames
        self.context = model.chunk_context
        self.frames = 0
        self.state: DecoderState | None = None  # made at the first push, when the batch size is known
        self.history: torch.Tensor | None = None  # last `context` frames of codes [B, ctx, 16]
        self.restarted_at = 0

    @property
    def started(self) -> bool:
        return self.state is not None

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n, 16] or [B, n, 16] (new frames only) -> float32 audio [n * 1920] or [B, n * 1920]."""
        squeeze = codes.dim() == 2
        if squeeze:
            codes = codes[None]
        codes = codes.to(self.model.device).clamp(min=0)
        if not self.started:
            self._reset(codes.shape[0])
        outs = []
        while codes.shape[1] > 0:
            n = min(codes.shape[1], self.room())
            part, codes = codes[:, :n], codes[:, n:]
            outs.append(self._run(part).float())
            self.remember(part)
        out = torch.cat(outs, dim=-1) if outs else torch.zeros(codes.shape[0], 0, device=codes.device)
        return out[0] if squeeze else out

    def room(self) -> int:
        """Frames the next push may take before an official chunk boundary (restarting first if one is
        due now)."""
        if self.chunk is None:
            return 1 << 62
        if self.frames > 0 and self.frames % self.chunk == 0 and self.restarted_at != self.frames:
            self._restart()
        return self.chunk - self.frames % self.chunk

    def remember(self, part: torch.Tensor) -> None:
        """Count frames that were decoded with this decoder's state, and keep them for a chunk restart."""
        self.frames += part.shape[1]
        if self.chunk is None:
            return
        # the history stays on the device of its first part (the engine's batcher keeps it on the host)
        hist = (
            part if self.history is None else torch.cat([self.history, part.to(self.history.device)], dim=1)
        )
        self.history = hist[:, max(0, hist.shape[1] - self.context) :]

    def _restart(self) -> None:
        """Mirror the official chunk boundary: fresh state, warmed on the context frames (output dropped)."""
        self.restarted_at = self.frames
        self._reset(self.history.shape[0])
        ctx = self.context if self.frames - self.context > 0 else self.frames
        if ctx > 0:
            self._run(self.history[:, self.history.shape[1] - ctx :])

    # where the state lives: here, in this object (the engine keeps its streams' states in slots instead)
    def _reset(self, batch: int) -> None:
        self.state = self.model.new_state(batch)

    def _run(self, codes: torch.Tensor) -> torch.Tensor:
        with plain_convolutions():  # eager pushes of varying lengths, as `decode`'s (the engine's are graphs)
            return self.model.run(codes, self.state)


@torch.inference_mode()
def push_batch(
    decoders: list[StreamingDecoder], codes: list[torch.Tensor], passes: list[int] | None = None
) -> list[torch.Tensor]:
    """`decoders[i].push(codes[i])` for many single-stream decoders of one model in few batched passes.

    Pushes of equal length that stay inside their decoder's chunk run as one batch (their states are
    stacked, run, and split back); the rest (a push crossing an official chunk boundary) run alone.
    Each output equals that decoder's own push within float tolerance. `passes`, when given, gets the
    number of streams decoded by each pass (a push that ran alone counts as 1)."""
    passes = [] if passes is None else passes
    out: list[torch.Tensor | None] = [None] * len(decoders)
    groups: dict[int, list[int]] = {}
    for i, (d, c) in enumerate(zip(decoders, codes)):
        if c.dim() != 2:
            raise ValueError(f"push_batch takes [n, 16] codes per decoder, got {tuple(c.shape)}")
        if not d.started:
            d._reset(1)
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
        state = stack_states([d.state for d in group])
        wav = model.run(batch, state).float()
        for j, (i, d, row_state) in enumerate(zip(idx, group, split_state(state))):
            d.state = row_state
            d.remember(batch[j : j + 1])
            out[i] = wav[j]
    return out
