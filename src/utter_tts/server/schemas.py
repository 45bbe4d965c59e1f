"""Request bodies of the HTTP and WebSocket API (pydantic), OpenAI's fields plus our extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class VoiceRef(BaseModel):
    """OpenAI's object form of `voice`: `{"id": "voice_..."}`."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr


class Sampling(BaseModel):
    """Sampling settings passed through to the model (unset ones keep the checkpoint's defaults).
    Numbers are strict: `true` or `"1.5"` is not a number (an integer is a float); NaN and infinity
    are refused too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    do_sample: StrictBool | None = None
    temperature: StrictFloat | None = Field(None, ge=0.0, le=5.0)
    top_k: StrictInt | None = Field(None, ge=0, le=10000)
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: StrictFloat | None = Field(None, ge=0.5, le=5.0)
    max_new_tokens: StrictInt | None = Field(None, ge=2, le=100_000)
    min_new_tokens: StrictInt | None = Field(None, ge=0, le=100_000)
    subtalker_dosample: StrictBool | None = None
    subtalker_temperature: StrictFloat | None = Field(None, ge=0.0, le=5.0)
    subtalker_top_k: StrictInt | None = Field(None, ge=0, le=10000)
    subtalker_top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in Sampling.model_fields if getattr(self, k) is not None}


class SpeechRequest(Sampling):
    """POST /v1/audio/speech."""

    model: StrictStr
    input: StrictStr
    voice: StrictStr | VoiceRef
    instructions: StrictStr | None = None
    response_format: StrictStr = "mp3"
    speed: StrictFloat = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    # extensions
    # False: the whole file at once with exact sizes in its header; True: bytes as they are made.
    # Unset: streamed, except WAV and FLAC without an explicit stream_format (see `streamed`).
    stream: StrictBool | None = None
    language: StrictStr = "auto"
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    sample_rate: StrictInt | None = None
    ref_audio: StrictStr | None = None  # base64 (or data: URL) of a reference clip, for one-off cloning
    ref_text: StrictStr | None = None

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    @property
    def streamed(self) -> bool:
        """Whether the response streams. WAV and FLAC record their length in their header, which a
        stream cannot know yet, so a plain request for one gets the whole file; asking for a stream
        (`stream`, or any `stream_format`) gets one with "length unknown" headers."""
        if self.stream is not None:
            return self.stream
        return "stream_format" in self.model_fields_set or self.response_format not in ("wav", "flac")


class DesignRequest(Sampling):
    """POST /v1/voices/design: hear a described voice before saving it."""

    model: StrictStr | None = None
    instructions: StrictStr
    input: StrictStr
    language: StrictStr = "auto"
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    response_format: StrictStr = "wav"
    sample_rate: StrictInt | None = None


class SaveDesignRequest(DesignRequest):
    """POST /v1/voices/from-design: design a clip (same seed: same clip), then store it as a clone voice."""

    name: StrictStr
    clone_model: StrictStr | None = None
    response_format: StrictStr = "wav"


class JobRequest(SpeechRequest):
    """POST /v1/audio/speech/jobs: the speech body, run in the background."""

    stream_format: Literal["audio"] = "audio"


class WsStart(Sampling):
    """First message on WS /v1/audio/speech/stream: the voice and output settings for the whole session."""

    type: Literal["session.start"]
    # live: one generation whose text is fed as it arrives (dual-track), audio from the first words on;
    # sentence: one generation per finished sentence
    text_mode: Literal["live", "sentence"] = "live"
    model: StrictStr = "auto"
    voice: StrictStr | VoiceRef
    instructions: StrictStr | None = None
    response_format: StrictStr = "pcm"
    speed: StrictFloat = 1.0
    language: StrictStr = "auto"
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    sample_rate: StrictInt | None = None
    ref_audio: StrictStr | None = None
    ref_text: StrictStr | None = None

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice
