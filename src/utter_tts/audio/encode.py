"""Encode float32 mono audio to mp3, opus, aac, flac, wav or raw pcm with PyAV, whole or incrementally."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
import numpy as np

from utter_tts.errors import InvalidInput

MIN_SPEED = 0.25
MAX_SPEED = 4.0


@dataclass(frozen=True)
class AudioFormat:
    """How one response_format is produced: container, codec, defaults and the rates it can carry."""

    name: str
    container: str
    codec: str
    media_type: str
    extension: str
    bit_rate: int | None
    sample_rates: tuple[int, ...]


_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_PCM_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", "mp3", "libmp3lame", "audio/mpeg", "mp3", 64_000, _MPEG_RATES),
    # OpenAI returns Opus in an Ogg container; libopus only takes these five rates.
    "opus": AudioFormat(
        "opus", "ogg", "libopus", "audio/ogg", "opus", 32_000, (8000, 12000, 16000, 24000, 48000)
    ),
    # ADTS framing makes raw AAC streamable (no moov atom to write at the end, unlike mp4).
    "aac": AudioFormat("aac", "adts", "aac", "audio/aac", "aac", 64_000, _MPEG_RATES),
    "flac": AudioFormat("flac", "flac", "flac", "audio/flac", "flac", None, _PCM_RATES),
    "wav": AudioFormat("wav", "wav", "pcm_s16le", "audio/wav", "wav", None, _PCM_RATES),
    "pcm": AudioFormat("pcm", "s16le", "pcm_s16le", "audio/pcm", "pcm", None, _PCM_RATES),
}


def audio_format(name: str, param: str = "response_format") -> AudioFormat:
    """Look up a response_format by name, or raise InvalidInput naming the accepted ones."""
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise InvalidInput(
            f"unsupported audio format {name!r}; use one of: {', '.join(FORMATS)}",
            param=param,
            code="unsupported_format",
        )
    return fmt


def check_speed(speed: float, param: str = "speed") -> float:
    """Validate a tempo factor against the OpenAI range (0.25 to 4.0)."""
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
        raise InvalidInput("speed must be a number", param=param, code="invalid_speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidInput(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}",
            param=param,
            code="invalid_speed",
        )
    return float(speed)


def _atempo_chain(speed: float) -> list[float]:
    # atempo accepts 0.5..2.0 on older ffmpeg builds; chaining keeps every stage in that range and
    # the product equal to the requested factor.
    stages = []
    while speed > 2.0:
        stages.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    if abs(speed - 1.0) > 1e-9:
        stages.append(speed)
    return stages


class _Sink:
    """Write-only file object that collects what the muxer writes, for handing out incrementally."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _SeekableSink(_Sink):
    """Seekable variant: lets muxers patch headers at the end (wav sizes, flac streaminfo)."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._pos = 0

    def write(self, data) -> int:
        data = bytes(data)
        end = self._pos + len(data)
        if end > len(self._buf):
            self._buf.extend(b"\0" * (end - len(self._buf)))
        self._buf[self._pos : end] = data
        self._pos = end
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._buf)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def take(self) -> bytes:
        return bytes(self._buf)


class _FileSink:
    """Seekable sink over a real file: the muxer patches headers in place, nothing is kept in memory."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, data) -> int:
        return self.file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        self.file.flush()

    def take(self) -> bytes:
        return b""


class AudioEncoder:
    """Incremental encoder: `feed()` float32 chunks, get back the bytes that are ready; `finish()` the rest.

    Streaming mode (the default) never seeks, so every byte returned is final and can be sent to a
    client at once; wav headers then carry the "unknown length" size that streaming players accept.
    With `streaming=False` all bytes come from `finish()` and headers hold exact sizes; with a seekable
    `file` too, they go into it instead (`feed` and `finish` return nothing).
    """

    def __init__(
        self,
        format: str,
        input_rate: int = 24000,
        sample_rate: int | None = None,
        speed: float = 1.0,
        streaming: bool = True,
        file=None,
    ) -> None:
        if file is not None and streaming:
            raise ValueError("an encoder writes into a file only when not streaming")
        self.format = audio_format(format)
        self.speed = check_speed(speed)
        self.input_rate = int(input_rate)
        self.sample_rate = self.input_rate if sample_rate is None else sample_rate
        if isinstance(self.sample_rate, bool) or self.sample_rate not in self.format.sample_rates:
            raise InvalidInput(
                f"{self.format.name} cannot carry sample rate {sample_rate!r}; use one of: "
                f"{', '.join(map(str, self.format.sample_rates))}",
                param="sample_rate",
                code="unsupported_sample_rate",
            )
        self.streaming = streaming
        self._sink = _Sink() if streaming else _FileSink(file) if file is not None else _SeekableSink()
        # flush_packets makes the muxer hand every packet to our sink at once instead of filling a
        # 32 KiB buffer first, which is what gives streamed responses a low time to first byte.
        self._container = av.open(
            self._sink,
            mode="w",
            format=self.format.container,
            container_options=self._container_options(),
            buffer_size=4096,
        )
        stream = self._container.add_stream(self.format.codec, rate=self.sample_rate)
        stream.layout = "mono"
        if self.format.bit_rate:
            stream.bit_rate = self.format.bit_rate
        self._stream = stream
        self._graph = self._build_graph()
        # Write the header now: an empty clip still becomes a valid file, and a streamed response
        # starts with the header before the first audio is ready.
        self._container.start_encoding()
        self._pts = 0
        self._closed = False
        self.samples_in = 0

    def to_file(self, file) -> AudioEncoder:
        """An encoder of the same settings that writes one complete file (exact header sizes) into the
        seekable `file`; this one is closed. For outputs validated early and written later (jobs)."""
        self.close()
        return AudioEncoder(
            self.format.name, self.input_rate, self.sample_rate, self.speed, streaming=False, file=file
        )

    def _container_options(self) -> dict[str, str]:
        # bitexact: no encoder-version tag, so a wav file is the plain 44-byte header and the samples
        options = {"fflags": "+bitexact"} if self.format.container == "wav" else {}
        if not self.streaming:
            return options
        options["flush_packets"] = "1"
        if self.format.container == "ogg":
            # Ogg pages default to one second of audio; 100 ms pages keep streamed opus responsive.
            options["page_duration"] = "100000"
        return options

    def _build_graph(self) -> av.filter.Graph:
        graph = av.filter.Graph()
        src = graph.add_abuffer(
            format="flt", sample_rate=self.input_rate, layout="mono", time_base=Fraction(1, self.input_rate)
        )
        nodes = [src]
        for factor in _atempo_chain(self.speed):
            nodes.append(graph.add("atempo", f"{factor:.6f}"))
        if self.sample_rate != self.input_rate:
            nodes.append(graph.add("aresample", str(self.sample_rate)))
        nodes.append(graph.add("abuffersink"))
        for a, b in zip(nodes, nodes[1:]):
            a.link_to(b)
        graph.configure()
        return graph

    def _mux(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            # Re-stamp in output samples: atempo changes durations, and the codec wants contiguous pts.
            frame.pts = self._pts
            frame.time_base = Fraction(1, self.sample_rate)
            self._pts += frame.samples
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _drain(self) -> None:
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError, BlockingIOError, EOFError):
                return
            self._mux(frame)

    def feed(self, chunk: np.ndarray) -> bytes:
        """Encode one chunk of float32 mono samples at `input_rate`; return the bytes ready so far."""
        if self._closed:
            raise RuntimeError("encoder already finished")
        samples = np.ascontiguousarray(np.asarray(chunk, dtype=np.float32).reshape(-1))
        if samples.size:
            samples = np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate = self.input_rate
            frame.pts = self.samples_in
            frame.time_base = Fraction(1, self.input_rate)
            self.samples_in += samples.size
            self._graph.push(frame)
            self._drain()
        return b"" if not self.streaming else self._sink.take()

    def finish(self) -> bytes:
        """Flush filters, encoder and muxer; return the remaining bytes (all of them when not streaming)."""
        if self._closed:
            return b""
        self._closed = True
        self._graph.push(None)
        self._drain()
        self._mux(None)
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        """Release codec resources without producing output (used when a client goes away)."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:  # best effort: the output is being thrown away anyway
                pass

    def encode_all(self, chunks: Iterable[np.ndarray]) -> Iterator[bytes]:
        """Feed every chunk and yield non-empty byte pieces as they become ready, then the tail."""
        try:
            for chunk in chunks:
                data = self.feed(chunk)
                if data:
                    yield data
            tail = self.finish()
            if tail:
                yield tail
        finally:
            self.close()


def encode(
    audio: np.ndarray,
    input_rate: int,
    format: str,
    sample_rate: int | None = None,
    speed: float = 1.0,
) -> bytes:
    """Encode a whole clip to one complete file (exact header sizes). The package's one WAV writer too:
    the CLI's files and the WAV of utter's routes come from here."""
    enc = AudioEncoder(format, input_rate=input_rate, sample_rate=sample_rate, speed=speed, streaming=False)
    try:
        enc.feed(audio)
        return enc.finish()
    finally:
        enc.close()
