"""Encoding to every response format decodes back (PyAV) at the right length and rate; speed keeps pitch."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from utter_tts.audio.encode import FORMATS, AudioEncoder, encode
from utter_tts.errors import InvalidInput

SR = 24000


def tone(freq: float = 220.0, seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def decode(data: bytes, fmt: str, pcm_rate: int = SR) -> tuple[np.ndarray, int]:
    """Decode with PyAV (ffmpeg); raw pcm needs its layout spelled out."""
    kwargs = {}
    if fmt == "pcm":
        kwargs = dict(format="s16le", options={"sample_rate": str(pcm_rate), "ch_layout": "mono"})
    with av.open(io.BytesIO(data), **kwargs) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().astype(np.float32) for f in container.decode(stream)]
        rate = pcm_rate if fmt == "pcm" else stream.rate
    pcm = np.concatenate(frames, axis=1)[0]
    if pcm.dtype != np.float32 or np.abs(pcm).max() > 2:
        pcm = pcm / 32768.0
    return pcm, rate


def f0(x: np.ndarray, sr: int) -> float:
    """Fundamental frequency of a steady tone: FFT peak refined by parabolic interpolation."""
    x = x[len(x) // 4 : 3 * len(x) // 4]
    x = x * np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x, n=8 * len(x)))
    k = int(np.argmax(spec))
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k * sr / (8 * len(x))


# Codecs add a little priming/padding (mp3 and aac frames); 0.1 s covers it, a wrong rate or a dropped
# chunk would not fit.
TOLERANCE_S = 0.1


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streaming"])
def test_every_format_decodes_back_to_the_right_length_and_rate(fmt, streaming):
    audio = tone(seconds=1.5)
    enc = AudioEncoder(fmt, input_rate=SR, streaming=streaming)
    pieces = [enc.feed(audio[i : i + 1200]) for i in range(0, len(audio), 1200)]
    pieces.append(enc.finish())
    pcm, rate = decode(b"".join(pieces), fmt)
    assert rate in (SR, 48000)  # ffmpeg always decodes Ogg Opus at 48 kHz
    assert abs(len(pcm) / rate - 1.5) < TOLERANCE_S
    assert abs(f0(pcm, rate) - 220.0) < 2.0
    if streaming:
        # bytes come out while feeding, not only at the end: what makes chunked responses stream
        assert sum(1 for p in pieces[:-1] if p) >= 5


@pytest.mark.parametrize(
    "fmt,rate", [("wav", 16000), ("mp3", 44100), ("flac", 48000), ("pcm", 8000), ("aac", 48000)]
)
def test_output_sample_rate(fmt, rate):
    pcm, got = decode(encode(tone(seconds=1.0), SR, fmt, sample_rate=rate), fmt, pcm_rate=rate)
    assert got == rate
    assert abs(len(pcm) / rate - 1.0) < TOLERANCE_S
    assert abs(f0(pcm, rate) - 220.0) < 2.0


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_speed_changes_duration_but_not_pitch(speed):
    pcm, rate = decode(encode(tone(seconds=2.0), SR, "wav", speed=speed), "wav")
    assert abs(len(pcm) / rate - 2.0 / speed) < 0.05 + 0.02 / speed
    assert abs(f0(pcm, rate) - 220.0) < 3.0, "atempo must not shift pitch (resampling would)"


def test_streaming_speed_matches_whole_clip():
    audio = tone(seconds=2.0)
    enc = AudioEncoder("pcm", speed=1.5)
    data = b"".join(enc.encode_all(audio[i : i + 480] for i in range(0, len(audio), 480)))
    pcm, rate = decode(data, "pcm")
    assert abs(len(pcm) / rate - 2.0 / 1.5) < 0.05
    assert abs(f0(pcm, rate) - 220.0) < 3.0


def test_pcm_is_raw_s16le_of_the_input():
    audio = tone(seconds=0.5)
    data = encode(audio, SR, "pcm")
    assert len(data) == 2 * len(audio)
    back = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    assert np.max(np.abs(back - audio)) < 1e-3


def test_wav_whole_file_has_exact_header_sizes():
    data = encode(tone(seconds=0.5), SR, "wav")
    assert data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") == len(data) - 8


def test_wav_is_the_plain_44_byte_header_and_the_samples():
    """The package's one WAV writer (CLI files, utter's routes): no encoder tag between header and data."""
    audio = tone(seconds=0.5)
    data = encode(audio, SR, "wav")
    assert data[36:40] == b"data" and int.from_bytes(data[40:44], "little") == 2 * len(audio)
    assert len(data) == 44 + 2 * len(audio)
    back = np.frombuffer(data[44:], "<i2").astype(np.float32) / 32768.0
    assert np.max(np.abs(back - audio)) < 1e-3


def test_out_of_range_samples_are_clipped_not_wrapped():
    loud = np.array([2.0, -3.0, np.nan, np.inf] * 100, dtype=np.float32)
    back = np.frombuffer(encode(loud, SR, "pcm"), "<i2")
    assert back.max() <= 32767 and back.min() >= -32768
    assert back[0] > 30000 and back[1] < -30000 and back[2] == 0


def test_empty_audio_still_makes_a_valid_file():
    data = encode(np.zeros(0, np.float32), SR, "wav")
    assert data[:4] == b"RIFF"


@pytest.mark.parametrize(
    "kwargs,param,code",
    [
        (dict(format="ogg"), "response_format", "unsupported_format"),
        (dict(format="wav", speed=0.1), "speed", "invalid_speed"),
        (dict(format="wav", speed=float("nan")), "speed", "invalid_speed"),
        (dict(format="opus", sample_rate=44100), "sample_rate", "unsupported_sample_rate"),
        (dict(format="wav", sample_rate=12345), "sample_rate", "unsupported_sample_rate"),
    ],
)
def test_bad_settings_raise_invalid_input(kwargs, param, code):
    with pytest.raises(InvalidInput) as e:
        AudioEncoder(**kwargs)
    assert e.value.param == param and e.value.code == code
