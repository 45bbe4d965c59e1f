"""Reference audio sent with a request: the one base64 decoder and the one duration probe."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from utter_tts.errors import AudioError


class InvalidBase64(AudioError):
    """A reference that is not base64 audio; `why` is the reason without the field's name (utter's routes
    quote the field their own way)."""

    def __init__(self, param: str, why: str, code: str):
        super().__init__(f"{param} {why}", param=param, code=code)
        self.why = why


def decode_base64(data: Any, param: str = "ref_audio") -> bytes:
    """The bytes of a base64 string or a `data:audio/...;base64,` URL; white space (line breaks of
    wrapped base64) is ignored. InvalidBase64 naming `param` when it is not a string, not base64 or empty."""
    if not isinstance(data, str):
        raise InvalidBase64(param, "must be a base64 string", "invalid_type")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(param, "is not valid base64", "invalid_base64") from None
    if not raw:
        raise InvalidBase64(param, "is empty", "empty_file")
    return raw


def probe_duration(data: bytes, param: str) -> float:
    """Seconds of audio in an encoded clip, decoded with PyAV; AudioError when it is not audio."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise AudioError("upload contains no audio stream", param=param)
            stream = container.streams.audio[0]
            samples, rate = 0, stream.rate or 0
            for frame in container.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate or rate
    except AudioError:
        raise
    except Exception as e:  # ffmpeg's many error types all mean "not usable audio"
        raise AudioError("could not decode the audio (unsupported or corrupt file)", param=param) from e
    if samples == 0 or not rate:
        raise AudioError("the audio contains no samples", param=param)
    return samples / rate
