"""ECAPA-TDNN speaker encoder and its log-mel front end (the x-vector of Qwen3-TTS voice cloning)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor, nn

from utter_tts.model.config import SpeakerEncoderConfig

# Front-end settings the checkpoints were trained with (24 kHz audio only).
SAMPLE_RATE = 24000
N_FFT = 1024
N_MELS = 128
HOP = 256
WIN = 1024
FMIN = 0.0
FMAX = 12000.0
LOG_FLOOR = 1e-5  # magnitudes are clamped here before the log so silence gives log(1e-5), not -inf
MAG_EPS = 1e-9  # added to |X|^2 before the sqrt, as the official front end does


# ---------------------------------------------------------------- mel front end


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory scale: linear (3 bins per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    lin = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, lin)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of _hz_to_mel."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    lin = mel * f_sp
    log = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log, lin)


@functools.lru_cache(maxsize=8)
def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float | None = FMAX,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, [n_mels, n_fft // 2 + 1] float32.

    Same formula as librosa.filters.mel(htk=False, norm="slaney", dtype=float32); the test checks
    that they are equal."""
    if fmax is None:
        fmax = sample_rate / 2.0
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    # n_mels + 2 edges: filter i rises from edge i to edge i+1 and falls to edge i+2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    dist = edges[:, None] - fft_hz[None, :]
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    # Rounded to float32 before and after the norm, as librosa does, so the two agree bit for bit.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    # Slaney norm: each triangle has unit area in Hz, so wide high bands are not louder
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def mel_spectrogram(
    wav: Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    hop: int = HOP,
    win: int = WIN,
    fmin: float = FMIN,
    fmax: float | None = FMAX,
) -> Tensor:
    """Natural-log mel magnitudes of float audio in [-1, 1]: [B, T] -> [B, n_mels, frames].

    frames = (T + 2 * pad - n_fft) // hop + 1 with pad = (n_fft - hop) // 2, i.e. about T / hop.
    Always computed in float32 (a bf16 STFT would lose the quiet bands)."""
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    wav = wav.float()
    pad = (n_fft - hop) // 2
    if wav.shape[-1] <= pad:
        raise ValueError(f"audio of {wav.shape[-1]} samples is too short for a mel frame (needs > {pad})")
    # Reflect-pad by (n_fft - hop) / 2 and run an uncentred STFT: frame k is centred on k * hop + hop / 2.
    wav = nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(win, device=wav.device)
    spec = torch.stft(
        wav, n_fft, hop_length=hop, win_length=win, window=window, center=False, return_complex=True
    )
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAG_EPS)
    basis = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, float(fmin), fmax)).to(wav.device)
    return torch.log(torch.clamp(basis @ mag, min=LOG_FLOOR))


# ---------------------------------------------------------------- ECAPA-TDNN


def _conv(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    # "same" length output with reflected edges, as the checkpoints were trained
    return nn.Conv1d(cin, cout, kernel, dilation=dilation, padding="same", padding_mode="reflect")


class TDNN(nn.Module):
    """Dilated 1-D conv + ReLU (one time-delay layer)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = _conv(cin, cout, kernel, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))


class Res2Net(nn.Module):
    """Split channels into `scale` groups; group i (i >= 1) sees its own slice plus group i-1's output,
    which grows the receptive field inside one block. Group 0 passes through untouched."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        parts = list(torch.chunk(x, self.scale, dim=1))
        prev = None
        for i, block in enumerate(self.blocks, start=1):
            prev = block(parts[i] if prev is None else parts[i] + prev)
            parts[i] = prev
        return torch.cat(parts, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged activations."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.conv1 = _conv(channels, bottleneck)
        self.conv2 = _conv(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.conv2(torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gate


class SERes2NetBlock(nn.Module):
    """1x1 TDNN -> Res2Net -> 1x1 TDNN -> squeeze-excite, with a residual connection."""

    def __init__(self, cin: int, cout: int, scale: int, se_channels: int, kernel: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNN(cin, cout, 1, 1)
        self.res2net_block = Res2Net(cout, scale, kernel, dilation)
        self.tdnn2 = TDNN(cout, cout, 1, 1)
        self.se_block = SqueezeExcite(cout, se_channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _weighted_stats(x: Tensor, w: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Mean and std over time of x [B, C, L] under weights w that sum to 1 over L."""
    mean = (w * x).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, torch.sqrt(var.clamp(min=eps))  # the floor keeps the sqrt's gradient finite


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and std over time, the attention conditioned on the global
    (uniform) mean and std so it can weigh frames against the whole utterance: [B, C, L] -> [B, 2C]."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNN(channels * 3, attention_channels, 1, 1)
        self.conv = _conv(attention_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[2]
        # Written as a weighted sum with weights 1/L (not .mean()) to round like the reference.
        uniform = torch.full((1, 1, length), 1.0 / length, dtype=x.dtype, device=x.device)
        mean, std = _weighted_stats(x, uniform)
        ctx = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attn = torch.softmax(self.conv(torch.tanh(self.tdnn(ctx))), dim=2)
        mean, std = _weighted_stats(x, attn)
        return torch.cat([mean, std], dim=1)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN (Desplanques et al. 2020): log-mels [B, frames, mel_dim] -> speaker vector [B, enc_dim].

    Parameter names follow the checkpoint's `speaker_encoder.*` keys. All items of a batch must have
    the same number of frames (there is no padding mask). Frames must exceed the largest reflect pad
    (max dilation * (kernel - 1) / 2, i.e. 4 with the shipped config)."""

    def __init__(self, cfg: SpeakerEncoderConfig):
        super().__init__()
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        if not len(ch) == len(ks) == len(dil) or len(ch) < 3:
            raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations need one equal length >= 3")
        self.cfg = cfg
        blocks: list[nn.Module] = [TDNN(cfg.mel_dim, ch[0], ks[0], dil[0])]
        for i in range(1, len(ch) - 1):
            blocks.append(
                SERes2NetBlock(ch[i - 1], ch[i], cfg.enc_res2net_scale, cfg.enc_se_channels, ks[i], dil[i])
            )
        self.blocks = nn.ModuleList(blocks)
        # multi-layer feature aggregation over the SE-Res2Net outputs (ch[-1] = sum of their widths)
        self.mfa = TDNN(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatsPool(ch[-1], cfg.enc_attention_channels)
        self.fc = _conv(ch[-1] * 2, cfg.enc_dim)

    def forward(self, mels: Tensor) -> Tensor:
        x = mels.transpose(1, 2)  # convs run over time: [B, mel_dim, frames]
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs[1:], dim=1))  # the first TDNN's output is not aggregated
        return self.fc(self.asp(x).unsqueeze(2)).squeeze(2)


@torch.no_grad()
def speaker_embedding(encoder: SpeakerEncoder, wav_24k: np.ndarray | Tensor) -> Tensor:
    """Speaker vector [enc_dim] of one mono 24 kHz clip, in the encoder's dtype and device.

    Mels are computed in float32 on the encoder's device, then cast to the encoder's dtype, as the
    official extract_speaker_embedding does. Resampling to 24 kHz is the caller's job (load_audio)."""
    param = next(encoder.parameters())
    if isinstance(wav_24k, np.ndarray):
        wav_24k = torch.from_numpy(np.ascontiguousarray(wav_24k, dtype=np.float32))
    wav = torch.as_tensor(wav_24k)
    if wav.dim() != 1:
        raise ValueError(f"speaker_embedding takes one mono clip [T], got shape {tuple(wav.shape)}")
    mels = mel_spectrogram(wav.to(param.device).unsqueeze(0)).transpose(1, 2)
    return encoder(mels.to(param.dtype))[0]
