"""Parity of our 12 Hz speech tokenizer with the official one: codes token for token, waveforms, streaming."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from utter_tts.codec.speech_tokenizer import SpeechTokenizer, push_batch
from utter_tts.errors import CheckpointError

WAVE_RTOL = 1e-4  # decode parity: max|ours - official| / max|official| (observed: 0.0, bit-identical)
STREAM_RTOL = 3e-5  # streaming vs decode(): same metric, fp32 (observed 4e-6 to 9.4e-6: GEMM-shape noise)
RMS_FLOOR = 0.02  # the reference waveform must be audible (tiny random checkpoints give RMS 0.12-0.17)
SR = 24000


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def folder(checkpoints):
    return checkpoints("base", "tiny-1.7b") / "speech_tokenizer"


@pytest.fixture(scope="module")
def official(folder):
    from tests.support.official import install_oracle_stubs

    install_oracle_stubs()
    from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer

    return Qwen3TTSTokenizer.from_pretrained(str(folder), device_map="cpu")


@pytest.fixture(scope="module")
def ours(folder):
    return SpeechTokenizer.from_dir(folder)


def official_encode(official, wav: torch.Tensor) -> torch.Tensor:
    return official.encode(wav.numpy(), sr=SR).audio_codes[0]


def official_decode(official, codes: list[torch.Tensor]) -> list[torch.Tensor]:
    wavs, sr = official.decode({"audio_codes": codes})
    assert sr == SR
    return [torch.from_numpy(w) for w in wavs]


def random_codes(n: int, seed: int, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 16) if batch is None else (batch, n, 16)
    return torch.randint(0, 2048, shape, generator=g)


def signals() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    t = lambda n: torch.arange(n, dtype=torch.float64) / SR  # noqa: E731
    chirp_t = t(36077)  # 18.8 frames
    chirp = 0.5 * torch.sin(2 * math.pi * (100 * chirp_t + 0.5 * 4000 * chirp_t**2 / chirp_t[-1]))
    tones_t = t(50000)
    env = 0.5 * (1 - torch.cos(2 * math.pi * 3 * tones_t))
    tones = env * (
        0.3 * torch.sin(2 * math.pi * 220 * tones_t) + 0.2 * torch.sin(2 * math.pi * 1375 * tones_t)
    )
    return {
        "noise_exact_frames": 0.3 * torch.randn(1920 * 12, generator=g),
        "chirp": chirp.float(),
        "tones": tones.float(),
        "short_under_one_frame": 0.3 * torch.randn(1000, generator=g),
        "speechlike_bursts": (0.4 * torch.randn(30001, generator=g))
        * (torch.rand(30001 // 2400 + 1, generator=g) > 0.4).float().repeat_interleave(2400)[:30001],
    }


# --- loading ---------------------------------------------------------------------------------------


def test_strict_keys_and_attributes(folder, ours):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        ckpt = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == ckpt  # every key, no extras, same shapes (from_dir loads with strict=True)
    assert (ours.sample_rate, ours.frame_samples, ours.num_codebooks) == (24000, 1920, 16)
    assert all(p.dtype == torch.float32 for p in ours.parameters())


def test_runtime_does_not_import_reference_packages():
    code = (
        "import sys, utter_tts.codec.speech_tokenizer;"
        "bad = [m for m in ('transformers', 'qwen_tts') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_files_raise_checkpoint_error(folder, tmp_path, missing):
    dst = tmp_path / "speech_tokenizer"
    shutil.copytree(folder, dst)
    (dst / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        SpeechTokenizer.from_dir(dst)


def test_missing_folder_and_bad_weights(tmp_path, folder):
    with pytest.raises(CheckpointError, match="config.json"):
        SpeechTokenizer.from_dir(tmp_path / "nowhere")
    dst = tmp_path / "st"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["decoder_config"]["num_hidden_layers"] += 1  # weights no longer match the config
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        SpeechTokenizer.from_dir(dst)


def test_bf16_loads_and_runs(folder):
    st = SpeechTokenizer.from_dir(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in st.parameters())
    codes = st.encode(signals()["chirp"])
    assert codes.dtype == torch.long and codes.shape == (19, 16)
    assert 0 <= int(codes.min()) and int(codes.max()) < 2048
    wav = st.decode(random_codes(20, seed=5))
    assert wav.dtype == torch.float32 and wav.shape == (20 * 1920,)
    assert torch.isfinite(wav).all() and rms(wav) > RMS_FLOOR


# --- encoder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(signals()))
def test_encode_matches_official_token_for_token(official, ours, name):
    wav = signals()[name]
    ref = official_encode(official, wav)
    got = ours.encode(wav)
    n_frames = math.ceil(wav.shape[0] / 1920)
    assert ref.shape == got.shape == (n_frames, 16)
    assert got.dtype == torch.long
    assert torch.equal(got, ref)
    # variety: a collapsed encoder (one code everywhere) would make equality meaningless
    assert got.unique().numel() >= min(8 * n_frames, 100)
    assert got[:, 0].unique().numel() >= min(n_frames, 4)


def test_encode_is_causal_per_frame(ours):
    """Codes of a whole-frame prefix are a prefix of the codes; a partial last frame is zero-padded."""
    wav = signals()["tones"]
    full = ours.encode(wav)
    assert torch.equal(ours.encode(wav[: 1920 * 9]), full[:9])
    partial = ours.encode(wav[: 1920 * 9 + 700])
    assert partial.shape == (10, 16) and torch.equal(partial[:9], full[:9])
    assert not torch.equal(partial[9], full[9])


def test_encode_fault_is_detected(folder, official):
    """A perturbed encoder weight or a swapped codebook order must break token equality."""
    wav = signals()["tones"]
    ref = official_encode(official, wav)
    st = SpeechTokenizer.from_dir(folder)
    with torch.no_grad():
        st.encoder.encoder.layers[0].conv.weight[0, 0, 3] += 0.05
    assert not torch.equal(st.encode(wav), ref)
    st = SpeechTokenizer.from_dir(folder)
    layers = st.encoder.quantizer.acoustic_residual_vector_quantizer.layers
    layers[0], layers[1] = layers[1], layers[0]  # residual codebook order
    got = st.encode(wav)
    assert torch.equal(got[:, 0], ref[:, 0]) and not torch.equal(got, ref)


def test_encode_use_streaming_config(folder, tmp_path):
    """HF Mimi pads through its cache (and drops a trailing partial frame) when use_streaming is set."""
    from tests.support.official import install_oracle_stubs

    install_oracle_stubs()
    from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer

    dst = tmp_path / "speech_tokenizer"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["encoder_config"]["use_streaming"] = True
    (dst / "config.json").write_text(json.dumps(cfg))
    ref_model = Qwen3TTSTokenizer.from_pretrained(str(dst), device_map="cpu")
    st = SpeechTokenizer.from_dir(dst)
    wav = signals()["speechlike_bursts"]
    ref = official_encode(ref_model, wav)
    assert ref.shape == (15, 16)  # 30001 samples: 15 whole frames, the 16th is dropped
    assert torch.equal(st.encode(wav), ref)


# --- decoder ---------------------------------------------------------------------------------------

# 330 frames: beyond the 72-frame attention window and across the official 300-frame chunk boundary
LONG = 330


@pytest.fixture(scope="module")
def long_case(official):
    codes = random_codes(LONG, seed=11)
    (ref,) = official_decode(official, [codes])
    return codes, ref


def test_decode_matches_official(ours, long_case):
    codes, ref = long_case
    assert ref.shape == (LONG * 1920,)
    assert rms(ref) > RMS_FLOOR
    assert (ref.abs() >= 1.0).float().mean() < 0.01  # not just the +-1 clamp
    got = ours.decode(codes)
    assert got.dtype == torch.float32
    assert rel_err(got, ref) < WAVE_RTOL


def test_decode_fault_is_detected(folder, long_case):
    """Each of these deviations must fail the parity check that the real model passes."""
    codes, ref = long_case
    st = SpeechTokenizer.from_dir(folder)
    with torch.no_grad():
        st.decoder.decoder[2].block[3].conv1.conv.weight[0, 0, 0] += 0.05
    assert rel_err(st.decode(codes[:40]), ref[: 40 * 1920]) > 10 * WAVE_RTOL

    st = SpeechTokenizer.from_dir(folder)
    swapped = codes[:, [1, 0, *range(2, 16)]]  # codebook order
    assert rel_err(st.decode(swapped[:40]), ref[: 40 * 1920]) > 10 * WAVE_RTOL

    # the sliding window is exercised: full causal attention diverges after frame 72
    st.decoder.pre_transformer.cfg.sliding_window = 10_000
    wide = st.decode(codes[:100])
    assert rel_err(wide[: 72 * 1920], ref[: 72 * 1920]) < WAVE_RTOL
    assert rel_err(wide, ref[: 100 * 1920]) > 10 * WAVE_RTOL


def test_decode_batch_with_padding_matches_official(official, ours):
    """Batched codes padded with -1 (the official convention): each item trimmed to its own length."""
    a, b = random_codes(40, seed=21), random_codes(25, seed=22)
    ref_a, ref_b = official_decode(official, [a, b])
    assert ref_a.shape == (40 * 1920,) and ref_b.shape == (25 * 1920,)
    batch = torch.full((2, 40, 16), -1, dtype=torch.long)
    batch[0], batch[1, :25] = a, b
    got = ours.decode(batch)
    assert got.shape == (2, 40 * 1920)
    assert rel_err(got[0], ref_a) < WAVE_RTOL
    assert rel_err(got[1, : 25 * 1920], ref_b) < WAVE_RTOL
    assert torch.all(got[1, 25 * 1920 :] == 0)
    assert rel_err(ours.decode(batch[1]), ref_b) < WAVE_RTOL  # 2-D: trimmed like the official


# --- streaming ---------------------------------------------------------------------------------------


def stream(st: SpeechTokenizer, codes: torch.Tensor, schedule: list[int]) -> torch.Tensor:
    sd = st.stream_decoder()
    outs, i, k = [], 0, 0
    n = codes.shape[-2]
    while i < n:
        step = schedule[k % len(schedule)]
        outs.append(sd.push(codes[..., i : i + step, :]))
        i, k = i + step, k + 1
    return torch.cat(outs, dim=-1)


@pytest.fixture(scope="module")
def small_chunks(folder, official):
    """Our model and the official chunked decode with 40-frame chunks (25 frames of context): the
    chunk-restart logic of the default 300 frames, exercised on 100 frames."""
    st = SpeechTokenizer.from_dir(folder)
    st.chunk_frames = 40
    codes = random_codes(100, seed=31)
    with torch.inference_mode():
        ref = official.model.decoder.chunked_decode(codes.T[None], chunk_size=40, left_context_size=25)
    return st, codes, ref[0, 0]


def test_decode_small_chunks_matches_official(small_chunks, ours):
    st, codes, ref = small_chunks
    assert rms(ref) > RMS_FLOOR
    assert rel_err(st.decode(codes), ref) < WAVE_RTOL
    # the restarts are exercised: one pass (default 300-frame chunks) agrees only up to frame 40
    single = ours.decode(codes)
    assert rel_err(single[: 40 * 1920], ref[: 40 * 1920]) < WAVE_RTOL
    assert rel_err(single[40 * 1920 :], ref[40 * 1920 :]) > 10 * WAVE_RTOL


@pytest.mark.parametrize(
    "schedule", [[1], [4], [7, 1, 33, 0, 2, 39, 5]], ids=["one-frame", "by4", "irregular"]
)
def test_streaming_matches_decode(small_chunks, schedule):
    st, codes, ref = small_chunks  # 100 frames: past the 72-frame KV window and two chunk restarts
    out = stream(st, codes, schedule)
    assert out.shape == ref.shape
    assert rel_err(out, st.decode(codes)) < STREAM_RTOL
    assert rel_err(out, ref) < STREAM_RTOL


@pytest.mark.parametrize("schedule", [[299, 2], [120, 250]], ids=["chunk-edge", "across-edge"])
def test_streaming_long_matches_official(ours, long_case, schedule):
    codes, ref = long_case  # the official 300-frame chunking
    out = stream(ours, codes, schedule)
    assert rel_err(out, ref) < STREAM_RTOL


def test_streaming_batched_and_full_context(folder):
    st = SpeechTokenizer.from_dir(folder)
    st.chunk_frames = None  # exact full-context streaming, no official chunk restarts
    codes = random_codes(80, seed=41, batch=2)
    full = st.decode(codes)
    out = stream(st, codes, [5, 3, 17])
    assert out.shape == (2, 80 * 1920)
    assert rel_err(out, full) < STREAM_RTOL
    assert st.stream_decoder().push(codes[:, :0]).shape == (2, 0)


def test_push_batch_equals_each_stream_alone(small_chunks, monkeypatch):
    """Streams at different frames (and across 40-frame chunk restarts) decoded together in batched
    pushes give each stream's own one-shot decode."""
    st, _, _ = small_chunks
    batch_sizes = []
    run = st.run
    monkeypatch.setattr(st, "run", lambda codes, state: batch_sizes.append(len(codes)) or run(codes, state))
    streams = [random_codes(n, seed=50 + i) for i, n in enumerate((90, 61, 77))]
    decoders = [st.stream_decoder() for _ in streams]
    outs: list[list[torch.Tensor]] = [[] for _ in streams]
    pos = [0, 9, 30]  # streams 1 and 2 start later: their states are younger
    for i in range(1, 3):
        outs[i].append(decoders[i].push(streams[i][: pos[i]]))
    # rounds of 4 frames (a first round of 1): equal pushes batch, a push across a restart runs alone
    step = 1
    while any(p < len(s) for p, s in zip(pos, streams)):
        live = [i for i in range(3) if pos[i] < len(streams[i])]
        parts = [streams[i][pos[i] : pos[i] + step] for i in live]
        for i, wav in zip(live, push_batch([decoders[i] for i in live], parts)):
            outs[i].append(wav)
            pos[i] += step
        step = 4
    sizes = list(batch_sizes)
    for i, codes in enumerate(streams):
        got = torch.cat(outs[i])
        assert got.shape == (len(codes) * 1920,)
        assert rel_err(got, st.decode(codes)) < STREAM_RTOL
    assert sizes.count(3) >= 5 and 2 in sizes and 1 in sizes  # batched; alone across restarts
    with pytest.raises(ValueError, match="codes per decoder"):
        push_batch(decoders[:1], [streams[0][None]])
