"""Reference-audio input: decode any common file or array to validated float32 mono at one sample rate."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import soxr

try:
    import av
except ImportError:  # arrays need no decoder; files and bytes do (PyAV is a declared dependency)
    av = None

from utter_tts.errors import AudioError

MIN_SAMPLE_RATE = 8000  # telephony; anything lower carries too little of the voice
MAX_SAMPLE_RATE = 384000  # the highest rate real converters produce; above is a unit mix-up
MAX_CHANNELS = 16  # bounds the channel axis when guessing the layout of a 2-D array
SILENCE_RMS = 1e-4  # -80 dBFS: below this the clip holds no usable voice
MAX_PEAK = 16.0  # float samples beyond this are integer PCM passed as float, not loud audio
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Containers only estimate duration for some streams (ADTS, VBR mp3 without a header), so the cheap
# pre-decode check rejects only clear cases; the decoded length is then checked exactly.
_DECLARED_SLACK = 1.25

# Integer PCM dtypes and the offset/scale that map them to [-1, 1).
_INT_SCALE = {
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
}


def load_audio(
    src: Any,
    sample_rate: int = 24000,
    *,
    max_seconds: float = 60.0,
    min_seconds: float = 1.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    param: str = "ref_audio",
) -> np.ndarray:
    """Decode, check and resample reference audio to float32 mono [T] at `sample_rate`.

    `src` is one of:
      - a path (str or os.PathLike) to an audio file;
      - bytes / bytearray / memoryview holding a whole file (wav, flac, mp3, ogg, opus, m4a, webm, ...);
      - a tuple (samples, sample_rate): samples a numpy array (or anything with __array__, e.g. a CPU
        torch tensor), either [T] or 2-D with channels on the shorter axis ([T, C] or [C, T]; at most
        16 channels). Float samples are taken as [-1, 1]; uint8/int16/int32 are PCM and get scaled.
        The rate must be an integer in [8000, 384000].

    Files are decoded with FFmpeg (PyAV), channels averaged to mono, and the result resampled with
    soxr "HQ"; for mono input that is bit-identical to the official librosa.resample(res_type="soxr_hq").

    Raises AudioError(param=param) when the input is of a wrong type, missing, empty, larger than
    `max_bytes`, not decodable, without an audio stream, has NaN/inf samples, an unsupported rate,
    is shorter than `min_seconds` or longer than `max_seconds`, or is silent (RMS < 1e-4, -80 dBFS).
    """
    if isinstance(src, (str, os.PathLike)):
        wav, sr = _decode_path(src, max_seconds, max_bytes, param)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        wav, sr = _decode_bytes(bytes(src), max_seconds, max_bytes, param)
    elif isinstance(src, tuple):
        wav, sr = _from_array(src, param)
    else:
        raise AudioError(
            f"{param} must be a file path, the bytes of an audio file or a (samples, sample_rate) tuple, "
            f"not {type(src).__name__}",
            param=param,
        )
    _validate(wav, sr, min_seconds, max_seconds, param)
    if sr != sample_rate:
        wav = _resample(wav, sr, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def _resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr "HQ", then the length set to ceil(T * sr_out / sr_in) (zero-padded or cut by a sample or
    two), exactly as librosa.resample(res_type="soxr_hq") in the official voice-clone path."""
    out = soxr.resample(wav, sr_in, sr_out, quality="HQ")
    n = int(np.ceil(wav.shape[0] * (float(sr_out) / sr_in)))
    if out.shape[0] >= n:
        return out[:n]
    return np.pad(out, (0, n - out.shape[0]))


# ---------------------------------------------------------------- arrays


def _check_rate(sr: Any, param: str) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer, float, np.floating)):
        raise AudioError(f"{param} sample rate must be an integer, not {type(sr).__name__}", param=param)
    if isinstance(sr, (float, np.floating)) and not float(sr).is_integer():
        raise AudioError(f"{param} sample rate must be a whole number of Hz, got {sr}", param=param)
    sr = int(sr)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{param} sample rate {sr} Hz is outside the supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            param=param,
        )
    return sr


def _from_array(src: tuple, param: str) -> tuple[np.ndarray, int]:
    if len(src) != 2:
        raise AudioError(f"{param} tuple must be (samples, sample_rate), got {len(src)} items", param=param)
    samples, sr = src
    if not isinstance(samples, np.ndarray):
        if not hasattr(samples, "__array__"):
            raise AudioError(
                f"{param} samples must be a numpy array, not {type(samples).__name__}", param=param
            )
        try:
            samples = np.asarray(samples)
        except Exception as e:  # e.g. a CUDA or bfloat16 tensor
            raise AudioError(
                f"{param} samples of type {type(samples).__name__} cannot become a numpy array ({e}); "
                "pass a float32 numpy array",
                param=param,
            ) from e
    sr = _check_rate(sr, param)
    if samples.dtype in _INT_SCALE:
        offset, scale = _INT_SCALE[samples.dtype]
        samples = (samples.astype(np.float32) - offset) / scale
    elif samples.dtype.kind == "f":
        samples = samples.astype(np.float32, copy=False)
    else:
        raise AudioError(
            f"{param} samples have dtype {samples.dtype}; "
            "use float32/float64 in [-1, 1] or int16/int32/uint8 PCM",
            param=param,
        )
    if samples.size == 0:
        raise AudioError(f"{param} is zero-length (no samples)", param=param)
    if samples.ndim == 2:
        ch_axis = int(np.argmin(samples.shape))
        if samples.shape[ch_axis] > MAX_CHANNELS:
            raise AudioError(
                f"{param} samples of shape {samples.shape} are ambiguous: a 2-D array needs channels "
                f"(at most {MAX_CHANNELS}) on one axis and time on the other",
                param=param,
            )
        samples = samples.mean(axis=ch_axis, dtype=np.float32)
    elif samples.ndim != 1:
        raise AudioError(
            f"{param} samples must be 1-D [T] or 2-D [T, C] / [C, T], got shape {samples.shape}", param=param
        )
    return samples, sr


# ---------------------------------------------------------------- files


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _decode_path(path: str | os.PathLike, max_seconds: float, max_bytes: int, param: str):
    text = os.fspath(path)
    shown = repr(text if len(text) <= 200 else text[:200] + "...")
    if isinstance(text, str) and text.startswith(("http://", "https://", "data:")):
        raise AudioError(
            f"{param} looks like a URL or data URI ({shown[:60]}...); pass a local path or the file's bytes",
            param=param,
        )
    if not os.path.exists(path):
        raise AudioError(f"{param} file not found: {shown}", param=param)
    if os.path.isdir(path):
        raise AudioError(f"{param} path {shown} is a directory, not an audio file", param=param)
    size = os.path.getsize(path)
    if size == 0:
        raise AudioError(f"{param} file {shown} is empty (0 bytes)", param=param)
    if size > max_bytes:
        raise AudioError(
            f"{param} file {shown} is {_size(size)}; the limit is {_size(max_bytes)}", param=param
        )
    return _decode(os.fspath(path), f"{param} file {shown}", max_seconds, param)


def _decode_bytes(data: bytes, max_seconds: float, max_bytes: int, param: str):
    if not data:
        raise AudioError(f"{param} is empty (0 bytes)", param=param)
    if len(data) > max_bytes:
        raise AudioError(f"{param} is {_size(len(data))}; the limit is {_size(max_bytes)}", param=param)
    return _decode(io.BytesIO(data), param, max_seconds, param)


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    """Duration the container states, without decoding; None when it states none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode(target: str | io.BytesIO, what: str, max_seconds: float, param: str) -> tuple[np.ndarray, int]:
    try:
        if av is None:
            raise OSError("PyAV is not installed")
        container = av.open(target, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise AudioError(f"{what} is not a readable audio file ({_reason(e)})", param=param) from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise AudioError(
                f"{what} is not audio: it has no audio stream (found: {', '.join(kinds)})", param=param
            )
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > max_seconds * _DECLARED_SLACK + 1.0:
            raise AudioError(
                f"{what} is too long: {declared:.1f} s; the limit is {max_seconds:g} s", param=param
            )
        chunks: list[np.ndarray] = []
        sr = 0
        total = 0
        # Only the sample format is converted (to float planar); rate and channels stay as decoded.
        converter = av.AudioResampler(format="fltp")
        try:
            for frame in container.decode(stream):
                if sr == 0:
                    sr = frame.sample_rate
                for out in converter.resample(frame):
                    chunks.append(out.to_ndarray())
                    total += out.samples
                # stop early on streams whose length the container did not tell
                if total > max_seconds * sr:
                    raise AudioError(
                        f"{what} is too long: more than the limit of {max_seconds:g} s", param=param
                    )
            for out in converter.resample(None):
                chunks.append(out.to_ndarray())
        except AudioError:
            raise
        except (av.error.FFmpegError, ValueError) as e:  # corrupt packets, or a mid-stream format change
            raise AudioError(f"{what} could not be decoded ({_reason(e)})", param=param) from e
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise AudioError(f"{what} contains no audio samples", param=param)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{what} has a sample rate of {sr} Hz, outside the supported "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            param=param,
        )
    wav = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)  # [C, T] -> mono
    return wav, sr


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '")[0]  # PyAV appends the file name (or '<none>'), already in the message


# ---------------------------------------------------------------- checks


def _validate(wav: np.ndarray, sr: int, min_seconds: float, max_seconds: float, param: str) -> None:
    if not np.isfinite(wav).all():
        raise AudioError(f"{param} contains NaN or infinite samples", param=param)
    seconds = wav.shape[0] / sr
    if seconds < min_seconds:
        raise AudioError(
            f"{param} is too short: {seconds:.2f} s; at least {min_seconds:g} s is needed", param=param
        )
    if seconds > max_seconds:
        raise AudioError(f"{param} is too long: {seconds:.1f} s; the limit is {max_seconds:g} s", param=param)
    peak = float(np.abs(wav).max())
    if peak > MAX_PEAK:
        raise AudioError(
            f"{param} samples reach {peak:.3g}; float audio must lie in [-1, 1] "
            "(pass integer PCM as an int16/int32 array, not cast to float)",
            param=param,
        )
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(
            f"{param} is silent (RMS {rms:.1e} is below {SILENCE_RMS:g}, i.e. -80 dBFS)", param=param
        )
