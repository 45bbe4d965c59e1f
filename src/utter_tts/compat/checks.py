"""utter's request checks: each route's fields checked in the original app's order, refused in its words.

Each route first runs the original app's own checks, in its order and with its messages (utter's
modal_app/qwen3_tts/app.py and app_voice_design.py at f4a1c6a; tests/modal_app/test_utter_replay.py quotes
them), so a request the original refused gets the same 400. Our checks come after, for what the original
let through to the model (and answered with a 500): the one text check of utter_tts.textcheck, limits,
types and the reference audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from utter_tts.compat.languages import normalize_language, unsupported_message
from utter_tts.service.reference import InvalidBase64, decode_base64
from utter_tts.textcheck import InvalidText, check_text

DEFAULT_MAX_NEW_TOKENS = 2048


class CompatError(ValueError):
    """A request utter's contract rejects; `message` is the exact `detail` string, `status` the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Request limits. Design limits (500/500) are utter's; the clone limits are ours: synchronous calls
    must finish inside Modal's 150 s web window, longer text goes through the job routes."""

    max_design_text_chars: int = 500
    max_instruct_chars: int = 500
    max_clone_text_chars: int = 5_000
    max_job_text_chars: int = 50_000
    max_ref_text_chars: int = 2_000
    max_batch_texts: int = 32
    max_new_tokens: int = 8192  # upper bound of the per-chunk max_new_tokens a caller may ask for
    design_max_new_tokens: int = 2048  # utter's design calls carry no max_new_tokens: the per-chunk cap
    chunk_chars: int = 300  # long text is split at sentences into pieces of at most this many characters
    batch_pieces: int = 16  # pieces generated together (engine slots); progress/cancel between batches
    max_ref_bytes: int = 10 * 1024 * 1024
    frame_cap: int | None = None  # deployment cap on frames per chunk; larger max_new_tokens are clamped


@dataclass(frozen=True)
class CloneArgs:
    """A clone request after its checks: NFC text, the model's language id, transcript, frame cap."""

    text: str
    language: str
    ref_text: str | None
    max_new_tokens: int


@dataclass(frozen=True)
class BatchArgs:
    """A /clone-batch request after its checks: the texts as sent (for the answer's previews), checked."""

    texts: list[Any]
    clean: list[str]
    languages: list[str]
    ref_text: str
    max_new_tokens: int


@dataclass(frozen=True)
class DesignArgs:
    """A /design request after its checks."""

    text: str
    language: str
    instruct: str


# ---- fields ----------------------------------------------------------------------------------------------
def present(body: dict[str, Any], name: str, default: Any = "") -> Any:
    """`body.get(name, default)`, refused when falsy, as the original's `if not value:`."""
    value = body.get(name, default)
    if not value:
        raise CompatError(f"'{name}' is required")
    return value


def size(value: Any) -> int | None:
    """`len(value)` where the original took it; None where Python has none (the original then 500ed)."""
    try:
        return len(value)
    except TypeError:
        return None


def supported(language: Any, listed: bool = True) -> str:
    """The model's language id for one of utter's names, else utter's message (/clone-batch's lists none)."""
    lang = normalize_language(language)
    if lang is None:
        raise CompatError(unsupported_message(language, listed))
    return lang


def valid_text(value: Any, name: str, limit: int, missing: str | None = None) -> str:
    """A text field through the one text check (utter_tts.textcheck: NFC, no lone surrogates or control
    characters), with utter's messages for a missing or overlong one."""
    if not value:
        raise CompatError(missing or f"'{name}' is required")
    if not isinstance(value, str):
        raise CompatError(f"'{name}' must be a string")
    try:
        text = check_text(value, name, allow_empty=True)
    except InvalidText as e:
        raise CompatError(f"'{name}' {e.why}") from None
    if not text.strip():
        raise CompatError(missing or f"'{name}' is required")
    if len(text) > limit:
        raise CompatError(f"'{name}' exceeds maximum length of {limit} characters")
    return text


def frames(value: Any, limits: Limits) -> int:
    """A request's max_new_tokens (per sentence chunk), under the deployment's frame cap."""
    if value is None:
        n = DEFAULT_MAX_NEW_TOKENS
    elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_new_tokens:
        raise CompatError(f"'max_new_tokens' must be an integer between 1 and {limits.max_new_tokens}")
    else:
        n = max(2, value)  # the model needs room for at least one frame and its end token
    return min(n, max(2, limits.frame_cap)) if limits.frame_cap else n


def reference_base64(data: Any, limits: Limits) -> bytes:
    """The clip of `ref_audio_base64` (plain or a data: URL), within the size limit."""
    try:
        raw = decode_base64(data, "ref_audio_base64")
    except InvalidBase64 as e:
        raise CompatError(f"'{e.param}' {e.why}") from None
    if len(raw) > limits.max_ref_bytes:
        raise CompatError(f"reference audio is larger than {limits.max_ref_bytes} bytes")
    return raw


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(("http://", "https://"))


NO_REFERENCE = "Either 'ref_audio_url' or 'ref_audio_base64' is required"


def require_reference(body: dict[str, Any]) -> None:
    if not body.get("ref_audio_url") and not body.get("ref_audio_base64"):
        raise CompatError(NO_REFERENCE)


# ---- routes ----------------------------------------------------------------------------------------------
def parse_clone(body: dict[str, Any], limits: Limits, max_chars: int | None = None) -> CloneArgs:
    """POST /clone's checks, before any audio is fetched or decoded. The original (app.py `clone`): text,
    ref_text, language, then a reference of either kind."""
    text = present(body, "text")
    ref_text = present(body, "ref_text")
    language = supported(body.get("language", "Auto"))
    require_reference(body)
    return _clone_args(text, language, ref_text, body, limits, max_chars or limits.max_clone_text_chars)


def parse_job(body: dict[str, Any], limits: Limits) -> CloneArgs:
    """POST /submit-job's checks. The original (app.py `submit_job`): text, ref_audio_base64, ref_text; it
    left the language to the job (which then failed), we refuse a bad one at submission, as we do bad
    base64."""
    text = present(body, "text")
    ref_audio = present(body, "ref_audio_base64")
    ref_text = present(body, "ref_text")
    language = supported(body.get("language", "Auto"))
    args = _clone_args(text, language, ref_text, body, limits, limits.max_job_text_chars)
    reference_base64(ref_audio, limits)
    return args


def _clone_args(text, language: str, ref_text, body, limits: Limits, max_chars: int) -> CloneArgs:
    return CloneArgs(
        valid_text(text, "text", max_chars),
        language,
        valid_text(ref_text, "ref_text", limits.max_ref_text_chars),
        frames(body.get("max_new_tokens"), limits),
    )


def parse_clone_batch(body: dict[str, Any], limits: Limits) -> BatchArgs:
    """POST /clone-batch's checks. The original (app.py `clone_batch`): texts, ref_text, equal lengths,
    each language (its message lists no names), then a reference."""
    texts = present(body, "texts", [])
    ref_text = present(body, "ref_text")
    languages = body.get("languages", [])
    counts = size(texts), size(languages)
    if None in counts:
        raise CompatError("'texts' and 'languages' must be lists")
    if counts[0] != counts[1]:
        raise CompatError("Length of 'texts' must match 'languages'")
    langs = [supported(x, listed=False) for x in languages]
    require_reference(body)
    if not isinstance(texts, list) or not isinstance(languages, list):
        raise CompatError("'texts' and 'languages' must be lists")
    if len(texts) > limits.max_batch_texts:
        raise CompatError(f"'texts' may hold at most {limits.max_batch_texts} items")
    return BatchArgs(
        texts,
        [valid_text(t, f"texts[{i}]", limits.max_clone_text_chars) for i, t in enumerate(texts)],
        langs,
        valid_text(ref_text, "ref_text", limits.max_ref_text_chars),
        frames(body.get("max_new_tokens"), limits),
    )


def parse_design(text: Any, language: Any, instruct: Any, limits: Limits) -> DesignArgs:
    """The original (app_voice_design.py `design`): text, its length, instruct, its length, language."""
    missing = "'instruct' is required (voice description)"
    if not text:
        raise CompatError("'text' is required")
    if (size(text) or 0) > limits.max_design_text_chars:
        raise CompatError(f"'text' exceeds maximum length of {limits.max_design_text_chars} characters")
    if not instruct:
        raise CompatError(missing)
    if (size(instruct) or 0) > limits.max_instruct_chars:
        raise CompatError(f"'instruct' exceeds maximum length of {limits.max_instruct_chars} characters")
    lang = supported(language)
    return DesignArgs(
        valid_text(text, "text", limits.max_design_text_chars),
        lang,
        valid_text(instruct, "instruct", limits.max_instruct_chars, missing),
    )
