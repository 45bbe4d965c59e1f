"""Voices built from reference audio sent inline with a request, cached: a client that sends the same clip
with every request (utter does) pays for decoding and encoding it once."""

from __future__ import annotations

import hashlib
from typing import Any

from utter_tts.voices.cache import VoiceCache
from utter_tts.voices.voice import Voice


def reference_key(owner: str, model: str, audio: bytes, ref_text: str | None) -> tuple[str, str]:
    """(owner, SHA-256 of the model, the clip and its transcript); the lengths keep the parts apart
    whatever bytes each holds."""
    h = hashlib.sha256()
    for part in (model.encode("utf-8"), audio, (ref_text or "").encode("utf-8", "surrogatepass")):
        h.update(str(len(part)).encode() + b"\0" + part)
    return owner, h.hexdigest()


class InlineVoices(VoiceCache):
    """The cache of voices made from inline reference audio, one per (owner, model, clip, transcript)."""

    def find(self, owner: str, model: str, audio: bytes, ref_text: str | None) -> Voice | None:
        return self.get(reference_key(owner, model, audio, ref_text))

    def make(self, owner: str, model: str, tts: Any, audio: bytes, ref_text: str | None) -> Voice:
        """The cached voice, else `tts.create_voice(audio, ref_text)` (blocking), kept for next time."""
        key = reference_key(owner, model, audio, ref_text)
        voice = self.get(key)
        if voice is None:
            voice = tts.create_voice(audio, ref_text=ref_text)
            self.put(key, voice)
        return voice
