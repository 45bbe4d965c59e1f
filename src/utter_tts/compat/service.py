"""utter's backend contract: its routes' bodies and its Modal methods, checked in its words
(compat.checks), then spoken by the deployment's models (compat.synthesizer)."""

from __future__ import annotations

import base64
from typing import Any

from utter_tts.compat.checks import (
    DEFAULT_MAX_NEW_TOKENS,
    CloneArgs,
    CompatError,
    frames,
    is_url,
    parse_clone,
    parse_clone_batch,
    parse_design,
    parse_job,
    supported,
    valid_text,
)
from utter_tts.compat.languages import METHOD_DEFAULT_LANGUAGE
from utter_tts.compat.resume import JobCheckpoint
from utter_tts.compat.synthesizer import Cancelled, Progress, Synthesizer


class CompatService(Synthesizer):
    """utter's contract over one deployment's models (see Synthesizer for what it holds)."""

    # ---- utter's routes --------------------------------------------------------------------------------
    def parse_job(self, body: dict[str, Any]) -> CloneArgs:
        """POST /submit-job's checks (runners call it to refuse a job before queueing it)."""
        return parse_job(body, self.limits)

    def clone_request(self, caller: str, body: dict[str, Any]) -> bytes:
        """POST /clone: {text, language, ref_audio_url | ref_audio_base64, ref_text, max_new_tokens}."""
        args = parse_clone(body, self.limits)
        audio = self.reference_bytes(body.get("ref_audio_base64"), body.get("ref_audio_url"))
        return self.clone_wav(caller, args, audio)

    def job_request(
        self,
        caller: str,
        body: dict[str, Any],
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
        checkpoint: JobCheckpoint | None = None,
        seed: int | None = None,
    ) -> bytes:
        """A /submit-job body, run: {text, language, ref_audio_base64, ref_text, max_new_tokens}. With a
        `checkpoint`, its finished sentences are kept there and a job that starts again goes on from them
        (`seed`, fixed at submission, makes its audio the same however often it was interrupted)."""
        args = self.parse_job(body)
        audio = self.reference_bytes(body["ref_audio_base64"])
        if checkpoint is None:
            return self.clone_wav(caller, args, audio, progress, cancelled)
        return self.clone_job_wav(caller, args, audio, checkpoint, seed, progress, cancelled)

    def clone_batch_request(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /clone-batch: {texts, languages, ref_audio_*, ref_text} -> {status, count, audio_files}."""
        args = parse_clone_batch(body, self.limits)
        audio = self.reference_bytes(body.get("ref_audio_base64"), body.get("ref_audio_url"))
        voice = self.voice_for(caller, audio, args.ref_text)
        wavs = [
            self.wav(self.synthesize("clone", t, lang, voice=voice, max_new_tokens=args.max_new_tokens))
            for t, lang in zip(args.clean, args.languages)
        ]
        return {
            "status": "success",
            "count": len(wavs),
            "audio_files": [
                {
                    "index": i,
                    "text": t[:50] + "..." if len(t) > 50 else t,  # the original's preview of the text
                    "audio_base64": base64.b64encode(w).decode("ascii"),
                    "size_bytes": len(w),
                }
                for i, (t, w) in enumerate(zip(args.texts, wavs))
            ],
        }

    def design_request(self, body: dict[str, Any]) -> bytes:
        """POST /design: {text, language, instruct}; the original's language defaults to English."""
        return self.design_wav(
            body.get("text", ""), body.get("language", "English"), body.get("instruct", "")
        )

    def design_wav(self, text: Any, language: Any, instruct: Any) -> bytes:
        """A designed clip as WAV, every chunk capped at `limits.design_max_new_tokens` frames."""
        args = parse_design(text, language, instruct, self.limits)
        cap = frames(self.limits.design_max_new_tokens, self.limits)
        return self.wav(
            self.synthesize("design", args.text, args.language, instruct=args.instruct, max_new_tokens=cap)
        )

    # ---- the Modal methods utter calls -----------------------------------------------------------------
    def generate_voice_clone(
        self,
        text: str,
        language: str,
        ref_audio: str,
        ref_text: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        caller: str = "modal",
    ) -> bytes:
        """`ref_audio` is base64 audio or an http(s) URL."""
        body = _ref_body(ref_audio)
        body.update(text=text, language=language, ref_text=ref_text, max_new_tokens=max_new_tokens)
        return self.clone_request(caller, body)

    def generate_voice_clone_batch(
        self,
        texts: list[str],
        languages: list[str],
        ref_audio: str,
        ref_text: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        caller: str = "modal",
    ) -> list[bytes]:
        body = _ref_body(ref_audio)
        body.update(texts=texts, languages=languages, ref_text=ref_text, max_new_tokens=max_new_tokens)
        out = self.clone_batch_request(caller, body)
        return [base64.b64decode(f["audio_base64"]) for f in out["audio_files"]]

    def generate_voice_design(self, text: str, language: str, instruct: str) -> bytes:
        return self.design_wav(text, language, instruct)

    def clone(
        self,
        text: str,
        ref_audio_bytes: bytes,
        language: str = METHOD_DEFAULT_LANGUAGE,
        ref_text: str | None = None,
        caller: str = "modal",
    ) -> bytes:
        """The plan's method: reference audio as raw bytes; `ref_text` optional (ICL mode when given)."""
        if not isinstance(ref_audio_bytes, (bytes, bytearray, memoryview)) or not len(ref_audio_bytes):
            raise CompatError("'ref_audio_bytes' is required")
        has_text = isinstance(ref_text, str) and bool(ref_text.strip())
        args = CloneArgs(
            valid_text(text, "text", self.limits.max_clone_text_chars),
            supported(language or METHOD_DEFAULT_LANGUAGE),
            valid_text(ref_text, "ref_text", self.limits.max_ref_text_chars) if has_text else None,
            frames(None, self.limits),
        )
        return self.clone_wav(caller, args, bytes(ref_audio_bytes))

    def design(self, text: str, voice_description: str, language: str = METHOD_DEFAULT_LANGUAGE) -> bytes:
        return self.design_wav(text, language, voice_description)


def _ref_body(ref_audio: Any) -> dict[str, Any]:
    if is_url(ref_audio):
        return {"ref_audio_url": ref_audio.strip()}
    return {"ref_audio_base64": ref_audio}
