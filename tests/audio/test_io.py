"""load_audio: real files in every common format and rate, arrays, and each kind of bad input."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile as sf

from utter_tts.audio.io import load_audio
from utter_tts.errors import AudioError

OUT_SR = 24000
DUR = 1.2
F0 = 440.0
# Stereo test files carry the tone at different levels per channel; the mono mix is their mean.
LEVELS = {1: (0.5,), 2: (0.6, 0.2)}


def _tone(sr: int, channels: int, seconds: float = DUR, freq: float = F0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return np.stack([a * np.sin(2 * np.pi * freq * t) for a in LEVELS[channels]]).astype(np.float32)


def encode(x: np.ndarray, sr: int, fmt: str, codec: str, options: dict | None = None) -> bytes:
    """Encode float planar samples [C, T] with PyAV into a whole file in memory."""
    buf = io.BytesIO()
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout, options=options or {})
        for i in range(0, x.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 4096]), "fltp", layout)
            frame.sample_rate = sr
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _dominant_hz(y: np.ndarray, sr: int = OUT_SR) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)), n=8 * len(y)))  # zero-padded: 0.1 Hz bins
    return float(np.argmax(spec)) * sr / (8 * len(y))


def _rms_middle(y: np.ndarray) -> float:
    mid = y[len(y) // 4 : 3 * len(y) // 4]  # skips codec fade-in/priming at the edges
    return float(np.sqrt(np.mean(mid.astype(np.float64) ** 2)))


# (name, container, codec, encoder options, lossless, rates the encoder accepts)
ALL_RATES = (8000, 16000, 22050, 44100, 48000)
FORMATS = [
    ("wav16", "wav", "pcm_s16le", None, True, ALL_RATES),
    ("wav24", "wav", "pcm_s24le", None, True, ALL_RATES),
    ("wav32", "wav", "pcm_s32le", None, True, ALL_RATES),
    ("wavf32", "wav", "pcm_f32le", None, True, ALL_RATES),
    ("wav_u8", "wav", "pcm_u8", None, False, (16000,)),  # 8-bit: lossy in effect
    ("flac", "flac", "flac", None, True, ALL_RATES),
    ("mp3", "mp3", "libmp3lame", None, False, ALL_RATES),
    ("vorbis", "ogg", "vorbis", {"strict": "experimental"}, False, ALL_RATES),
    ("opus", "ogg", "libopus", None, False, (8000, 16000, 48000)),
    ("m4a", "ipod", "aac", None, False, ALL_RATES),
    ("webm", "webm", "libopus", None, False, (48000,)),
]
CASES = [
    pytest.param(name, fmt, codec, opts, lossless, sr, ch, id=f"{name}-{sr}-{ch}ch")
    for name, fmt, codec, opts, lossless, rates in FORMATS
    for sr in rates
    for ch in (1, 2)
    # FFmpeg's own vorbis encoder only writes stereo; mono vorbis is covered by test_ogg_vorbis_mono
    if not (name == "vorbis" and ch == 1)
]


@pytest.mark.parametrize("name,fmt,codec,opts,lossless,sr,ch", CASES)
def test_formats_rates_channels(name, fmt, codec, opts, lossless, sr, ch):
    data = encode(_tone(sr, ch), sr, fmt, codec, opts)
    y = load_audio(data)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    # codec priming/padding adds at most one or two frames (AAC: 2048 samples at 8 kHz = 0.26 s)
    slack = 0.005 if lossless else 0.3
    assert DUR * OUT_SR - 0.005 * OUT_SR <= len(y) <= (DUR + slack) * OUT_SR
    assert abs(_dominant_hz(y) - F0) < 3.0
    expected_rms = np.mean(LEVELS[ch]) / np.sqrt(2)  # channels averaged, then a sine's RMS
    assert _rms_middle(y) == pytest.approx(expected_rms, rel=0.01 if lossless else 0.1)


def test_ogg_vorbis_mono(tmp_path):
    path = tmp_path / "mono.ogg"
    sf.write(path, _tone(44100, 1)[0], 44100, format="OGG", subtype="VORBIS")
    y = load_audio(path)
    # FFmpeg does not trim libsndfile's final Vorbis block to the last granule: ~20 ms extra at the end
    assert 0 <= len(y) - DUR * OUT_SR < 0.05 * OUT_SR
    assert abs(_dominant_hz(y) - F0) < 3.0


def test_path_str_and_pathlike_equal_bytes(tmp_path):
    data = encode(_tone(16000, 2), 16000, "flac", "flac")
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    a, b, c = load_audio(path), load_audio(str(path)), load_audio(bytearray(data))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_lossless_24k_is_untouched():
    """At the target rate a float WAV comes back sample for sample (no resampling)."""
    x = _tone(OUT_SR, 1)
    y = load_audio(encode(x, OUT_SR, "wav", "pcm_f32le"))
    np.testing.assert_array_equal(y, x[0])


def test_other_target_rate():
    y = load_audio(encode(_tone(44100, 1), 44100, "wav", "pcm_s16le"), sample_rate=16000)
    assert len(y) == DUR * 16000
    assert abs(_dominant_hz(y, 16000) - F0) < 3.0


def test_resampling_equals_official_librosa_path():
    """The official voice-clone path resamples with librosa.resample (soxr_hq); ours matches bit for bit."""
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    for sr in (8000, 16000, 22050, 44100, 48000):
        x = (0.3 * rng.standard_normal(int(1.37 * sr))).astype(np.float32)
        np.testing.assert_array_equal(load_audio((x, sr)), librosa.resample(x, orig_sr=sr, target_sr=OUT_SR))


# ---------------------------------------------------------------- arrays


@pytest.mark.parametrize("layout", ["mono", "TC", "CT"])
def test_array_layouts(layout):
    x = _tone(16000, 2)
    arr = {"mono": x.mean(axis=0), "TC": x.T.copy(), "CT": x}[layout]
    y = load_audio((arr, 16000))
    assert abs(len(y) - DUR * OUT_SR) <= 1
    assert _rms_middle(y) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.int32, np.uint8])
def test_array_dtypes(dtype):
    x = _tone(OUT_SR, 1)[0]
    if dtype == np.int16:
        arr = np.round(x * 32767).astype(np.int16)
    elif dtype == np.int32:
        arr = np.round(x * 2147483647).astype(np.int32)
    elif dtype == np.uint8:
        arr = np.round(x * 127 + 128).astype(np.uint8)
    else:
        arr = x.astype(np.float64)
    y = load_audio((arr, OUT_SR))
    np.testing.assert_allclose(y, x, atol=1.0 / 64)


def test_array_torch_tensor_and_numpy_rate():
    torch = pytest.importorskip("torch")
    x = _tone(22050, 1)[0]
    y = load_audio((torch.from_numpy(x), np.int64(22050)))
    np.testing.assert_array_equal(y, load_audio((x, 22050)))


# ---------------------------------------------------------------- bad input


def _raises(match: str, src, param: str = "ref_audio", **kw) -> AudioError:
    with pytest.raises(AudioError, match=match) as info:
        load_audio(src, param=param, **kw)
    assert info.value.param == param
    assert info.value.code == "invalid_audio"
    return info.value


def _wav_bytes(x: np.ndarray, sr: int, codec: str = "pcm_s16le") -> bytes:
    return encode(x.reshape(1, -1).astype(np.float32), sr, "wav", codec)


def test_text_file_and_text_bytes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 50)
    _raises("no audio stream", path)  # FFmpeg reads text files as "tty" video
    _raises("not a readable audio file", path.read_bytes())


def test_random_bytes():
    rng = np.random.default_rng(0)
    _raises("not a readable audio file", rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())


def test_truncated_header():
    _raises("not a readable audio file", b"RIFF\0\0\0\0WAVEfmt ")


def test_video_only_file():
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    _raises(r"no audio stream \(found: video\)", buf.getvalue())


def test_empty_inputs(tmp_path):
    _raises(r"empty \(0 bytes\)", b"")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    _raises(r"empty \(0 bytes\)", empty)
    _raises("zero-length", (np.zeros(0, np.float32), 24000))
    # a valid WAV header with no sample data
    header = b"RIFF" + struct.pack("<I", 36) + b"WAVE"
    header += (
        b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", 0)
    )
    _raises("contains no audio samples", header)


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope" / "voice.wav"
    err = _raises("file not found", missing)
    assert str(missing) in err.message
    _raises("is a directory", tmp_path)
    _raises("looks like a URL or data URI", "data:audio/wav;base64,UklGRiQAAABXQVZF")
    _raises("looks like a URL or data URI", "https://example.com/voice.wav")


def test_silent():
    _raises("silent", (np.zeros(24000, np.float32), 24000))
    quiet = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 5e-5
    _raises("silent", (quiet, 24000))
    _raises("silent", _wav_bytes(np.zeros(16000), 16000))
    # channels in antiphase cancel in the mono mix
    x = _tone(16000, 1)[0]
    _raises("silent", (np.stack([x, -x]), 16000))


def test_too_short():
    _raises(r"too short: 0\.50 s", (_tone(16000, 1, 0.5)[0], 16000))
    _raises("too short", _wav_bytes(_tone(16000, 1, 0.5), 16000))
    load_audio((_tone(16000, 1, 0.5)[0], 16000), min_seconds=0.25)


def test_too_long_array_and_file():
    _raises(r"too long: 61\.0 s", (_tone(8000, 1, 61.0)[0], 8000))
    _raises("too long", _wav_bytes(_tone(8000, 1, 3.0), 8000), max_seconds=2.5)


def test_too_long_rejected_before_decoding(monkeypatch):
    """A 100 s file is refused from the length its container states, before any frame is decoded."""
    data = encode(_tone(8000, 1, 100.0), 8000, "flac", "flac")

    def no_decoding(*args, **kwargs):
        raise AssertionError("load_audio decoded a file whose header already says it is too long")

    monkeypatch.setattr(av, "AudioResampler", no_decoding)
    _raises(r"too long: 100\.0 s", data)


def test_too_long_stops_while_decoding():
    """ADTS AAC states no exact length; the decoder stops once past the limit."""
    data = encode(_tone(16000, 1, 2.6), 16000, "adts", "aac")
    _raises("too long: more than the limit of 2 s", data, max_seconds=2.0, min_seconds=0.5)


def test_nan_and_inf():
    x = _tone(16000, 1)[0]
    x[100] = np.nan
    _raises("NaN or infinite", (x, 16000))
    x[100] = np.inf
    _raises("NaN or infinite", (x, 16000))
    _raises("NaN or infinite", _wav_bytes(x, 16000, codec="pcm_f32le"))


def test_int_pcm_cast_to_float():
    x = np.round(_tone(16000, 1)[0] * 32767).astype(np.float32)
    _raises(r"must lie in \[-1, 1\]", (x, 16000))


@pytest.mark.parametrize(
    "sr,match",
    [
        (0, "outside the supported"),
        (-16000, "outside the supported"),
        (4000, "outside the supported"),
        (500_000, "outside the supported"),
        (16000.5, "whole number"),
        ("16000", "must be an integer, not str"),
        (True, "must be an integer, not bool"),
        (None, "must be an integer, not NoneType"),
    ],
)
def test_bad_sample_rates(sr, match):
    _raises(match, (_tone(16000, 1)[0], sr))


def test_file_with_unsupported_rate():
    _raises("sample rate of 4000 Hz", _wav_bytes(_tone(4000, 1), 4000))


@pytest.mark.parametrize(
    "src,match",
    [
        (None, "not NoneType"),
        (12345, "not int"),
        ([0.1, 0.2], "not list"),
        ({"audio": b""}, "not dict"),
        (([0.1] * 24000, 24000), "numpy array, not list"),
        ((np.zeros(24000, np.float32),), r"\(samples, sample_rate\), got 1 items"),
        ((np.zeros((24000, 2, 2), np.float32), 24000), "got shape"),
        ((np.zeros((40, 40000), np.float32), 24000), "ambiguous"),
        ((np.zeros(24000, np.complex64), 24000), "dtype complex64"),
        ((np.zeros(24000, bool), 24000), "dtype bool"),
    ],
    ids=["none", "int", "list", "dict", "list-samples", "1-tuple", "3d", "40ch", "complex", "bool"],
)
def test_wrong_types_and_shapes(src, match):
    _raises(match, src)


def test_max_bytes(tmp_path):
    data = _wav_bytes(_tone(16000, 1), 16000)
    _raises(f"is {len(data)} bytes; the limit is 1000 bytes", data, max_bytes=1000)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    _raises(f"is {len(data)} bytes; the limit is 1000 bytes", path, max_bytes=1000)
    _raises(r"is 0\.4 MB; the limit is 0\.2 MB", data * 10, max_bytes=200_000)


def test_param_name_is_carried():
    err = _raises("silent", (np.zeros(24000, np.float32), 24000), param="voice_sample")
    assert err.message.startswith("voice_sample ")
