"""utter's current Qwen3-TTS backend contract (methods, routes, messages) served by utter-tts.

utter calls its Modal deployment through `generate_voice_clone` / `generate_voice_clone_batch` /
`generate_voice_design` / `get_model_info` and the HTTP routes `/clone`, `/clone-batch`, `/design`,
`/health`, `/languages` and the job routes. This package implements that contract as plain code on top of
`utter_tts` (TTS + Engine) and utter_tts.service, beside the speech server (utter_tts.server), so it can be
tested offline; utter_tts.serve puts both on one app and `modal_app/qwen_tts.py` only wires that to Modal.
"""

from utter_tts.compat.checks import CompatError, Limits
from utter_tts.compat.fetch import FetchError, FetchPolicy, fetch_url
from utter_tts.compat.languages import DEFAULT_LANGUAGE, LANGUAGES, normalize_language
from utter_tts.compat.service import CompatService

__all__ = [
    "CompatError",
    "CompatService",
    "DEFAULT_LANGUAGE",
    "FetchError",
    "FetchPolicy",
    "LANGUAGES",
    "Limits",
    "fetch_url",
    "normalize_language",
]
