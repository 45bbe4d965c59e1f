"""utter's current Qwen3-TTS backend contract (methods, routes, messages) served by utter-tts.

utter calls its Modal deployment through `generate_voice_clone` / `generate_voice_clone_batch` /
`generate_voice_design` / `get_model_info` and the HTTP routes `/clone`, `/clone-batch`, `/design`,
`/health`, `/languages` and the job routes. This package implements that contract as plain code on top of
`utter_tts` (TTS + Engine) so it can be tested offline; `modal_app/qwen_tts.py` only wires it to Modal.
"""

from utter_tts.compat.cache import PromptCache
from utter_tts.compat.fetch import FetchError, FetchPolicy, fetch_url
from utter_tts.compat.languages import DEFAULT_LANGUAGE, LANGUAGES, normalize_language
from utter_tts.compat.service import CompatError, CompatService, Limits, wav_bytes

__all__ = [
    "CompatError",
    "CompatService",
    "DEFAULT_LANGUAGE",
    "FetchError",
    "FetchPolicy",
    "LANGUAGES",
    "Limits",
    "PromptCache",
    "fetch_url",
    "normalize_language",
    "wav_bytes",
]
